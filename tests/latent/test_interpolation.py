"""Tests of latent interpolation: exact endpoints, valid images, no NaN or inf at z = 0 or 1."""

import numpy as np
import pytest
import torch
from PIL import Image

from arflows.latent import (
    Z_CLAMP,
    decode_latents,
    figure_pixel_size,
    interpolate,
    interpolate_latents,
    interpolation_weights,
    ks_uniform,
    save_figure,
)

from .helpers import FAMILIES, tiny_flow


def test_weights_run_from_one_to_zero():
    weights = interpolation_weights(5)

    assert weights.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="at least 2"):
        interpolation_weights(1)


@pytest.mark.parametrize("mode", ["gaussian", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_latent_endpoints_are_the_inputs(mode, dtype):
    generator = torch.Generator().manual_seed(0)
    z0 = torch.rand(3, 2, 4, 4, generator=generator, dtype=dtype)
    z1 = torch.rand(3, 2, 4, 4, generator=generator, dtype=dtype)

    path = interpolate_latents(z0, z1, 6, mode=mode)

    assert path.shape == (3, 6, 2, 4, 4)
    assert path.dtype == dtype
    assert torch.equal(path[:, 0], z0)
    assert torch.equal(path[:, -1], z1)


@pytest.mark.parametrize("mode", ["gaussian", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_latent_extremes_stay_finite(mode, dtype):
    # Every combination of the extremes 0 and 1 with each other and with an interior value.
    values = torch.tensor([0.0, 1.0, 0.5, Z_CLAMP / 2, 1.0 - 1e-17], dtype=torch.float64).to(dtype)
    first, second = torch.meshgrid(values, values, indexing="ij")
    z0 = first.reshape(1, 1, 1, -1)
    z1 = second.reshape(1, 1, 1, -1)

    path = interpolate_latents(z0, z1, 9, mode=mode)

    assert torch.isfinite(path).all()
    assert path.min() >= 0.0
    assert path.max() <= 1.0


def test_gaussian_mix_keeps_uniform_marginals():
    generator = torch.Generator().manual_seed(1)
    z0 = torch.rand(1, 1, 1, 50_000, generator=generator, dtype=torch.float64)
    z1 = torch.rand(1, 1, 1, 50_000, generator=generator, dtype=torch.float64)

    gaussian = interpolate_latents(z0, z1, 3, mode="gaussian")[:, 1]
    linear = interpolate_latents(z0, z1, 3, mode="linear")[:, 1]

    # The average of two uniforms is triangular, so only the norm-preserving mix stays uniform.
    assert ks_uniform(gaussian).p_value > 0.001
    assert ks_uniform(linear).p_value < 1e-10


def test_latent_rejects_bad_input():
    z = torch.rand(1, 1, 2, 2)

    with pytest.raises(ValueError, match="mode"):
        interpolate_latents(z, z, 3, mode="spherical")
    with pytest.raises(ValueError, match="same shape"):
        interpolate_latents(z, torch.rand(1, 1, 2, 3), 3)
    with pytest.raises(ValueError, match="outside"):
        interpolate_latents(z, torch.full((1, 1, 2, 2), float("nan")), 3)
    with pytest.raises(ValueError, match="outside"):
        interpolate_latents(z + 1.0, z, 3)


@pytest.mark.parametrize("model", FAMILIES)
def test_interpolate_endpoints_reproduce_examples(model, digits):
    flow = tiny_flow(model, (1, 8, 8), 17)
    test = digits.indices("test")
    q = torch.from_numpy(digits.images[test[:4]].astype(np.int64))

    result = interpolate(flow, q[:2], q[2:], 4, generator=torch.Generator().manual_seed(0))

    assert result.endpoints_exact
    assert result.data.shape == (2, 4, 1, 8, 8)
    assert np.array_equal(result.data[:, 0], q[:2].numpy())
    assert np.array_equal(result.data[:, -1], q[2:].numpy())
    assert result.data.dtype == np.int64
    assert result.data.min() >= 0
    assert result.data.max() < 17
    assert result.weights.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


def test_interpolation_figure_renders(digits, tmp_path):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    q = torch.from_numpy(digits.images[:4].astype(np.int64))
    result = interpolate(flow, q[:2], q[2:], 5)
    figure = result.figure()

    save_figure(figure, tmp_path / "interpolation.png")

    with Image.open(tmp_path / "interpolation.png") as image:
        assert image.size == figure_pixel_size(figure)


def test_interpolate_linear_center_noise_rgb():
    flow = tiny_flow("pixelcnn", (3, 3, 3), 5)
    generator = torch.Generator().manual_seed(2)
    q = torch.randint(0, 5, (4, 3, 3, 3), generator=generator)

    result = interpolate(flow, q[:2], q[2:], 3, mode="linear", noise="center")

    assert result.endpoints_exact
    assert result.mode == "linear"
    assert np.array_equal(result.data[:, 0], q[:2].numpy())
    assert result.data.min() >= 0
    assert result.data.max() < 5


def test_decoding_extreme_latents_gives_valid_data():
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 17)
    zeros = torch.zeros(1, 1, 4, 4)
    ones = torch.ones(1, 1, 4, 4)

    path = interpolate_latents(zeros, ones, 5)
    decoded = decode_latents(flow, path[0])

    assert torch.isfinite(path).all()
    assert decoded.shape == (5, 1, 4, 4)
    assert decoded.min() >= 0
    assert decoded.max() < 17
    assert torch.all(decoded[0] == 0)
    assert torch.all(decoded[-1] == 16)
