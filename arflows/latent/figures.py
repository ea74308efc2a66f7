"""Matplotlib figures of data, latents, uniformity checks and interpolations, and PNG output."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import scipy.stats
import torch
from matplotlib.figure import Figure

from arflows.latent.uniformity import NeighbourCorrelation, as_numpy, ks_per_channel, ks_uniform

__all__ = [
    "correlation_figure",
    "data_latent_figure",
    "figure_pixel_size",
    "histogram_figure",
    "interpolation_figure",
    "ks_map_figure",
    "sample_grid_figure",
    "save_figure",
    "tile_images",
    "to_display",
    "write_png",
]

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, os.PathLike]

# Figures are built with matplotlib.figure.Figure, not pyplot. That leaves no global figure registry to
# leak from and no interactive backend, so they render with Agg whatever the MPLBACKEND setting.
DPI = 100


def _check_images(values: np.ndarray, name: str) -> None:
    if values.ndim != 4:
        raise ValueError(f"{name} has shape {values.shape}; expected images (N, C, H, W)")
    if values.shape[0] < 1:
        raise ValueError(f"{name} has shape {values.shape}; expected at least one image")


def to_display(values: ArrayLike, num_bins: int | None = None) -> np.ndarray:
    """Scale images to [0, 1] for display, with channels last.

    Args:
        values: Images of shape (N, C, H, W): integer data when ``num_bins`` is given (shown as q/(K - 1)),
            else latents in [0, 1].
        num_bins: K of integer data, or None for latents.

    Returns:
        float64 array (N, H, W) for C = 1 (grey) or (N, H, W, 3) otherwise: channels 0, 1, 2 as red,
        green and blue; C = 2 leaves blue at 0 and C > 3 shows the first three channels.
    """
    array = as_numpy(values)
    _check_images(array, "images")
    if num_bins is not None:
        array = array / (num_bins - 1)
    array = np.clip(array, 0.0, 1.0)
    if array.shape[1] == 1:
        return array[:, 0]
    rgb = np.zeros((array.shape[0], 3, *array.shape[2:]))
    channels = min(3, array.shape[1])
    rgb[:, :channels] = array[:, :channels]
    return rgb.transpose(0, 2, 3, 1)  # (N, 3, H, W) -> (N, H, W, 3)


def tile_images(images: np.ndarray, num_columns: int, *, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Arrange images (N, H, W) or (N, H, W, 3) into one grid image, row by row.

    Returns:
        An array (rows (H + p) + p, columns (W + p) + p[, 3]) with ``pad_value`` between images and in
        the cells after the last image.
    """
    if num_columns < 1:
        raise ValueError(f"num_columns must be at least 1, got {num_columns}")
    count, height, width = images.shape[:3]
    columns = min(num_columns, count)
    rows = math.ceil(count / columns)
    shape = (rows * (height + padding) + padding, columns * (width + padding) + padding, *images.shape[3:])
    grid = np.full(shape, pad_value, dtype=np.float64)
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = images[index]
    return grid


def _show(axes, image: np.ndarray, title: str) -> None:
    cmap = "gray" if image.ndim == 2 else None
    axes.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()


def _grid_figsize(grid: np.ndarray, panels: int, width_inches: float) -> tuple[float, float]:
    """Return a figure size that shows `panels` grids side by side at their aspect ratio, plus titles."""
    aspect = grid.shape[0] / grid.shape[1]
    # At least 2.4 inches, so that a single row of images still leaves room for the titles.
    height = max(2.4, width_inches / panels * aspect + 0.8)
    return width_inches, height


def data_latent_figure(
    q: ArrayLike, z: ArrayLike, num_bins: int, *, num_columns: int = 8, max_examples: int = 64,
    width_inches: float = 10.0, title: str | None = None,
) -> Figure:
    """Show data next to its latents: two grids with the same layout, channels as colours.

    Args:
        q: Data, integers in [0, K), shape (N, C, H, W).
        z: Their latents in [0, 1], shape (N, C, H, W).
        num_bins: K.
        num_columns: Images per grid row.
        max_examples: Show at most the first this many examples.
        width_inches: Figure width; the height follows the grids' aspect ratio.
        title: Figure title.
    """
    data = to_display(as_numpy(q)[:max_examples], num_bins)
    latents = to_display(as_numpy(z)[:max_examples])
    if data.shape != latents.shape:
        raise ValueError(f"q {data.shape} and z {latents.shape} must hold the same number of equal images")
    data_grid = tile_images(data, num_columns)
    latent_grid = tile_images(latents, num_columns)

    figure = Figure(figsize=_grid_figsize(data_grid, 2, width_inches), dpi=DPI)
    left, right = figure.subplots(1, 2)
    _show(left, data_grid, "data q")
    _show(right, latent_grid, "latents z = f(x)")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def sample_grid_figure(q: ArrayLike, num_bins: int, *, num_columns: int = 8, width_inches: float = 6.0,
                       title: str = "samples") -> Figure:
    """Show integer images (N, C, H, W) with values in [0, K) as one grid."""
    grid = tile_images(to_display(q, num_bins), num_columns)
    figure = Figure(figsize=_grid_figsize(grid, 1, width_inches), dpi=DPI)
    _show(figure.subplots(), grid, title)
    return figure


