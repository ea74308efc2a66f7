"""Tests of the verify-and-repair loop, the per-step inverse transforms and the flow integration."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arflows import AutoregressiveFlow, transforms
from arflows.generation import MAX_REPAIRS, build_decoder, fast_decode
from arflows.generation.common import (
    MixtureStepDecoder,
    StepDecoder,
    cached_decode,
    concat_elu_into,
    decode_categorical_step,
    first_mismatch,
)
from arflows.nets import PixelCNNPlusPlus
from arflows.nets.layers import ConcatELU

from .helpers import assert_matches_naive, random_latents, tiny_flow

FAMILIES = {
    "pixelcnn": {"num_filters": 6, "num_blocks": 1, "first_kernel_size": 3},
    "gated_pixelcnn": {"num_filters": 6, "num_blocks": 1},
    "pixelcnn_pp": {"num_filters": 4, "num_blocks": 1, "num_components": 2, "dropout": 0.0},
    "wavenet": {
        "residual_channels": 4,
        "dilation_channels": 4,
        "skip_channels": 4,
        "num_layers": 2,
        "num_cycles": 1,
    },
}


def family_flow(model, dtype=torch.float64, seed=0):
    data_shape = (1, 11) if model == "wavenet" else (3, 3, 4)
    return tiny_flow(model, data_shape, 256, seed=seed, dtype=dtype, **FAMILIES[model])


# ---------------------------------------------------------------------------------------------------------
# Per-step inverse transforms
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_bins", [2, 3, 17, 256])
def test_categorical_step_matches_cat_decode(num_bins):
    generator = torch.Generator().manual_seed(num_bins)
    logits = 4 * torch.randn(500, num_bins, dtype=torch.float64, generator=generator)
    z = torch.rand(500, 1, dtype=torch.float64, generator=generator)
    z[:3, 0] = torch.tensor([0.0, 1.0, 0.5])

    expected, _ = transforms.cat_decode(z[:, 0], logits)

    assert torch.equal(decode_categorical_step(z, logits)[:, 0], expected), "bins differ from cat_decode"


@pytest.mark.parametrize("num_channels", [1, 2, 3])
@pytest.mark.parametrize("num_components, num_bins", [(1, 2), (4, 3), (3, 17), (10, 256), (2, 1000)])
def test_mixture_step_matches_multivariate_dmol_decode(num_channels, num_components, num_bins):
    generator = torch.Generator().manual_seed(num_bins * num_channels)
    batch = 400
    pairs = num_channels * (num_channels - 1) // 2
    raw = torch.randn(
        batch, num_components * (1 + 2 * num_channels + pairs), dtype=torch.float64, generator=generator
    )
    z = torch.rand(batch, num_channels, dtype=torch.float64, generator=generator)
    z[0] = 1.0
    z[1] = 0.0
    flow = AutoregressiveFlow(nn.Identity(), "mixture", (num_channels, 1, 1), num_bins)
    params = flow._split_parameters(raw.view(batch, -1, 1, 1))

    expected, _ = transforms.multivariate_dmol_decode(z.view(batch, num_channels, 1, 1), *params, num_bins)
    decoder = MixtureStepDecoder(num_channels, num_components, num_bins, torch.float64, torch.device("cpu"))
    bins, values = decoder(z, raw)

    assert torch.equal(bins, expected.view(batch, num_channels)), "bins differ from multivariate_dmol_decode"
    assert torch.allclose(values, 2 * bins.double() / (num_bins - 1) - 1), "values are not the scaled bins"


@pytest.mark.parametrize("dim", [1, 2])
def test_concat_elu_into_matches_concat_elu(dim):
    x = torch.randn(3, 4, 5)
    out = torch.full((3, 8, 5) if dim == 1 else (3, 4, 10), float("nan"))

    concat_elu_into(x, out, dim)

    expected = ConcatELU()(x) if dim == 1 else F.elu(torch.cat([x, -x], dim=2))
    assert torch.equal(out, expected), "concat_elu_into differs from elu([x, -x])"


# ---------------------------------------------------------------------------------------------------------
# Verification and repairs
# ---------------------------------------------------------------------------------------------------------


def test_first_mismatch_follows_decoding_order():
    categorical = family_flow("pixelcnn")
    mixture = family_flow("pixelcnn_pp")
    q = torch.zeros(2, 3, 3, 4, dtype=torch.long)
    other = q.clone()
    other[1, 2, 0, 1] = 5  # position 1, channel 2
    other[0, 0, 2, 0] = 5  # position 8, channel 0

    assert first_mismatch(categorical, q, q) is None, "equal tensors have a mismatch"
    assert first_mismatch(categorical, q, other) == 1 * 3 + 2, (
        "sub-pixel steps run over positions, then channels"
    )
    assert first_mismatch(mixture, q, other) == 1, "mixture steps are positions"


class _CorruptingDecoder(StepDecoder):
    """Wrap a real decoder and change one decision per run: the next of the given steps, or the first step."""

    def __init__(self, inner, steps, every_run=False):
        self.inner = inner
        self.num_steps = inner.num_steps
        self.pending = list(steps)
        self.every_run = every_run

    def run(self, z, q, start):
        self.inner.run(z, q, start)
        if self.every_run:
            targets = [start] if start < self.num_steps else []
        else:
            targets = [step for step in self.pending if step >= start][:1]
            self.pending = [step for step in self.pending if step not in targets]
        for step in targets:
            if q.dim() == 4:
                # Categorical image steps: raster order, then channels.
                channels, width = q.shape[1], q.shape[3]
                position, channel = divmod(step, channels)
                row, column = divmod(position, width)
                q[0, channel, row, column] = (q[0, channel, row, column] + 1) % 256
            else:
                q[0, 0, step] = (q[0, 0, step] + 1) % 256


@pytest.mark.parametrize("model", ["pixelcnn", "wavenet"])
def test_repairs_restore_the_naive_result(model):
    flow = family_flow(model, seed=1)
    z = random_latents(flow, 2, seed=1)
    expected = flow.decode(z, naive=True)
    steps = [3, 7]
    stats = {}

    with torch.no_grad():
        decoder = _CorruptingDecoder(build_decoder(flow, tuple(z.shape)), steps)
        q, _ = cached_decode(flow, z, decoder, stats)

    assert torch.equal(q, expected), "the repaired result differs from the naive loop"
    assert stats["repairs"] == len(steps), f"expected {len(steps)} repairs, got {stats['repairs']}"
    assert stats["naive_steps"] == 0, "the naive loop ran although the repairs succeeded"


def test_persistent_disagreement_falls_back_to_naive_loop():
    flow = family_flow("pixelcnn", seed=2)
    z = random_latents(flow, 2, seed=2)
    expected_q = flow.decode(z, naive=True)
    expected_x = flow.decode(z, naive=True, continuous=True)
    stats = {}

    with torch.no_grad():
        decoder = _CorruptingDecoder(build_decoder(flow, tuple(z.shape)), [], every_run=True)
        q, u = cached_decode(flow, z, decoder, stats)

    assert torch.equal(q, expected_q), "the naive fallback differs from the naive loop"
    assert torch.equal((q.double() + u) / 256, expected_x), "the fallback's u differs from the naive loop"
    assert stats["repairs"] == MAX_REPAIRS, f"expected {MAX_REPAIRS} repairs, got {stats['repairs']}"
    assert stats["naive_steps"] == decoder.num_steps - MAX_REPAIRS, "the naive loop ran the wrong steps"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model", list(FAMILIES))
def test_latents_on_bin_edges_match_naive_loop(model, dtype):
    # u = 0 puts z exactly on the naive loop's lower bin edges, where rounding decides the bin.
    flow = family_flow(model, dtype=dtype, seed=3)
    q = torch.randint(256, (3, *flow.data_shape), generator=torch.Generator().manual_seed(3))
    below_one = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()

    for noise in [torch.zeros(q.shape, dtype=dtype), torch.full(q.shape, below_one, dtype=dtype)]:
        z, _ = flow.encode(q, noise=noise)
        assert_matches_naive(flow, z, f"{model} with z on bin edges")


@pytest.mark.parametrize("model", list(FAMILIES))
def test_batch_of_one_matches_naive_loop(model):
    # PyTorch 2.13 runs small float32 convolutions of one example with im2col and GEMM instead of oneDNN.
    flow = family_flow(model, dtype=torch.float32, seed=11)
    z = random_latents(flow, 1, seed=11)

    assert_matches_naive(flow, z, f"{model} with batch 1")


@pytest.mark.parametrize("model", list(FAMILIES))
def test_random_encodings_round_trip(model):
    flow = family_flow(model, dtype=torch.float32, seed=4)
    q = torch.randint(256, (4, *flow.data_shape), generator=torch.Generator().manual_seed(4))

    z, _ = flow.encode(q, generator=torch.Generator().manual_seed(5))

    assert_matches_naive(flow, z, f"{model} encodings")
    assert torch.equal(flow.decode(z), q), "decode(encode(q)) differs from q"


# ---------------------------------------------------------------------------------------------------------
# Flow integration
# ---------------------------------------------------------------------------------------------------------


class _ShiftedPixelCNNPlusPlus(PixelCNNPlusPlus):
    """A subclass whose forward pass differs from its parent, so no cached decoder may assume its layers."""

    def forward(self, x):
        return super().forward(x) + 1.0


def test_unknown_network_uses_naive_loop():
    torch.manual_seed(6)
    net = _ShiftedPixelCNNPlusPlus(3, num_components=2, num_filters=4, num_blocks=1, dropout=0.0).double()
    flow = AutoregressiveFlow(net, "mixture", (3, 3, 3), 256).eval()
    z = random_latents(flow, 2, seed=6)

    assert build_decoder(flow, tuple(z.shape)) is None, "a subclass got the parent's cached decoder"
    with torch.no_grad():
        assert fast_decode(flow, z) is None, "fast_decode accepted an unknown network"
    assert torch.equal(flow.decode(z), flow.decode(z, naive=True)), "the fallback differs from the naive loop"


@pytest.mark.parametrize("model", list(FAMILIES))
def test_sample_matches_naive_sampling(model):
    flow = family_flow(model, seed=7)

    fast = flow.sample(3, generator=torch.Generator().manual_seed(8))
    naive = flow.sample(3, generator=torch.Generator().manual_seed(8), naive=True)

    assert torch.equal(fast, naive), "sampling with the same generator differs between the paths"


def test_decode_ignores_dropout_and_restores_training_mode():
    flow = tiny_flow("pixelcnn_pp", (3, 3, 3), 256, seed=9, num_filters=4, num_blocks=1, dropout=0.5)
    flow.train()
    z = random_latents(flow, 2, seed=9)

    fast = flow.decode(z)
    assert flow.training, "decode left the flow in eval mode"
    naive = flow.decode(z, naive=True)

    assert torch.equal(fast, naive), "dropout changes the fast path"


def test_sample_audio_length_uses_fast_path():
    flow = family_flow("wavenet", seed=10)

    samples = flow.sample(2, generator=torch.Generator().manual_seed(0), length=25)
    naive = flow.sample(2, generator=torch.Generator().manual_seed(0), length=25, naive=True)

    assert samples.shape == (2, 1, 25), f"sample shape {tuple(samples.shape)}"
    assert torch.equal(samples, naive), "audio sampling differs between the paths"
