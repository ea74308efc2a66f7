"""Tests of the flows: exact normalization, round trips, sampling, likelihood and input checks."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from arflows import AutoregressiveFlow, OutOfDomainError, create_flow, flow_from_config

# Tiny configurations of every family, in float64. Each: (id, model, data shape, K, hyperparameters).
TINY = {
    "pixelcnn": dict(num_filters=6, num_blocks=1, first_kernel_size=3),
    "gated_pixelcnn": dict(num_filters=6, num_blocks=1),
    "pixelcnn_pp": dict(num_filters=4, num_blocks=1, num_components=2, dropout=0.0),
    "wavenet": dict(residual_channels=4, dilation_channels=4, skip_channels=4, num_layers=2, num_cycles=1),
    "wavenet_dmol": dict(
        output="dmol", num_components=2, residual_channels=4, dilation_channels=4, skip_channels=4,
        num_layers=2, num_cycles=1,
    ),
}


def _tiny_flow(name, data_shape, num_bins, seed=0, weight_scale=3.0):
    """Build a float64 flow with random weights, scaled up so that the conditionals are far from uniform."""
    torch.manual_seed(seed)
    model = "wavenet" if name.startswith("wavenet") else name
    flow = create_flow(model, data_shape, num_bins, **TINY[name]).double().eval()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.mul_(weight_scale)
    return flow


ENUMERATION_CASES = [
    ("pixelcnn", (1, 2, 2), 3),
    ("pixelcnn", (3, 1, 2), 2),
    ("gated_pixelcnn", (1, 2, 2), 3),
    ("gated_pixelcnn", (3, 1, 1), 3),
    ("pixelcnn_pp", (1, 2, 2), 3),
    ("pixelcnn_pp", (3, 1, 2), 3),
    ("wavenet", (1, 4), 4),
    ("wavenet_dmol", (1, 3), 5),
]


def _every_input(data_shape, num_bins):
    dims = math.prod(data_shape)
    values = torch.tensor(list(itertools.product(range(num_bins), repeat=dims)))
    return values.view(-1, *data_shape)


@pytest.mark.parametrize("name, data_shape, num_bins", ENUMERATION_CASES)
def test_probabilities_sum_to_one_over_all_inputs(name, data_shape, num_bins):
    flow = _tiny_flow(name, data_shape, num_bins)
    q = _every_input(data_shape, num_bins)

    with torch.no_grad():
        total = flow.log_prob(q).exp().sum().item()

    assert math.isclose(total, 1.0, abs_tol=1e-10), f"probabilities sum to {total!r}"


@pytest.mark.parametrize("name, data_shape, num_bins", ENUMERATION_CASES)
def test_log_det_equals_log_prob_plus_dims_log_bins(name, data_shape, num_bins):
    flow = _tiny_flow(name, data_shape, num_bins, seed=1)
    q = _every_input(data_shape, num_bins)[:50]

    with torch.no_grad():
        _, log_det = flow.encode(q, generator=torch.Generator().manual_seed(0))
        expected = flow.log_prob(q) + math.prod(data_shape) * math.log(num_bins)

    assert torch.allclose(log_det, expected, atol=1e-10), "log-det differs from log P(q) + D log K"


ROUND_TRIP_CASES = [
    ("pixelcnn", (3, 3, 2), 256),
    ("gated_pixelcnn", (3, 2, 3), 256),
    ("gated_pixelcnn", (1, 1, 1), 7),
    ("pixelcnn_pp", (3, 3, 3), 256),
    ("pixelcnn_pp", (1, 1, 5), 17),
    ("wavenet", (1, 9), 256),
    ("wavenet_dmol", (1, 7), 256),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, data_shape, num_bins", ROUND_TRIP_CASES)
def test_decode_inverts_encode_exactly(name, data_shape, num_bins, dtype):
    flow = _tiny_flow(name, data_shape, num_bins, seed=2).to(dtype)
    generator = torch.Generator().manual_seed(3)
    q = torch.randint(num_bins, (4, *data_shape), generator=generator)
    below_one = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()
    noises = {
        "uniform": "uniform",
        "center": "center",
        "lower edge": torch.zeros(q.shape, dtype=dtype),
        "upper edge": torch.full(q.shape, below_one, dtype=dtype),
    }

    for noise_name, noise in noises.items():
        z, _ = flow.encode(q, noise=noise, generator=generator)
        decoded = flow.decode(z)
        if dtype == torch.float64:
            assert torch.equal(decoded, q), f"round trip fails with {noise_name} noise"
        else:
            _assert_first_error_at_unreachable_bin(flow, q, decoded, noise_name)


def _decoding_order(tensor):
    """Flatten (B, C, *S) to (B, D) in decoding order: positions in raster order, channels inside."""
    return tensor.movedim(1, -1).flatten(1)


def _assert_first_error_at_unreachable_bin(flow, q, decoded, label):
    """Assert that decoding is exact up to its first bin of zero floating-point width, the stated limit.

    Random float32 networks with peaked conditionals put some data in bins of mass below the float32
    resolution of z near 1. Such a bin cannot be decoded, and every later step then sees other data.
    """
    lower, upper = flow.transform.bin_bounds(q, flow.parameters_of(q))
    widths = _decoding_order(upper - lower)
    wrong = _decoding_order(decoded) != _decoding_order(q)
    for example in range(q.shape[0]):
        positions = wrong[example].nonzero()
        if len(positions) == 0:
            continue
        first = positions[0].item()
        width = widths[example, first].item()
        assert width == 0.0, f"{label}: example {example} first differs at step {first}, bin width {width}"


def test_decode_returns_continuous_values_on_request():
    flow = _tiny_flow("pixelcnn_pp", (3, 2, 2), 256, seed=4)
    q = torch.randint(256, (2, 3, 2, 2), generator=torch.Generator().manual_seed(0))
    u = torch.rand(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    z, _ = flow.encode(q, noise=u)
    x = flow.decode(z, continuous=True)

    assert torch.allclose(x, (q + u) / 256, atol=1e-9), "decoded x differs from (q + u)/K"


def test_decode_ignores_dropout_and_training_mode():
    torch.manual_seed(0)
    flow = create_flow("pixelcnn_pp", (3, 3, 3), 256, num_filters=4, num_blocks=1, num_components=2, dropout=0.5)
    flow.train()
    q = torch.randint(256, (2, 3, 3, 3), generator=torch.Generator().manual_seed(0))

    z, _ = flow.encode(q, noise="center")

    assert torch.equal(flow.decode(z), q), "dropout changes the decoded data"
    assert flow.training, "encode or decode left the flow in eval mode"


def _real_digits(count):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    images = sklearn_datasets.load_digits().images[:count]  # (count, 8, 8) with 17 grey levels
    return torch.from_numpy(images.astype(np.int64)).unsqueeze(1)


@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn", "pixelcnn_pp"])
def test_round_trip_on_real_digits(name):
    q = _real_digits(3)
    flow = _tiny_flow(name, (1, 8, 8), 17, seed=5)

    z, _ = flow.encode(q, generator=torch.Generator().manual_seed(0))

    assert torch.equal(flow.decode(z), q), f"{name} fails to round trip real digits"


@pytest.mark.parametrize("name", ["gated_pixelcnn", "pixelcnn_pp"])
def test_float32_round_trip_fails_only_at_unreachable_bins(name):
    q = _real_digits(8)
    flow = _tiny_flow(name, (1, 8, 8), 17, seed=5).float()
    z, _ = flow.encode(q, generator=torch.Generator().manual_seed(0))

    _assert_first_error_at_unreachable_bin(flow, q, flow.decode(z), name)


class _ConstantNet(nn.Module):
    """A network whose output is all zeros: equal logits for every bin."""

    def __init__(self, num_outputs):
        super().__init__()
        self.num_outputs = num_outputs
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.zeros(x.shape[0], self.num_outputs, *x.shape[2:], dtype=x.dtype) * self.dummy


@pytest.mark.parametrize("shape, num_bins", [((1, 1, 1), 2), ((3, 5, 7), 256), ((2, 3, 1), 17), ((1, 13), 256)])
@pytest.mark.parametrize("batch", [1, 3])
def test_equal_logits_give_log2_bins(shape, num_bins, batch):
    flow = AutoregressiveFlow(_ConstantNet(shape[0] * num_bins), "categorical", shape, num_bins)
    q = torch.randint(num_bins, (batch, *shape))

    bits = flow.bits_per_dim(q).item()

    assert bits == pytest.approx(math.log2(num_bins), rel=1e-6), f"{bits} bits/dim"


@pytest.mark.parametrize(
    "name, data_shape, num_bins",
    [("pixelcnn", (1, 1, 2), 3), ("pixelcnn_pp", (3, 1, 1), 2), ("wavenet", (1, 2), 3), ("wavenet_dmol", (1, 2), 3)],
)
def test_sample_frequencies_match_likelihood(name, data_shape, num_bins):
    flow = _tiny_flow(name, data_shape, num_bins, seed=6, weight_scale=1.5)
    num_samples = 4000
    samples = flow.sample(num_samples, generator=torch.Generator().manual_seed(0))
    every_input = _every_input(data_shape, num_bins)
    with torch.no_grad():
        probabilities = flow.log_prob(every_input).exp().numpy()

    codes = samples.flatten(1) @ (num_bins ** torch.arange(math.prod(data_shape) - 1, -1, -1))
    observed = np.bincount(codes.numpy(), minlength=len(probabilities))
    _, p_value = scipy.stats.chisquare(observed, probabilities * num_samples)

    assert p_value > 1e-3, f"chi-square p-value {p_value:.3g}: samples disagree with exp(log_prob)"


def _reference_pixelcnn_pp_log_likelihood(x, raw, num_components):
    """The PixelCNN++ discretized logistic mixture log-likelihood, written out directly in float64.

    x: (B, 3, H, W) in [-1, 1]; raw: (B, 10 M, H, W) network output. Returns (B,) log-likelihoods.
    """
    m = num_components
    batch, _, height, width = x.shape
    logits = raw[:, :m]
    means = raw[:, m : 4 * m].reshape(batch, 3, m, height, width)
    log_scales = raw[:, 4 * m : 7 * m].reshape(batch, 3, m, height, width).clamp(min=-7.0)
    coefficients = torch.tanh(raw[:, 7 * m : 10 * m].reshape(batch, 3, m, height, width))
    x = x.unsqueeze(2)  # (B, 3, 1, H, W)
    red = means[:, 0]
    green = means[:, 1] + coefficients[:, 0] * x[:, 0]
    blue = means[:, 2] + coefficients[:, 1] * x[:, 0] + coefficients[:, 2] * x[:, 1]
    adjusted = torch.stack([red, green, blue], dim=1)
    inverse_scale = torch.exp(-log_scales)
    upper = torch.sigmoid((x + 1 / 255 - adjusted) * inverse_scale)
    lower = torch.sigmoid((x - 1 / 255 - adjusted) * inverse_scale)
    upper = torch.where(x > 0.999, torch.ones_like(upper), upper)
    lower = torch.where(x < -0.999, torch.zeros_like(lower), lower)
    per_channel = torch.log(upper - lower).sum(dim=1)  # (B, M, H, W)
    mixture = torch.logsumexp(per_channel + torch.log_softmax(logits, dim=1), dim=1)
    return mixture.flatten(1).sum(dim=1)


def test_pixelcnn_pp_matches_reference_likelihood():
    flow = _tiny_flow("pixelcnn_pp", (3, 4, 5), 256, seed=7, weight_scale=1.0)
    q = torch.randint(256, (3, 3, 4, 5), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        raw = flow.net(flow.scale(q))
        expected = _reference_pixelcnn_pp_log_likelihood(flow.scale(q), raw, num_components=2)
        bits = flow.bits_per_dim(q)

    expected_bits = -expected.mean() / (3 * 4 * 5 * math.log(2))
    assert torch.allclose(flow.log_prob(q), expected, rtol=1e-9), "log-likelihood differs from reference"
    assert bits.item() == pytest.approx(expected_bits.item(), rel=1e-9), "bits/dim differs from reference"


def test_log_prob_is_float32_under_autocast():
    torch.manual_seed(0)
    flow = create_flow("pixelcnn_pp", (3, 4, 4), 256, num_filters=8, num_blocks=1, num_components=3)
    q = torch.randint(256, (2, 3, 4, 4))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_prob = flow.log_prob(q)

    assert log_prob.dtype == torch.float32, f"log-likelihood computed in {log_prob.dtype}"
    assert torch.isfinite(log_prob).all(), "log-likelihood is not finite under autocast"


def test_config_rebuilds_flow():
    flow = create_flow("gated_pixelcnn", (3, 4, 4), 256, num_filters=6, num_blocks=2)
    rebuilt = flow_from_config(flow.config)
    rebuilt.load_state_dict(flow.state_dict())
    q = torch.randint(256, (2, 3, 4, 4))

    assert torch.equal(rebuilt.log_prob(q), flow.log_prob(q)), "rebuilt flow differs"


@pytest.fixture(scope="module")
def small_flow():
    return create_flow("pixelcnn", (3, 4, 4), 8, num_filters=6, num_blocks=1)


@pytest.mark.parametrize(
    "q, message",
    [
        (torch.full((2, 3, 4, 4), 8), r"values in \[8, 8\]; expected integers in \[0, 7\]"),
        (torch.full((2, 3, 4, 4), -1), r"values in \[-1, -1\]"),
        (torch.full((2, 3, 4, 4), 0.5), "non-integer"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.long), r"shape \(2, 1, 4, 4\); expected \(B, 3, 4, 4\)"),
        (torch.zeros(3, 4, 4, dtype=torch.long), r"shape \(3, 4, 4\)"),
    ],
)
def test_bad_data_raises(small_flow, q, message):
    with pytest.raises(ValueError, match=message):
        small_flow.log_prob(q)
    with pytest.raises(ValueError, match=message):
        small_flow.encode(q)


@pytest.mark.parametrize("value", [1.5, -0.25, float("nan")])
def test_bad_latent_raises(small_flow, value):
    z = torch.full((1, 3, 4, 4), 0.5)
    z[0, 1, 2, 3] = value
    with pytest.raises(OutOfDomainError, match=r"expected values in \[0, 1\]"):
        small_flow.decode(z)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: create_flow("pixelcnn3", (1, 2, 2), 4), "unknown model 'pixelcnn3'"),
        (lambda: create_flow("pixelcnn", (1, 2, 2), 1), "num_bins must be an integer of at least 2"),
        (lambda: create_flow("pixelcnn", (1, 0, 2), 4), "data_shape must hold positive integers"),
        (lambda: create_flow("wavenet", (2, 10), 4), r"wavenet data_shape must be \(1, T\)"),
        (lambda: create_flow("pixelcnn_pp", (3, 8), 4), r"data_shape must be \(C, H, W\)"),
    ],
)
def test_bad_configuration_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
