"""Property tests of the elementwise flows: round trips, log-dets, bin tiling, normalization, numerics."""

import itertools
import math

import pytest
import torch

from arflows import transforms
from arflows.transforms import CatFlow, DMOLFlow, MultivariateDMOLFlow, OutOfDomainError



@pytest.fixture(autouse=True)
def _float64_default():
    """Run every test of this module in float64, where rounding bugs become visible, then restore."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _random_cat(shape, num_bins, generator, spread=3.0):
    return (torch.randn(*shape, num_bins, generator=generator) * spread,)


def _random_dmol(shape, num_components, generator, spread=1.0):
    logits = torch.randn(*shape, num_components, generator=generator) * spread
    means = torch.rand(*shape, num_components, generator=generator) * 2.4 - 1.2
    log_scales = torch.rand(*shape, num_components, generator=generator) * 3.0 - 4.0
    return logits, means, log_scales


def _random_multivariate(batch, channels, spatial, num_components, generator):
    logits = torch.randn(batch, *spatial, num_components, generator=generator)
    means = torch.rand(batch, channels, *spatial, num_components, generator=generator) * 2.4 - 1.2
    log_scales = torch.rand(batch, channels, *spatial, num_components, generator=generator) * 3.0 - 4.0
    pairs = channels * (channels - 1) // 2
    coefficients = torch.tanh(torch.randn(batch, pairs, *spatial, num_components, generator=generator))
    return logits, means, log_scales, coefficients


# Each case: (name, transform, parameter factory, data shape, K). Univariate cases have data of shape (6, 5);
# the multivariate cases have (B, C, H) = (4, C, 3).
CASES = [
    ("cat_k2", CatFlow(2), lambda g: _random_cat((6, 5), 2, g), (6, 5), 2),
    ("cat_k5", CatFlow(5), lambda g: _random_cat((6, 5), 5, g), (6, 5), 5),
    ("cat_k256", CatFlow(256), lambda g: _random_cat((6, 5), 256, g), (6, 5), 256),
    ("dmol_k2", DMOLFlow(2), lambda g: _random_dmol((6, 5), 3, g), (6, 5), 2),
    ("dmol_k17", DMOLFlow(17), lambda g: _random_dmol((6, 5), 4, g), (6, 5), 17),
    ("dmol_k256", DMOLFlow(256), lambda g: _random_dmol((6, 5), 10, g), (6, 5), 256),
    ("mdmol_c1", MultivariateDMOLFlow(7), lambda g: _random_multivariate(4, 1, (3,), 3, g), (4, 1, 3), 7),
    ("mdmol_c3", MultivariateDMOLFlow(7), lambda g: _random_multivariate(4, 3, (3,), 3, g), (4, 3, 3), 7),
    ("mdmol_k256", MultivariateDMOLFlow(256), lambda g: _random_multivariate(4, 3, (3,), 5, g), (4, 3, 3), 256),
]
IDS = [case[0] for case in CASES]


def _all_bins(shape, num_bins):
    """Return a tensor of shape (K, *shape) whose k-th slice is filled with bin k."""
    return torch.arange(num_bins).view(num_bins, *([1] * len(shape))).expand(num_bins, *shape)


def _repeat_params(params, num_bins, multivariate):
    """Repeat parameters K times along the batch dimension, for evaluating every bin at once."""
    if multivariate:
        return tuple(p.repeat(num_bins, *([1] * (p.dim() - 1))) for p in params)
    return tuple(p.unsqueeze(0).expand(num_bins, *p.shape) for p in params)


@pytest.mark.parametrize("name, transform, factory, shape, num_bins", CASES, ids=IDS)
def test_round_trip_continuous(name, transform, factory, shape, num_bins):
    generator = torch.Generator().manual_seed(0)
    params = factory(generator)
    x = torch.rand(shape, generator=generator)

    z, log_det = transform(x, params)
    x_again = transform.inverse(z, params)

    assert torch.all((z >= 0) & (z <= 1)), "latents leave [0, 1]"
    bins, bins_again = (x * num_bins).floor(), (x_again * num_bins).floor()
    assert torch.equal(bins_again, bins), "the round trip changes bins"
    # Inside a bin of mass p the inverse divides by p, so the error in x is the rounding error of z
    # (a few ulps) divided by the slope K p: compare in latent space.
    latent_error = (x_again - x).abs() * log_det.exp()
    assert latent_error.max() < 1e-14, f"max error {latent_error.max():.3g} in latent units"


@pytest.mark.parametrize("name, transform, factory, shape, num_bins", CASES, ids=IDS)
def test_round_trip_discrete_at_bin_edges(name, transform, factory, shape, num_bins):
    generator = torch.Generator().manual_seed(1)
    params = factory(generator)
    q = torch.randint(num_bins, shape, generator=generator)
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()

    for u_value in (0.0, 0.5, below_one):
        u = torch.full(shape, u_value)
        z, _ = transform.encode(q, u, params)
        q_again, _ = transform.decode(z, params)
        assert torch.equal(q_again, q), f"round trip fails for u = {u_value!r}"


@pytest.mark.parametrize("name, transform, factory, shape, num_bins", CASES, ids=IDS)
def test_log_det_matches_autograd_jacobian(name, transform, factory, shape, num_bins):
    generator = torch.Generator().manual_seed(2)
    params = factory(generator)
    x = torch.rand(shape, generator=generator)

    def flat_forward(flat_x):
        return transform(flat_x.view(shape), params)[0].flatten()

    jacobian = torch.autograd.functional.jacobian(flat_forward, x.flatten())
    _, log_det = transform(x, params)

    off_diagonal = jacobian - torch.diag(torch.diagonal(jacobian))
    assert torch.all(off_diagonal == 0), "elementwise flow has a non-diagonal Jacobian inside bins"
    # The map's slope is K times the floating-point width of the bin, whose relative rounding error grows
    # as the mass shrinks (a mass of 1e-21 near z = 1 has zero width in float64). Compare where the mass
    # exceeds 1e-6, which is most bins here.
    slope = torch.diagonal(jacobian)
    log_det = log_det.flatten()
    comparable = log_det.exp() / num_bins > 1e-6
    assert comparable.float().mean() > 0.5, "too few bins of representable mass to compare"
    expected = torch.log(slope[comparable])
    assert torch.allclose(log_det[comparable], expected, atol=1e-8), "log-det differs from autograd"


@pytest.mark.parametrize("name, transform, factory, shape, num_bins", CASES, ids=IDS)
def test_bin_bounds_tile_unit_interval(name, transform, factory, shape, num_bins):
    generator = torch.Generator().manual_seed(3)
    params = factory(generator)
    multivariate = isinstance(transform, MultivariateDMOLFlow)
    base = torch.randint(num_bins, shape, generator=generator)
    # Multivariate flows tile each channel given random earlier channels; univariate ones tile every element.
    channels = range(shape[1]) if multivariate else [None]

    for channel in channels:
        lowers, uppers = [], []
        for k in range(num_bins):
            q = base.clone()
            if channel is None:
                q.fill_(k)
            else:
                q[:, channel] = k
            lower, upper = transform.bin_bounds(q, params)
            lowers.append(lower if channel is None else lower[:, channel])
            uppers.append(upper if channel is None else upper[:, channel])
        lower, upper = torch.stack(lowers), torch.stack(uppers)

        assert torch.all(lower[0] == 0), "first edge is not exactly 0"
        assert torch.all(upper[-1] == 1), "last edge is not exactly 1"
        assert torch.equal(upper[:-1], lower[1:]), "upper edges differ from the next lower edges"
        assert torch.all(upper >= lower), "edges decrease"


@pytest.mark.parametrize("name, transform, factory, shape, num_bins", CASES[:6], ids=IDS[:6])
def test_bin_probabilities_sum_to_one(name, transform, factory, shape, num_bins):
    generator = torch.Generator().manual_seed(4)
    params = factory(generator)
    q = _all_bins(shape, num_bins)
    repeated = _repeat_params(params, num_bins, False)

    log_probs = transform.log_prob(q, repeated)
    lower, upper = transform.bin_bounds(q, repeated)

    assert torch.allclose(log_probs.exp().sum(0), torch.ones(shape), atol=1e-12), "masses do not sum to 1"
    assert torch.allclose(upper - lower, log_probs.exp(), atol=1e-12), "edge widths differ from masses"


def test_multivariate_probabilities_sum_to_one():
    generator = torch.Generator().manual_seed(5)
    num_bins, channels = 5, 3
    logits, means, log_scales, coefficients = _random_multivariate(1, channels, (), 4, generator)
    pixels = torch.tensor(list(itertools.product(range(num_bins), repeat=channels)))  # (K^C, C)
    count = pixels.shape[0]
    params = (
        logits.expand(count, -1),
        means.expand(count, -1, -1),
        log_scales.expand(count, -1, -1),
        coefficients.expand(count, -1, -1),
    )

    log_probs = transforms.multivariate_dmol_log_prob(pixels, *params, num_bins).sum(dim=1)

    assert math.isclose(log_probs.exp().sum().item(), 1.0, abs_tol=1e-12), "pixel masses do not sum to 1"


def _pixel_mixture_probability(pixel, logits, means, log_scales, coefficients, num_bins):
    """PixelCNN++ pixel probability written independently: sums of sigmoid differences, no log space."""
    weights = torch.softmax(logits, dim=-1)
    values = [2.0 * k / (num_bins - 1) - 1.0 for k in pixel]
    half_width = 1.0 / (num_bins - 1)
    total = 0.0
    for m in range(logits.shape[-1]):
        product = weights[m].item()
        for channel, k in enumerate(pixel):
            mean = means[channel, m].item()
            pair = 0
            for c in range(len(pixel)):
                for earlier in range(c):
                    if c == channel:
                        mean += coefficients[pair, m].item() * values[earlier]
                    pair += 1
            scale = math.exp(log_scales[channel, m].item())
            upper = 1.0 if k == num_bins - 1 else 1 / (1 + math.exp(-(values[channel] + half_width - mean) / scale))
            lower = 0.0 if k == 0 else 1 / (1 + math.exp(-(values[channel] - half_width - mean) / scale))
            product *= upper - lower
        total += product
    return total


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_multivariate_matches_pixel_mixture(channels):
    generator = torch.Generator().manual_seed(6 + channels)
    num_bins = 4
    logits, means, log_scales, coefficients = _random_multivariate(1, channels, (), 3, generator)
    log_scales = log_scales.clamp(min=-1.5)  # keeps the plain sigmoid differences of the reference accurate

    for pixel in itertools.product(range(num_bins), repeat=channels):
        q = torch.tensor(pixel).view(1, channels)
        per_channel = transforms.multivariate_dmol_log_prob(q, logits, means, log_scales, coefficients, num_bins)
        expected = _pixel_mixture_probability(pixel, logits[0], means[0], log_scales[0], coefficients[0], num_bins)
        assert math.isclose(per_channel.sum().exp().item(), expected, rel_tol=1e-10), f"pixel {pixel}"


def test_dmol_log_prob_stable_where_cdf_difference_underflows():
    # A bin 30 scales away from the mean: the CDF difference underflows to 0 in float32 but not in log space.
    num_bins = 256
    q = torch.tensor([200])
    means = torch.tensor([[-0.9]])
    log_scales = torch.tensor([[-5.0]])

    log_prob_32 = transforms.dmol_component_log_prob(q, means.float(), log_scales.float(), num_bins)
    log_prob_64 = transforms.dmol_component_log_prob(q, means, log_scales, num_bins)

    assert torch.isfinite(log_prob_32).all(), "float32 log-probability is not finite"
    assert math.isclose(log_prob_32.item(), log_prob_64.item(), rel_tol=1e-5), "float32 disagrees with float64"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_parameters_stay_finite(dtype):
    num_bins = 256
    q = torch.tensor([0, 1, 127, 254, 255] * 4)
    count = q.shape[0]
    logits = torch.tensor([[1e4, -1e4, 0.0]] * count, dtype=dtype, requires_grad=True)
    means = torch.tensor([[100.0, -100.0, 0.0]] * count, dtype=dtype, requires_grad=True)
    log_scales = torch.tensor([[-20.0, 5.0, -7.0]] * count, dtype=dtype, requires_grad=True)
    u = torch.rand(count, dtype=dtype)

    log_prob = transforms.dmol_log_prob(q, logits, means, log_scales, num_bins)
    z, log_det = transforms.dmol_encode(q, u, logits, means, log_scales, num_bins)
    (log_prob.sum() + log_det.sum()).backward()

    assert torch.isfinite(log_prob).all(), "log-probabilities are not finite"
    assert torch.isfinite(z).all(), "latents are not finite"
    for name, tensor in (("logits", logits), ("means", means), ("log_scales", log_scales)):
        assert torch.isfinite(tensor.grad).all(), f"gradient of {name} is not finite"

    cat_logits = torch.tensor([[1e4] + [-1e4] * 255] * count, dtype=dtype, requires_grad=True)
    cat_z, cat_log_det = transforms.cat_encode(q, u, cat_logits)
    cat_log_det.sum().backward()
    assert torch.isfinite(cat_z).all(), "CatFlow latents are not finite"
    assert torch.isfinite(cat_logits.grad).all(), "CatFlow gradient is not finite"


def test_dmol_decode_is_binary_search(monkeypatch):
    calls = []
    original = transforms.logistic_mixture_cdf

    def counting_cdf(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(transforms, "logistic_mixture_cdf", counting_cdf)
    generator = torch.Generator().manual_seed(7)
    params = _random_dmol((10,), 4, generator)
    transforms.dmol_decode(torch.rand(10, generator=generator), *params, 256)

    # Eight halvings of [0, 256) plus the two edges of the found bin.
    assert len(calls) == 8 + 2, f"{len(calls)} CDF evaluations"


def test_unreachable_bin_is_documented_limit():
    # In float32 a bin of mass 1e-9 at z = 0.5 has zero width: both its edges round to 0.5.
    logits = torch.log(torch.tensor([[0.5, 1e-9, 0.5 - 1e-9]], dtype=torch.float32))
    lower, upper = transforms.cat_bin_bounds(torch.tensor([1]), logits)
    assert lower.item() == upper.item() == 0.5, "the tiny bin should have zero float32 width"

    z, _ = transforms.cat_encode(torch.tensor([1]), torch.tensor([0.5]), logits)
    decoded, _ = transforms.cat_decode(z, logits)
    assert decoded.item() == 2, "a zero-width bin decodes to the next bin"

    # The same bin is reachable in float64, where the width is representable.
    z64, _ = transforms.cat_encode(torch.tensor([1]), torch.tensor([0.5]), logits.double())
    decoded64, _ = transforms.cat_decode(z64, logits.double())
    assert decoded64.item() == 1, "float64 should reach a bin of mass 1e-9"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_probability_bins_round_trip(dtype):
    generator = torch.Generator().manual_seed(8)
    num_bins = 256
    logits = (torch.randn(2000, num_bins, generator=generator) * 6.0).to(dtype)
    q = torch.randint(num_bins, (2000,), generator=generator)
    lower, upper = transforms.cat_bin_bounds(q, logits)
    reachable = upper > lower
    tiny = transforms.cat_log_prob(q, logits).exp() < 1e-6
    assert (tiny & reachable).sum() > 50, "the test needs many reachable bins of tiny mass"

    below_one = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()
    for u_value in (0.0, 0.5, below_one):
        z, _ = transforms.cat_encode(q, torch.full((2000,), u_value, dtype=dtype), logits)
        decoded, _ = transforms.cat_decode(z, logits)
        assert torch.equal(decoded[reachable], q[reachable]), f"reachable bins fail for u = {u_value}"


@pytest.mark.parametrize(
    "value, closed",
    [(1.0, False), (-0.1, False), (float("nan"), False), (1.1, True), (-1e-9, True), (float("nan"), True)],
)
def test_out_of_domain_input_raises(value, closed):
    flow = CatFlow(4)
    logits = torch.zeros(3, 4)
    data = torch.tensor([0.2, value, 0.3])
    with pytest.raises(OutOfDomainError, match="expected values in"):
        if closed:
            flow.inverse(data, (logits,))
        else:
            flow(data, (logits,))


def test_one_bin_is_rejected():
    with pytest.raises(ValueError, match="num_bins must be at least 2"):
        DMOLFlow(1)
