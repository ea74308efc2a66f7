"""Tests of cached PixelCNN++ decoding: bit-identical to the naive loop at every level layout, resumable."""

import pytest
import torch

from arflows.generation import build_decoder
from arflows.generation.common import first_mismatch, reference_decode

from .helpers import assert_matches_naive, random_latents, tiny_flow


def pixelcnn_pp(data_shape, num_bins, *, num_blocks=1, num_stages=3, seed=0, dtype=torch.float64):
    return tiny_flow(
        "pixelcnn_pp",
        data_shape,
        num_bins,
        seed=seed,
        dtype=dtype,
        num_filters=5,
        num_blocks=num_blocks,
        num_components=3,
        num_stages=num_stages,
        dropout=0.0,
    )


SHAPES = [((3, 5, 7), 256), ((1, 1, 1), 5), ((1, 4, 3), 7), ((3, 1, 6), 256), ((3, 6, 1), 16), ((2, 2, 2), 2)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("data_shape, num_bins", SHAPES)
def test_fast_decode_matches_naive_loop(data_shape, num_bins, dtype):
    flow = pixelcnn_pp(data_shape, num_bins, dtype=dtype)
    z = random_latents(flow, 3)

    assert_matches_naive(flow, z, f"{data_shape} K={num_bins} {dtype}")


@pytest.mark.parametrize(
    "num_blocks, num_stages, data_shape",
    [(0, 3, (3, 9, 13)), (2, 1, (3, 4, 5)), (1, 2, (1, 7, 6)), (2, 4, (3, 11, 9)), (0, 1, (1, 3, 3))],
)
def test_fast_decode_matches_naive_for_other_depths(num_blocks, num_stages, data_shape):
    # Odd sizes make the strided and transposed convolutions crop, and four stages reach 1×1 or 2×2 levels.
    flow = pixelcnn_pp(data_shape, 256, num_blocks=num_blocks, num_stages=num_stages, seed=1)
    z = random_latents(flow, 2, seed=1)

    assert_matches_naive(flow, z, f"{num_blocks} blocks, {num_stages} stages, {data_shape}")


def test_decoder_alone_agrees_with_reference_pass():
    # Without repairs: the cached steps themselves reproduce the naive decisions for random latents.
    flow = pixelcnn_pp((3, 8, 8), 256, num_blocks=2, seed=2)
    z = random_latents(flow, 4, seed=2)
    q = torch.zeros(z.shape, dtype=torch.long)

    with torch.no_grad():
        build_decoder(flow, tuple(z.shape)).run(z, q, 0)
        q_reference, _ = reference_decode(flow, z, q)

    assert first_mismatch(flow, q, q_reference) is None, "the cached steps disagree with the reference pass"


def test_run_resumes_from_any_pixel():
    # Resuming inside a row recomputes the row-above terms of every level's current row, and reuses the
    # caches of the earlier pixels from the first run.
    flow = pixelcnn_pp((3, 9, 7), 256, num_blocks=1, seed=3)
    z = random_latents(flow, 2, seed=3)
    expected = flow.decode(z, naive=True)

    with torch.no_grad():
        decoder = build_decoder(flow, tuple(z.shape))
        decoder.run(z, torch.zeros_like(expected), 0)
        for start in [1, 2, 7, 8, 15, 29, 30, 44, 62, 63]:
            q = expected.clone()
            q.view(2, 3, -1)[:, :, start:] = 0
            decoder.run(z, q, start)
            assert torch.equal(q, expected), f"resuming at pixel {start} changes the result"


def test_fast_decode_inverts_encode():
    flow = pixelcnn_pp((3, 6, 5), 256, dtype=torch.float32, seed=4)
    q = torch.randint(256, (3, 3, 6, 5), generator=torch.Generator().manual_seed(4))

    z, _ = flow.encode(q, generator=torch.Generator().manual_seed(5))

    assert torch.equal(flow.decode(z), q), "decode(encode(q)) differs from q"


def test_default_configuration_matches_naive_loop():
    # The published CIFAR-10 depth (the defaults: 5 blocks per stage, 3 stages) with 4 filters, on an
    # odd 5×6 image.
    flow = tiny_flow("pixelcnn_pp", (3, 5, 6), 256, seed=5, weight_scale=1.0, num_filters=4, dropout=0.5)
    z = random_latents(flow, 2, seed=5)

    assert_matches_naive(flow, z, "default depth")
