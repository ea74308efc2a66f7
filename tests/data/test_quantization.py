"""Tests of mu-law and linear quantization: exact round trips, the formulas and input checks."""

import math

import numpy as np
import pytest
import torch

from arflows.data.quantization import (
    dequantize,
    linear_decode,
    linear_encode,
    mu_law_decode,
    mu_law_encode,
    quantize,
)

BIN_COUNTS = [2, 3, 16, 17, 255, 256, 1024, 65536]
CODECS = [(mu_law_encode, mu_law_decode), (linear_encode, linear_decode)]


@pytest.mark.parametrize("encode, decode", CODECS)
@pytest.mark.parametrize("num_bins", BIN_COUNTS)
def test_encode_decode_every_level(encode, decode, num_bins):
    levels = np.arange(num_bins)

    decoded = decode(levels, num_bins)
    assert decoded.dtype == np.float64
    assert np.array_equal(encode(decoded, num_bins), levels)


@pytest.mark.parametrize("encode, decode", CODECS)
@pytest.mark.parametrize("num_bins", BIN_COUNTS)
def test_decoded_levels_are_fixed_points(encode, decode, num_bins):
    values = decode(np.arange(num_bins), num_bins)

    assert np.array_equal(decode(encode(values, num_bins), num_bins), values)


@pytest.mark.parametrize("encode, decode", CODECS)
@pytest.mark.parametrize("num_bins", [3, 256, 65536])
def test_encode_picks_nearest_level(encode, decode, num_bins):
    x = np.random.default_rng(0).uniform(-1.0, 1.0, size=20000)
    q = encode(x, num_bins)

    assert q.dtype == np.int64
    assert q.min() >= 0
    assert q.max() <= num_bins - 1
    assert np.all(np.diff(q[np.argsort(x)]) >= 0), "encoding must be monotonic"
    if encode is linear_encode:
        # Levels are 2/K apart; the top level 1 - 2/K also takes the samples in [1 - 1/K, 1].
        error = np.abs(x - decode(q, num_bins))
        below_top = x < 1.0 - 1.0 / num_bins
        assert np.all(error[below_top] <= 1.0 / num_bins + 1e-12)
        assert np.all(error <= 2.0 / num_bins + 1e-12)
    else:
        # Levels are 2/mu apart in the companded domain y = F(x).
        mu = num_bins - 1
        companded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
        companded_level = 2.0 * q / mu - 1.0
        assert np.all(np.abs(companded - companded_level) <= 1.0 / mu + 1e-12)


def test_mu_law_matches_formula():
    num_bins, mu = 256, 255
    x = np.random.default_rng(1).uniform(-1.0, 1.0, size=10000)

    companded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    expected = np.floor((companded + 1) / 2 * mu + 0.5).astype(np.int64)
    assert np.array_equal(mu_law_encode(x, num_bins), expected)
    assert mu_law_encode(np.array([-1.0, 0.0, 1.0]), num_bins).tolist() == [0, 128, 255]


def test_mu_law_decode_endpoints_and_symmetry():
    for num_bins in (17, 256):
        decoded = mu_law_decode(np.arange(num_bins), num_bins)

        assert decoded[0] == -1.0
        assert decoded[-1] == 1.0
        assert np.allclose(decoded, -decoded[::-1], rtol=0, atol=1e-15)


def test_mu_law_steps_grow_away_from_zero():
    decoded = mu_law_decode(np.arange(256), 256)
    steps = np.diff(decoded[128:])

    assert np.all(np.diff(steps) > 0)
    assert steps[-1] / steps[0] > 100


@pytest.mark.parametrize("bits", [8, 16])
def test_linear_encodes_pcm_losslessly(bits):
    num_bins = 1 << bits
    pcm = np.arange(-(num_bins // 2), num_bins // 2)

    q = linear_encode(pcm / (num_bins // 2), num_bins)
    assert np.array_equal(q, pcm + num_bins // 2)
    assert np.array_equal(linear_decode(q, num_bins) * (num_bins // 2), pcm)


def test_linear_encodes_24_bit_pcm_losslessly():
    num_bins = 1 << 24
    pcm = np.random.default_rng(2).integers(-(1 << 23), 1 << 23, size=100000)
    pcm[:2] = [-(1 << 23), (1 << 23) - 1]

    q = linear_encode(pcm / float(1 << 23), num_bins)
    assert np.array_equal(q, pcm + (1 << 23))


def test_linear_maps_one_to_top_level():
    assert linear_encode(np.array([1.0]), 256).tolist() == [255]
    assert linear_encode(np.array([1.0 - 1.0 / 256]), 256).tolist() == [255]
    assert linear_encode(np.array([1.0 - 1.5 / 256]), 256).tolist() == [255]
    assert linear_encode(np.array([1.0 - 3.5 / 256]), 256).tolist() == [254]


def test_torch_matches_numpy():
    x = np.random.default_rng(3).uniform(-1.0, 1.0, size=(4, 1, 100))
    for encode, decode in CODECS:
        q_numpy = encode(x, 256)
        q_torch = encode(torch.from_numpy(x).float(), 256)

        assert isinstance(q_torch, torch.Tensor)
        assert q_torch.dtype == torch.int64
        assert q_torch.shape == (4, 1, 100)
        # float32 input can move a sample across a bin edge only within float32 rounding of it.
        assert (q_torch.numpy() != q_numpy).mean() < 0.01
        decoded = decode(q_torch, 256)
        assert decoded.dtype == torch.float64
        assert torch.equal(encode(decoded, 256), q_torch)


def test_dispatchers_select_codec():
    x = np.linspace(-1, 1, 101)

    assert np.array_equal(quantize(x, 256, "mu-law"), mu_law_encode(x, 256))
    assert np.array_equal(quantize(x, 256, "linear"), linear_encode(x, 256))
    q = np.arange(256)
    assert np.array_equal(dequantize(q, 256, "linear"), linear_decode(q, 256))
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantize(x, 256, "a-law")


@pytest.mark.parametrize("encode", [mu_law_encode, linear_encode])
def test_encode_rejects_out_of_range(encode):
    with pytest.raises(ValueError, match=r"samples in \[-1.5, 0.5\]; expected samples in \[-1, 1\]"):
        encode(np.array([-1.5, 0.5]), 256)
    with pytest.raises(ValueError, match="NaN"):
        encode(np.array([0.0, math.nan]), 256)
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2, got 1"):
        encode(np.array([0.0]), 1)


@pytest.mark.parametrize("decode", [mu_law_decode, linear_decode])
def test_decode_rejects_invalid_levels(decode):
    with pytest.raises(ValueError, match=r"levels in \[0, 256\]; expected integers in \[0, 255\]"):
        decode(np.array([0, 256]), 256)
    with pytest.raises(ValueError, match=r"levels in \[-1, 3\]"):
        decode(torch.tensor([-1, 3]), 256)
    with pytest.raises(ValueError, match="integer dtype"):
        decode(np.array([0.0, 1.0]), 256)


def test_empty_input_round_trips():
    assert mu_law_encode(np.zeros(0), 256).shape == (0,)
    assert linear_decode(np.zeros(0, dtype=np.int64), 256).shape == (0,)


def test_low_precision_tensors():
    x = torch.linspace(-1, 1, 50, dtype=torch.bfloat16)

    q = mu_law_encode(x, 256)
    assert q.dtype == torch.int64
    assert torch.equal(q, mu_law_encode(x.double(), 256))
    assert mu_law_decode(q.to(torch.uint8), 256).dtype == torch.float64
    with pytest.raises(ValueError, match="integer dtype, got torch.float32"):
        mu_law_decode(q.float(), 256)
