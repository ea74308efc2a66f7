"""Matplotlib figures of audio: waveforms next to their latent sequences, waveform grids, interpolations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from matplotlib.figure import Figure

from arflows.latent.uniformity import as_numpy, ks_uniform

__all__ = ["audio_interpolation_figure", "audio_latent_figure", "waveform_figure"]

ArrayLike = Union[np.ndarray, torch.Tensor]

DPI = 100


def _clips(values: ArrayLike, lengths: ArrayLike | None) -> list[np.ndarray]:
    """Return the clips of padded audio (N, 1, T) as 1-D float64 arrays cut at their lengths."""
    array = as_numpy(values)
    if array.ndim != 3 or array.shape[1] != 1 or array.shape[0] < 1:
        raise ValueError(f"audio has shape {array.shape}; expected (N, 1, T) with N >= 1")
    if lengths is None:
        return [array[row, 0] for row in range(array.shape[0])]
    lengths = np.asarray(lengths)
    if lengths.shape != (array.shape[0],):
        raise ValueError(f"lengths has shape {lengths.shape}; expected ({array.shape[0]},), one per clip")
    return [array[row, 0, : int(length)] for row, length in enumerate(lengths)]


def _amplitude(levels: np.ndarray, num_bins: int, quantization: str) -> np.ndarray:
    """Return the sample values in [-1, 1] that integer levels stand for."""
    from arflows.data import dequantize

    return np.asarray(dequantize(levels.astype(np.int64), num_bins, quantization), dtype=np.float64)


def _time_axis(length: int, sample_rate: int | None) -> tuple[np.ndarray, str]:
    if sample_rate:
        return np.arange(length) / sample_rate, "time (s)"
    return np.arange(length, dtype=np.float64), "step t"


def _plot_waveform(axes, levels: np.ndarray, num_bins: int, quantization: str, sample_rate: int | None,
                   title: str, *, labels: bool = True) -> None:
    time, unit = _time_axis(len(levels), sample_rate)
    axes.plot(time, _amplitude(levels, num_bins, quantization), linewidth=0.5, color="tab:blue")
    axes.set_ylim(-1.05, 1.05)
    axes.set_title(title, fontsize=7)
    axes.tick_params(labelsize=6)
    if labels:
        axes.set_xlabel(unit, fontsize=7)
        axes.set_ylabel("amplitude", fontsize=7)


def audio_latent_figure(
    q: ArrayLike,
    z: ArrayLike,
    lengths: ArrayLike | None,
    num_bins: int,
    *,
    quantization: str = "mu-law",
    sample_rate: int | None = None,
    max_clips: int = 4,
    width_inches: float = 10.0,
    title: str | None = None,
) -> Figure:
    """Show waveforms next to their latent sequences, and the histogram of all latents with its KS test.

    Row i shows clip i: on the left its samples (levels q mapped back to [-1, 1] by ``quantization``),
    on the right its latents z_t against time. The bottom panel is the density histogram of the latents
    of all N clips (not only the ones shown) against U(0, 1), titled with the Kolmogorov-Smirnov test.

    Args:
        q: Levels in [0, K), padded audio of shape (N, 1, T).
        z: Their latents in [0, 1], shape (N, 1, T).
        lengths: Clip lengths (N,), or None when every clip has length T.
        num_bins: K.
        quantization: "mu-law" or "linear", as the levels were made.
        sample_rate: Samples per second, for a time axis in seconds (steps without it).
        max_clips: Clips shown as rows.
        width_inches: Figure width.
        title: Figure title.
    """
    data_clips = _clips(q, lengths)
    latent_clips = _clips(z, lengths)
    if len(data_clips) != len(latent_clips):
        raise ValueError(f"q has {len(data_clips)} clips but z has {len(latent_clips)}; expected the same clips")
    shown = min(max_clips, len(data_clips))

    figure = Figure(figsize=(width_inches, 1.6 * shown + 2.6), dpi=DPI)
    grid = figure.add_gridspec(shown + 1, 2, height_ratios=[1.0] * shown + [1.4], hspace=0.9, wspace=0.2)
    for row in range(shown):
        levels, latents = data_clips[row], latent_clips[row]
        last = row == shown - 1
        _plot_waveform(figure.add_subplot(grid[row, 0]), levels, num_bins, quantization, sample_rate,
                       f"clip {row}: waveform ({len(levels)} samples)", labels=last)
        axes = figure.add_subplot(grid[row, 1])
        time, unit = _time_axis(len(latents), sample_rate)
        axes.plot(time, latents, linestyle="none", marker=".", markersize=0.8, color="tab:orange")
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(f"clip {row}: latents z = f(x)", fontsize=7)
        axes.tick_params(labelsize=6)
        if last:
            axes.set_xlabel(unit, fontsize=7)
            axes.set_ylabel("z", fontsize=7)

    values = np.concatenate(latent_clips)
    result = ks_uniform(values)
    axes = figure.add_subplot(grid[shown, :])
    axes.hist(values, bins=50, range=(0.0, 1.0), density=True, color="tab:orange", alpha=0.8)
    axes.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="U(0, 1)")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("z", fontsize=7)
    axes.set_ylabel("density", fontsize=7)
    axes.tick_params(labelsize=6)
    axes.legend(fontsize=7, loc="lower right")
    axes.set_title(f"latents of all {len(latent_clips)} clips: {result.describe()}", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(top=0.9 if title else 0.95, bottom=0.08, left=0.08, right=0.97)
    return figure


def waveform_figure(
    q: ArrayLike,
    lengths: ArrayLike | None,
    num_bins: int,
    *,
    quantization: str = "mu-law",
    sample_rate: int | None = None,
    titles: Sequence[str] | None = None,
    num_columns: int = 2,
    max_clips: int = 16,
    width_inches: float = 10.0,
    title: str | None = None,
) -> Figure:
    """Show the waveforms of up to ``max_clips`` clips (N, 1, T) as a grid, row by row.

    Args:
        q: Levels in [0, K), padded audio of shape (N, 1, T).
        lengths: Clip lengths (N,), or None when every clip has length T.
        num_bins: K.
        quantization: "mu-law" or "linear", as the levels were made.
        sample_rate: Samples per second, for a time axis in seconds.
        titles: A title per clip (default "clip i").
        num_columns: Waveforms per row.
        max_clips: Clips shown.
        width_inches: Figure width.
        title: Figure title.
    """
    if num_columns < 1:
        raise ValueError(f"num_columns must be at least 1, got {num_columns}")
    clips = _clips(q, lengths)[:max_clips]
    columns = min(num_columns, len(clips))
    rows = math.ceil(len(clips) / columns)
    height = 1.6 * rows + 1.1
    figure = Figure(figsize=(width_inches, height), dpi=DPI)
    axes_grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    for index, axes in enumerate(axes_grid.ravel()):
        if index >= len(clips):
            axes.set_axis_off()
            continue
        name = titles[index] if titles is not None else f"clip {index}"
        _plot_waveform(axes, clips[index], num_bins, quantization, sample_rate, name,
                       labels=index // columns == rows - 1 and index % columns == 0)
        if index % columns:
            axes.tick_params(labelleft=False)
    if title:
        figure.suptitle(title, fontsize=10)
    # Margins in inches, so that titles and axis labels fit whatever the number of rows.
    figure.subplots_adjust(top=1.0 - 0.55 / height, bottom=0.55 / height, left=0.07, right=0.98, hspace=0.8,
                           wspace=0.08)
    return figure


def audio_interpolation_figure(
    data: ArrayLike,
    num_bins: int,
    weights: Sequence[float],
    *,
    mode: str,
    quantization: str = "mu-law",
    sample_rate: int | None = None,
    width_inches: float = 12.0,
) -> Figure:
    """Show decoded audio interpolations (P, S, 1, T): one row per pair, from w = 1 (left) to w = 0 (right).

    Args:
        data: Levels in [0, K), shape (P, S, 1, T); column s has weight ``weights[s]`` on the first clip.
        num_bins: K.
        weights: Weight of the first clip at each step, shape (S,).
        mode: "gaussian" or "linear", for the title.
        quantization: "mu-law" or "linear", as the levels were made.
        sample_rate: Samples per second, for a time axis in seconds.
        width_inches: Figure width.
    """
    array = as_numpy(data)
    if array.ndim != 4 or array.shape[2] != 1:
        raise ValueError(f"audio interpolations have shape {array.shape}; expected (P, S, 1, T)")
    num_pairs, num_steps = array.shape[:2]
    figure = Figure(figsize=(width_inches, 1.3 * num_pairs + 1.0), dpi=DPI)
    axes_grid = figure.subplots(num_pairs, num_steps, squeeze=False, sharey=True)
    for pair in range(num_pairs):
        for step in range(num_steps):
            _plot_waveform(axes_grid[pair, step], array[pair, step, 0], num_bins, quantization, sample_rate,
                           f"pair {pair}, w = {weights[step]:.2g}", labels=False)
            if step:
                axes_grid[pair, step].tick_params(labelleft=False)
    figure.suptitle(f"{mode} interpolation of waveforms, weight w of the left clip", fontsize=10)
    figure.subplots_adjust(top=1.0 - 0.6 / figure.get_size_inches()[1], hspace=0.7, wspace=0.08, left=0.05,
                           right=0.99, bottom=0.1)
    return figure