def interpolation_figure(data: ArrayLike, num_bins: int, weights: Sequence[float], *, mode: str,
                         width_inches: float = 8.0) -> Figure:
    """Show decoded interpolations (P, S, C, H, W): one row per pair, from w = 1 (left) to w = 0 (right)."""
    array = as_numpy(data)
    if array.ndim != 5:
        raise ValueError(f"interpolations have shape {array.shape}; expected (P, S, C, H, W)")
    num_pairs, num_steps = array.shape[:2]
    # (P, S, C, H, W) -> (P * S, C, H, W), row-major so that each pair fills one grid row.
    grid = tile_images(to_display(array.reshape(num_pairs * num_steps, *array.shape[2:]), num_bins), num_steps)
    figure = Figure(figsize=_grid_figsize(grid, 1, width_inches), dpi=DPI)
    axes = figure.subplots()
    weights_text = ", ".join(f"{weight:.2g}" for weight in weights)
    _show(axes, grid, f"{mode} interpolation, weight of the left example: {weights_text}")
    return figure


def histogram_figure(z: ArrayLike, *, lengths: ArrayLike | None = None, num_histogram_bins: int = 50,
                     title: str = "latents", width_inches: float = 10.0) -> Figure:
    """Plot the marginal density of all latents and of each channel against the U(0, 1) density.

    Each panel shows a density histogram on [0, 1], the uniform density 1 as a line, and its KS test.

    Args:
        z: Latents of shape (N, C, H, W) or (N, 1, T).
        lengths: For padded audio latents (N, 1, T), the clip lengths (N,); padding is left out.
        num_histogram_bins: Bins on [0, 1].
        title: Figure title (for example "data" or "re-encoded samples").
        width_inches: Figure width.
    """
    array = as_numpy(z)
    if array.ndim < 3:
        raise ValueError(f"latents have shape {array.shape}; expected (N, C, H, W) or (N, 1, T)")
    if lengths is not None:
        values = np.concatenate([clip.ravel() for clip in _unpad_latents(array, lengths)])
        panels = [("all samples", values, ks_uniform(values))]
    elif array.ndim == 3:
        panels = [("all samples", array, ks_uniform(array))]
    else:
        panels = [("all sub-pixels", array, ks_uniform(array))]
    if lengths is None and array.shape[1] > 1:
        for channel, result in enumerate(ks_per_channel(array)):
            panels.append((f"channel {channel}", array[:, channel], result))

    figure = Figure(figsize=(width_inches, 3.2), dpi=DPI)
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    for axes, (name, values, result) in zip(axes_list, panels):
        axes.hist(values.ravel(), bins=num_histogram_bins, range=(0.0, 1.0), density=True, color="tab:blue",
                  alpha=0.8)
        axes.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="U(0, 1)")
        axes.set_xlim(0.0, 1.0)
        axes.set_xlabel("z")
        axes.set_title(f"{name}\n{result.describe()}", fontsize=7)
    axes_list[0].set_ylabel("density")
    axes_list[0].legend(fontsize=7, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(top=0.78, bottom=0.15, wspace=0.1)
    return figure


def _unpad_latents(array: np.ndarray, lengths: ArrayLike) -> list[np.ndarray]:
    """Return clip i of padded audio latents (N, 1, T) as its first lengths[i] values."""
    lengths = np.asarray(lengths)
    if array.ndim != 3 or lengths.shape != (array.shape[0],):
        raise ValueError(f"lengths of shape {lengths.shape} need padded audio latents (N, 1, T); got {array.shape}")
    return [array[row, 0, : int(length)] for row, length in enumerate(lengths)]


def ks_map_figure(statistic_map: np.ndarray, num_examples: int, *, title: str = "KS statistic per dimension",
                  width_inches: float | None = None) -> Figure:
    """Show the KS statistic of every dimension, with the 5% critical value of the test for reference.

    Args:
        statistic_map: Statistics of shape (C, H, W) (one image per channel) or (1, T) (a line).
        num_examples: The sample size N behind each statistic.
        title: Figure title.
        width_inches: Figure width; by default 3.5 inches per channel plus 1.5 for the colour bar (10 for
            audio).
    """
    statistic_map = np.asarray(statistic_map, dtype=np.float64)
    critical = float(scipy.stats.kstwo.isf(0.05, num_examples))
    caption = f"{title}\n(N = {num_examples} per dimension; 5% critical value {critical:.3g})"

    if statistic_map.ndim == 2:
        figure = Figure(figsize=(width_inches or 10.0, 3.0), dpi=DPI)
        axes = figure.subplots()
        axes.plot(statistic_map[0], linewidth=0.8)
        axes.axhline(critical, color="black", linestyle="--", linewidth=1.0, label="5% critical value")
        axes.set_xlabel("step t")
        axes.set_ylabel("KS statistic")
        axes.legend(fontsize=7)
        axes.set_title(caption, fontsize=9)
        figure.subplots_adjust(top=0.8, bottom=0.17)
        return figure

    if statistic_map.ndim != 3:
        raise ValueError(f"statistic_map has shape {statistic_map.shape}; expected (C, H, W) or (1, T)")
    channels = statistic_map.shape[0]
    width_inches = width_inches or 3.5 * channels + 1.5
    figure = Figure(figsize=(width_inches, 4.0), dpi=DPI)
    axes_list = np.atleast_1d(figure.subplots(1, channels))
    upper = max(float(statistic_map.max()), critical)
    for channel, axes in enumerate(axes_list):
        image = axes.imshow(statistic_map[channel], cmap="viridis", vmin=0.0, vmax=upper, interpolation="nearest")
        axes.set_title(f"channel {channel}", fontsize=8)
        axes.set_axis_off()
    colorbar = figure.colorbar(image, ax=list(axes_list), shrink=0.8)
    colorbar.ax.axhline(critical, color="red", linewidth=1.5)
    figure.suptitle(caption, fontsize=9)
    return figure


def correlation_figure(correlations: Mapping[str, Mapping[str, NeighbourCorrelation]], *,
                       width_inches: float = 6.0) -> Figure:
    """Bar chart of neighbour correlations per source (for example data and re-encoded samples).

    Each bar carries a ±2/sqrt(n) interval, the approximate 95% range of the correlation of independent
    latents.

    Args:
        correlations: Source name -> direction -> correlation, as :func:`neighbour_correlations` returns.
        width_inches: Figure width.
    """
    directions = sorted({direction for per_source in correlations.values() for direction in per_source})
    sources = list(correlations)
    figure = Figure(figsize=(width_inches, 3.2), dpi=DPI)
    axes = figure.subplots()
    width = 0.8 / max(len(sources), 1)
    for offset, source in enumerate(sources):
        positions, values, errors = [], [], []
        for index, direction in enumerate(directions):
            result = correlations[source].get(direction)
            if result is None or result.correlation is None:
                continue
            positions.append(index + (offset - (len(sources) - 1) / 2) * width)
            values.append(result.correlation)
            errors.append(2.0 / math.sqrt(result.num_pairs))
        axes.bar(positions, values, width=width, yerr=errors, capsize=3, label=source)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(directions)))
    axes.set_xticklabels([direction.replace("_", " ") for direction in directions])
    axes.set_ylabel("Pearson r")
    axes.set_title("correlation with the neighbouring latent (bars: ±2/sqrt(n))", fontsize=9)
    if sources:
        axes.legend(fontsize=8)
    figure.subplots_adjust(bottom=0.15)
    return figure


