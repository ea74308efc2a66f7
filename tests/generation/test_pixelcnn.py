"""Tests of cached PixelCNN and gated PixelCNN decoding: bit-identical to the naive loop, resumable."""

import pytest
import torch

from arflows.generation import build_decoder
from arflows.generation.common import first_mismatch, reference_decode
from arflows.generation.pixelcnn import group_bounds
from arflows.nets.layers import channel_groups

from .helpers import assert_matches_naive, random_latents, tiny_flow

PIXELCNN = {"num_filters": 8, "num_blocks": 2, "first_kernel_size": 5}
GATED = {"num_filters": 7, "num_blocks": 2}
MODELS = {"pixelcnn": PIXELCNN, "gated_pixelcnn": GATED}

SHAPES = [((3, 5, 7), 256), ((1, 1, 1), 5), ((1, 4, 3), 7), ((3, 1, 6), 256), ((3, 6, 1), 16), ((2, 3, 3), 2)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("data_shape, num_bins", SHAPES)
@pytest.mark.parametrize("model", list(MODELS))
def test_fast_decode_matches_naive_loop(model, data_shape, num_bins, dtype):
    flow = tiny_flow(model, data_shape, num_bins, dtype=dtype, **MODELS[model])
    z = random_latents(flow, 3)

    assert_matches_naive(flow, z, f"{model} {data_shape} K={num_bins} {dtype}")


@pytest.mark.parametrize(
    "model, hyperparameters",
    [
        ("pixelcnn", {"num_filters": 6, "num_blocks": 0, "first_kernel_size": 3}),
        ("pixelcnn", {"num_filters": 6, "num_blocks": 1, "first_kernel_size": 7, "kernel_size": 1}),
        ("pixelcnn", {"num_filters": 9, "num_blocks": 1, "first_kernel_size": 3, "kernel_size": 5}),
        ("gated_pixelcnn", {"num_filters": 3, "num_blocks": 0}),
        ("gated_pixelcnn", {"num_filters": 5, "num_blocks": 1, "kernel_size": 5}),
    ],
)
def test_fast_decode_matches_naive_for_other_architectures(model, hyperparameters):
    flow = tiny_flow(model, (3, 4, 5), 256, seed=1, **hyperparameters)
    z = random_latents(flow, 2, seed=1)

    assert_matches_naive(flow, z, f"{model} {hyperparameters}")


@pytest.mark.parametrize("model", list(MODELS))
def test_decoder_alone_agrees_with_reference_pass(model):
    # Without repairs: the cached steps themselves reproduce the naive decisions for random latents.
    flow = tiny_flow(model, (3, 6, 5), 256, seed=2, **MODELS[model])
    z = random_latents(flow, 4, seed=2)
    q = torch.zeros(z.shape, dtype=torch.long)

    with torch.no_grad():
        build_decoder(flow, tuple(z.shape)).run(z, q, 0)
        q_reference, _ = reference_decode(flow, z, q)

    assert first_mismatch(flow, q, q_reference) is None, "the cached steps disagree with the reference pass"


@pytest.mark.parametrize("model", list(MODELS))
def test_run_resumes_inside_a_position(model):
    # Steps are sub-pixels: resuming at sub-pixel 1 or 2 recomputes the position's earlier sub-pixels.
    flow = tiny_flow(model, (3, 3, 4), 256, seed=3, **MODELS[model])
    z = random_latents(flow, 2, seed=3)
    expected = flow.decode(z, naive=True)
    steps = expected.permute(0, 2, 3, 1).reshape(2, -1)  # raster order, then channels

    with torch.no_grad():
        decoder = build_decoder(flow, tuple(z.shape))
        for start in [1, 2, 3, 13, 14, 35, 36]:
            prefix = steps.clone()
            prefix[:, start:] = 0
            q = prefix.view(2, 3, 4, 3).permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)
            decoder.run(z, q, start)
            assert torch.equal(q, expected), f"resuming at step {start} changes the result"


@pytest.mark.parametrize("model", list(MODELS))
def test_fast_decode_inverts_encode(model):
    flow = tiny_flow(model, (3, 5, 4), 256, seed=4, dtype=torch.float32, **MODELS[model])
    q = torch.randint(256, (3, 3, 5, 4), generator=torch.Generator().manual_seed(4))

    z, _ = flow.encode(q, generator=torch.Generator().manual_seed(5))

    assert torch.equal(flow.decode(z), q), "decode(encode(q)) differs from q"


@pytest.mark.parametrize("num_channels, num_groups", [(6, 3), (7, 3), (3, 3), (10, 1), (5, 2)])
def test_group_bounds_cover_channel_groups(num_channels, num_groups):
    groups = channel_groups(num_channels, num_groups)

    bounds = group_bounds(num_channels, num_groups)

    for group, (start, stop) in enumerate(bounds):
        assert torch.all(groups[start:stop] == group), f"group {group} range {start}:{stop} is wrong"
    assert bounds[0][0] == 0, "the first range does not start at channel 0"
    assert bounds[-1][1] == num_channels, "the last range does not end at the last channel"
