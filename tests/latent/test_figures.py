"""Tests of the figures and PNG output: every figure renders a non-empty PNG of its stated pixel size."""

import numpy as np
import pytest
from PIL import Image

from arflows.latent import (
    correlation_figure,
    data_latent_figure,
    figure_pixel_size,
    histogram_figure,
    interpolation_figure,
    ks_map_figure,
    ks_statistic_map,
    neighbour_correlations,
    sample_grid_figure,
    save_figure,
    write_png,
)
from arflows.latent.figures import tile_images, to_display

RNG = np.random.default_rng(0)
GREY_Q = RNG.integers(0, 17, (10, 1, 8, 8))
RGB_Q = RNG.integers(0, 256, (5, 3, 6, 6))
GREY_Z = RNG.random((10, 1, 8, 8))
RGB_Z = RNG.random((5, 3, 6, 6))

FIGURES = {
    "data_latent_grey": lambda: data_latent_figure(GREY_Q, GREY_Z, 17, title="digits"),
    "data_latent_rgb": lambda: data_latent_figure(RGB_Q, RGB_Z, 256, num_columns=3),
    "samples_grey": lambda: sample_grid_figure(GREY_Q, 17),
    "samples_rgb": lambda: sample_grid_figure(RGB_Q, 256, num_columns=2),
    "interpolation": lambda: interpolation_figure(GREY_Q[:9].reshape(3, 3, 1, 8, 8), 17, [1.0, 0.5, 0.0],
                                                  mode="gaussian"),
    "histogram_grey": lambda: histogram_figure(GREY_Z, title="data"),
    "histogram_rgb": lambda: histogram_figure(RGB_Z),
    "histogram_audio": lambda: histogram_figure(RNG.random((4, 1, 50))),
    "ks_map_grey": lambda: ks_map_figure(ks_statistic_map(GREY_Z)[0], 10),
    "ks_map_rgb": lambda: ks_map_figure(ks_statistic_map(RGB_Z)[0], 5),
    "ks_map_audio": lambda: ks_map_figure(ks_statistic_map(RNG.random((4, 1, 50)))[0], 4),
    "correlations": lambda: correlation_figure({"data": neighbour_correlations(RGB_Z),
                                                "samples": neighbour_correlations(GREY_Z)}),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_renders_png_of_stated_size(name, tmp_path):
    figure = FIGURES[name]()
    path = tmp_path / f"{name}.png"

    save_figure(figure, path)
    with Image.open(path) as image:
        size = image.size
        pixels = np.asarray(image.convert("L"))

    assert path.stat().st_size > 1000
    assert size == figure_pixel_size(figure)
    assert min(size) >= 200
    assert pixels.std() > 1.0, "the figure is blank"


@pytest.mark.parametrize("name, size", [("histogram_grey", (1000, 320)), ("correlations", (600, 320)),
                                        ("ks_map_grey", (500, 400)), ("ks_map_rgb", (1200, 400))])
def test_figure_sizes_in_pixels(name, size, tmp_path):
    path = tmp_path / f"{name}.png"

    save_figure(FIGURES[name](), path)

    with Image.open(path) as image:
        assert image.size == size


@pytest.mark.parametrize("num_bins, channels", [(17, 1), (256, 1), (256, 3), (2, 3)])
def test_write_png_keeps_every_level(num_bins, channels, tmp_path):
    image = np.arange(num_bins).repeat(channels * 2)[: channels * num_bins * 2]
    image = np.resize(image, (channels, 4, num_bins))
    path = tmp_path / "image.png"

    write_png(image, num_bins, path)
    with Image.open(path) as saved:
        pixels = np.asarray(saved)

    restored = np.rint(pixels.astype(np.float64) * (num_bins - 1) / 255.0).astype(np.int64)
    if channels == 3:
        restored = restored.transpose(2, 0, 1)
    assert np.array_equal(restored.reshape(image.shape), image)


def test_write_png_sixteen_bit(tmp_path):
    image = np.arange(1024).reshape(1, 32, 32)
    path = tmp_path / "wide.png"

    write_png(image, 1024, path)
    with Image.open(path) as saved:
        pixels = np.asarray(saved).astype(np.float64)

    assert np.array_equal(np.rint(pixels * 1023 / 65535).astype(np.int64), image[0])


def test_write_png_rejects_other_channel_counts(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        write_png(np.zeros((2, 4, 4), dtype=np.int64), 17, tmp_path / "x.png")


def test_tile_images_layout():
    images = np.stack([np.full((2, 3), value) for value in (0.1, 0.2, 0.3)])

    grid = tile_images(images, 2, padding=1, pad_value=1.0)

    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
    assert np.all(grid[1:3, 1:4] == 0.1)
    assert np.all(grid[1:3, 5:8] == 0.2)
    assert np.all(grid[4:6, 1:4] == 0.3)
    assert np.all(grid[4:6, 5:8] == 1.0)


def test_to_display_channels():
    assert to_display(GREY_Q, 17).shape == (10, 8, 8)
    assert to_display(RGB_Z).shape == (5, 6, 6, 3)
    two = to_display(RNG.random((2, 2, 3, 3)))
    assert two.shape == (2, 3, 3, 3)
    assert np.all(two[..., 2] == 0.0)
    assert to_display(np.full((1, 1, 2, 2), 16), 17).max() == 1.0