def save_figure(figure: Figure, path: PathLike) -> None:
    """Render a figure to a PNG file of exactly figsize × dpi pixels (no tight bounding box)."""
    figure.savefig(os.fspath(path), format="png", dpi=figure.dpi)


def write_png(image: ArrayLike, num_bins: int, path: PathLike) -> None:
    """Write one integer image (C, H, W) with values in [0, K) as a PNG file.

    Values are scaled to the full range, round(q (L - 1) / (K - 1)) with L = 256 levels for K <= 256
    (8-bit) and L = 65536 otherwise (16-bit, grey only). The map is injective, so the PNG determines q.
    C = 1 gives a grey image, C = 3 an RGB image.
    """
    from PIL import Image

    array = as_numpy(image)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"image has shape {array.shape}; expected (1, H, W) or (3, H, W)")
    if num_bins <= 256:
        pixels = np.rint(array * 255.0 / (num_bins - 1)).astype(np.uint8)
    else:
        if array.shape[0] != 1:
            raise ValueError(f"16-bit PNG output (K = {num_bins} > 256) supports grey images only")
        pixels = np.rint(array * 65535.0 / (num_bins - 1)).astype(np.uint16)
    if pixels.shape[0] == 1:
        Image.fromarray(pixels[0]).save(os.fspath(path), format="PNG")
    else:
        Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(os.fspath(path), format="PNG")


def figure_pixel_size(figure: Figure) -> tuple[int, int]:
    """Return the (width, height) in pixels that :func:`save_figure` gives the figure.

    Matplotlib (3.x, ``FigureCanvasBase.get_width_height``) truncates figsize × dpi to whole pixels after
    adding 1e-8 against floating-point error; this repeats that rule.
    """
    width, height = figure.get_size_inches() * figure.dpi
    return int(width + 1e-8), int(height + 1e-8)

