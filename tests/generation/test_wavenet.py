"""Tests of cached WaveNet decoding: bit-identical to the naive loop, resumable, fixed-size queues."""

import pytest
import torch

from arflows.generation import build_decoder
from arflows.generation.common import first_mismatch, reference_decode

from .helpers import assert_matches_naive, random_latents, tiny_flow

SMALL = {"residual_channels": 6, "dilation_channels": 5, "skip_channels": 7, "num_layers": 3, "num_cycles": 2}


def wavenet(output="categorical", num_bins=256, kernel_size=2, dtype=torch.float64, seed=0):
    return tiny_flow(
        "wavenet",
        (1, 16),
        num_bins,
        seed=seed,
        dtype=dtype,
        output=output,
        num_components=3,
        kernel_size=kernel_size,
        **SMALL,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("output", ["categorical", "dmol"])
@pytest.mark.parametrize("length", [1, 2, 7, 40])
def test_fast_decode_matches_naive_loop(output, length, dtype):
    flow = wavenet(output, dtype=dtype)
    assert flow.net.receptive_field < 40, "the longest case must exceed the receptive field"
    z = random_latents(flow, 3, (1, length), seed=length)

    assert_matches_naive(flow, z, f"{output}, T={length}, {dtype}")


@pytest.mark.parametrize("kernel_size, num_bins", [(3, 5), (1, 256), (2, 2)])
def test_other_kernels_and_bins_match_naive(kernel_size, num_bins):
    flow = wavenet(num_bins=num_bins, kernel_size=kernel_size, seed=1)
    z = random_latents(flow, 2, (1, 37), seed=1)

    assert_matches_naive(flow, z, f"k={kernel_size}, K={num_bins}")


def test_decoder_alone_agrees_with_reference_pass():
    # Without repairs: the cached steps themselves reproduce the naive decisions for random latents.
    flow = wavenet("dmol", seed=2)
    z = random_latents(flow, 4, (1, 50), seed=2)
    q = torch.zeros(z.shape, dtype=torch.long)

    with torch.no_grad():
        build_decoder(flow, tuple(z.shape)).run(z, q, 0)
        q_reference, _ = reference_decode(flow, z, q)

    assert first_mismatch(flow, q, q_reference) is None, "the cached steps disagree with the reference pass"


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_run_resumes_from_any_step(kernel_size):
    # Resuming refills the queues from the decoded prefix with a window of parallel passes.
    flow = wavenet(kernel_size=kernel_size, seed=3)
    z = random_latents(flow, 2, (1, 45), seed=3)
    expected = flow.decode(z, naive=True)

    with torch.no_grad():
        decoder = build_decoder(flow, tuple(z.shape))
        for start in [1, 2, 5, flow.net.receptive_field, 44, 45]:
            q = expected.clone()
            q[:, :, start:] = 0
            decoder.run(z, q, start)
            assert torch.equal(q, expected), f"resuming at step {start} changes the result"


def test_queues_do_not_grow_with_length():
    flow = wavenet(seed=4)
    with torch.no_grad():
        short = build_decoder(flow, (2, 1, 200))
        long = build_decoder(flow, (2, 1, 2000))
        queues = [ring.data_ptr() for ring in long.rings]
        long.run(random_latents(flow, 2, (1, 2000)), torch.zeros(2, 1, 2000, dtype=torch.long), 0)

    assert short.cache_numel() == long.cache_numel(), "the queues depend on the number of steps"
    assert [ring.data_ptr() for ring in long.rings] == queues, "decoding reallocated the queues"


@pytest.mark.parametrize("output", ["categorical", "dmol"])
def test_fast_decode_inverts_encode(output):
    flow = wavenet(output, dtype=torch.float32, seed=5)
    q = torch.randint(256, (3, 1, 30), generator=torch.Generator().manual_seed(5))

    z, _ = flow.encode(q, generator=torch.Generator().manual_seed(6))

    assert torch.equal(flow.decode(z), q), "decode(encode(q)) differs from q"


def test_decode_accepts_two_dimensional_audio():
    flow = wavenet(seed=6)
    z = random_latents(flow, 2, (1, 9), seed=6)

    assert torch.equal(flow.decode(z[:, 0]), flow.decode(z, naive=True)), "(B, T) latents decode differently"
