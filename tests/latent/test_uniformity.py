"""Tests of the uniformity checks: KS tests against U(0, 1), the KS map and neighbour correlations."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from arflows.latent import (
    encode_data,
    ks_per_channel,
    ks_statistic_map,
    ks_uniform,
    neighbour_correlations,
    sample_and_reencode,
    uniformity_summary,
)
from arflows.latent.uniformity import SMALLEST_POSITIVE_DOUBLE

from .helpers import tiny_flow


def test_ks_accepts_stratified_uniform():
    values = (np.arange(10_000) + 0.5) / 10_000

    result = ks_uniform(values)

    assert result.statistic == pytest.approx(0.5 / 10_000)
    assert result.p_value > 0.99


def test_ks_accepts_large_uniform_sample():
    values = np.random.default_rng(0).random(200_000)

    assert ks_uniform(values).p_value > 0.01


def test_ks_rejects_bin_edges_without_noise(digits):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    q = torch.from_numpy(digits.images[digits.indices("test")[:16]].astype(np.int64))

    z, _ = encode_data(flow, q, noise=torch.zeros(q.shape))
    result = ks_uniform(z)

    assert result.p_value < 1e-50


def test_ks_accepts_reencoded_model_samples():
    flow = tiny_flow("gated_pixelcnn", (1, 6, 6), 17)

    samples, latents = sample_and_reencode(flow, 40, generator=torch.Generator().manual_seed(0))

    assert samples.shape == (40, 1, 6, 6)
    assert samples.min() >= 0
    assert samples.max() < 17
    assert ks_uniform(latents).p_value > 0.001
    assert ks_uniform(latents[:, :, :3]).p_value > 0.001


def test_ks_accepts_reencoded_rgb_samples_per_channel():
    flow = tiny_flow("pixelcnn_pp", (3, 3, 3), 8)

    _, latents = sample_and_reencode(flow, 60, generator=torch.Generator().manual_seed(1))

    for result in ks_per_channel(latents):
        assert result.p_value > 0.001


def test_ks_underflow_reported_as_bound():
    values = np.full(100_000, 0.5)

    result = ks_uniform(values)
    text = result.describe()
    record = result.to_dict()

    assert result.p_value == 0.0
    assert result.p_value_underflows
    assert "below the smallest positive double" in text
    assert "p = 0" not in text
    assert f"{SMALLEST_POSITIVE_DOUBLE:.1e}" in text
    assert record["p_value_underflows"] is True
    assert record["log10_p_upper_bound"] < -10_000


def test_ks_dkw_bound_holds():
    rng = np.random.default_rng(3)
    for exponent in (0.5, 0.8, 1.0, 1.3, 2.0):
        values = rng.random(500) ** exponent
        result = ks_uniform(values)

        assert math.log10(max(result.p_value, SMALLEST_POSITIVE_DOUBLE)) <= result.log10_p_upper_bound + 1e-9
        assert result.log10_p_upper_bound <= 0.0


def test_ks_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="NaN"):
        ks_uniform(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        ks_uniform(np.array([]))


def test_ks_map_matches_scipy_per_dimension():
    rng = np.random.default_rng(4)
    # Channel 1 is skewed, so that the map contains a range of statistics.
    z = rng.random((30, 2, 3, 4))
    z[:, 1] **= 2

    statistic_map, p_map = ks_statistic_map(z)

    assert statistic_map.shape == (2, 3, 4)
    for channel, row, column in [(0, 0, 0), (0, 2, 3), (1, 1, 2), (1, 0, 3)]:
        expected = scipy.stats.kstest(z[:, channel, row, column], "uniform", method="exact")
        assert statistic_map[channel, row, column] == pytest.approx(expected.statistic, abs=1e-12)
        assert p_map[channel, row, column] == pytest.approx(expected.pvalue, rel=1e-6)


def test_ks_per_channel_matches_channel_slices():
    z = np.random.default_rng(5).random((20, 3, 2, 2)) ** np.array([1.0, 2.0, 3.0])[:, None, None]

    results = ks_per_channel(z)

    assert len(results) == 3
    for channel, result in enumerate(results):
        assert result.statistic == pytest.approx(scipy.stats.kstest(z[:, channel].ravel(), "uniform").statistic)


def test_correlations_independent_uniform_small():
    z = np.random.default_rng(6).random((200, 3, 8, 8))

    correlations = neighbour_correlations(z)

    assert set(correlations) == {"left", "above", "previous_channel"}
    for result in correlations.values():
        assert abs(result.z_score) < 4.5
        assert result.num_pairs > 1000


def test_correlations_detect_copied_neighbours():
    rng = np.random.default_rng(7)
    noise = rng.random((50, 2, 6, 6))
    copied_left = noise.copy()
    copied_left[..., 1::2] = copied_left[..., 0::2]
    copied_above = noise.copy()
    copied_above[:, :, 1::2, :] = copied_above[:, :, 0::2, :]
    copied_channel = noise.copy()
    copied_channel[:, 1] = copied_channel[:, 0]

    assert neighbour_correlations(copied_left)["left"].correlation > 0.4
    assert neighbour_correlations(copied_left)["left"].p_value < 1e-10
    assert neighbour_correlations(copied_above)["above"].correlation > 0.4
    assert neighbour_correlations(copied_channel)["previous_channel"].correlation == pytest.approx(1.0)


def test_correlations_audio_and_constant():
    audio = np.random.default_rng(8).random((10, 1, 100))
    constant = np.full((4, 1, 3, 3), 0.5)

    audio_result = neighbour_correlations(audio)
    constant_result = neighbour_correlations(constant)

    assert set(audio_result) == {"left"}
    assert audio_result["left"].num_pairs == 10 * 99
    assert constant_result["left"].correlation is None
    assert constant_result["above"].p_value is None


def test_summary_is_strict_json():
    z = np.random.default_rng(9).random((25, 3, 4, 4))
    z[0, 0, 0, 0] = 0.0
    z[0, 0, 0, 1] = 1.0

    summary = uniformity_summary(z)
    text = json.dumps(summary, allow_nan=False)

    assert json.loads(text)["shape"] == [25, 3, 4, 4]
    assert len(summary["ks_per_channel"]) == 3
    assert summary["ks"]["p_value"] > 0.001
    assert set(summary["neighbour_correlations"]) == {"left", "above", "previous_channel"}
    assert np.mean(summary["histogram_density"]) == pytest.approx(1.0)
    assert "necessary but not sufficient" in summary["note"]
