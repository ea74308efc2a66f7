"""Mu-law and linear quantization of audio samples in [-1, 1] to K integer levels."""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

__all__ = [
    "QUANTIZATIONS",
    "ArrayLike",
    "dequantize",
    "linear_decode",
    "linear_encode",
    "mu_law_decode",
    "mu_law_encode",
    "quantize",
]

QUANTIZATIONS = ("mu-law", "linear")

ArrayLike = Union[np.ndarray, torch.Tensor]


def _check_num_bins(num_bins: int) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")


def _audio_to_float64(audio: ArrayLike) -> tuple[np.ndarray, torch.device | None]:
    """Return the audio as a float64 NumPy array and the device of a tensor input (None for NumPy).

    The arithmetic runs in NumPy because, for clips of a few thousand samples, per-call overhead of torch's
    thread pool dominated the time to load a WAV folder.
    """
    device = audio.device if isinstance(audio, torch.Tensor) else None
    if device is not None:
        if audio.is_complex() or audio.dtype == torch.bool:
            raise ValueError(f"audio must be real-valued, got dtype {audio.dtype}")
        # Converting on the torch side also covers dtypes that NumPy lacks, such as bfloat16.
        x = audio.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        x = np.asarray(audio)
        if x.dtype.kind not in "fiu":
            raise ValueError(f"audio must be real-valued, got dtype {x.dtype}")
        x = x.astype(np.float64)

    if x.size > 0:
        if np.isnan(x).any():
            raise ValueError("audio contains NaN; expected samples in [-1, 1]")
        low, high = float(x.min()), float(x.max())
        if low < -1.0 or high > 1.0:
            raise ValueError(f"audio has samples in [{low}, {high}]; expected samples in [-1, 1]")
    return x, device


def _levels_to_int64(q: ArrayLike, num_bins: int) -> tuple[np.ndarray, torch.device | None]:
    """Return the levels as an int64 NumPy array and the device of a tensor input (None for NumPy)."""
    device = q.device if isinstance(q, torch.Tensor) else None
    if device is not None:
        if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
            raise ValueError(f"quantized audio must have an integer dtype, got {q.dtype}")
        levels = q.detach().to(device="cpu", dtype=torch.int64).numpy()
    else:
        levels = np.asarray(q)
        if levels.dtype.kind not in "iu":
            raise ValueError(f"quantized audio must have an integer dtype, got {levels.dtype}")
        levels = levels.astype(np.int64)

    if levels.size > 0:
        low, high = int(levels.min()), int(levels.max())
        if low < 0 or high >= num_bins:
            raise ValueError(
                f"quantized audio has levels in [{low}, {high}]; expected integers in [0, {num_bins - 1}]"
            )
    return levels, device


def _round_half_up(values: np.ndarray) -> np.ndarray:
    # floor(v + 1/2) instead of np.round, whose ties go to the even integer.
    return np.floor(values + 0.5).astype(np.int64)


def _to_caller_type(values: np.ndarray, device: torch.device | None) -> ArrayLike:
    return values if device is None else torch.from_numpy(values).to(device)


def mu_law_encode(audio: ArrayLike, num_bins: int = 256) -> ArrayLike:
    """Compress audio with mu-law companding and round it to one of K levels.

    With mu = K - 1, the companded value is F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu) in [-1, 1], and the
    level is q = floor((F(x) + 1) / 2 * mu + 1/2), the nearest of the K equally spaced points of the companded
    range. K = 256 gives the 8-bit mu-law of WaveNet.

    Args:
        audio: float samples of any shape with values in [-1, 1], as a NumPy array or tensor.
        num_bins: the number of levels K >= 2.

    Returns:
        int64 levels in {0, ..., K-1} of the same shape and container type (NumPy or torch) as ``audio``.

    Raises:
        ValueError: if a sample is NaN or outside [-1, 1], or ``num_bins`` < 2.
    """
    _check_num_bins(num_bins)
    x, device = _audio_to_float64(audio)
    mu = num_bins - 1

    companded = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    q = _round_half_up((companded + 1.0) / 2.0 * mu)
    return _to_caller_type(q, device)


def mu_law_decode(q: ArrayLike, num_bins: int = 256) -> ArrayLike:
    """Map mu-law levels back to samples in [-1, 1], inverting the companding of ``mu_law_encode``.

    With mu = K - 1 and y = 2q / mu - 1, the sample is x = sign(y) ((1 + mu)^|y| - 1) / mu. Level 0 decodes
    to -1 and level K - 1 to 1. ``mu_law_encode(mu_law_decode(q)) == q`` holds for every level.

    Args:
        q: integer levels in {0, ..., K-1} of any shape, as a NumPy array or tensor.
        num_bins: the number of levels K >= 2.

    Returns:
        float64 samples of the same shape and container type as ``q``.

    Raises:
        ValueError: if ``q`` has a floating-point dtype or a level outside [0, K), or ``num_bins`` < 2.
    """
    _check_num_bins(num_bins)
    levels, device = _levels_to_int64(q, num_bins)
    mu = num_bins - 1

    y = 2.0 * levels / mu - 1.0
    # pow rather than expm1 makes the end levels exactly -1 and 1, because 256.0 ** 1.0 is exact.
    x = np.sign(y) * (np.power(float(1 + mu), np.abs(y)) - 1.0) / mu
    return _to_caller_type(x, device)


def linear_encode(audio: ArrayLike, num_bins: int = 256) -> ArrayLike:
    """Round audio to the nearest of K equally spaced levels -1 + 2q/K, q = 0, ..., K-1.

    q = min(floor((x + 1) K / 2 + 1/2), K - 1). The levels are those of K-valued PCM, so K = 2^b encodes
    b-bit PCM samples (read as pcm / 2^(b-1)) without loss as q = pcm + 2^(b-1). The top level is
    1 - 2/K, and samples in [1 - 1/K, 1] map to it, as a PCM writer stores 1.0 as its largest code.

    Args:
        audio: float samples of any shape with values in [-1, 1], as a NumPy array or tensor.
        num_bins: the number of levels K >= 2.

    Returns:
        int64 levels in {0, ..., K-1} of the same shape and container type as ``audio``.

    Raises:
        ValueError: if a sample is NaN or outside [-1, 1], or ``num_bins`` < 2.
    """
    _check_num_bins(num_bins)
    x, device = _audio_to_float64(audio)

    q = np.minimum(_round_half_up((x + 1.0) * (num_bins / 2.0)), num_bins - 1)
    return _to_caller_type(q, device)


def linear_decode(q: ArrayLike, num_bins: int = 256) -> ArrayLike:
    """Map linear levels to samples x = -1 + 2q/K, the inverse of ``linear_encode``.

    Args:
        q: integer levels in {0, ..., K-1} of any shape, as a NumPy array or tensor.
        num_bins: the number of levels K >= 2.

    Returns:
        float64 samples in [-1, 1 - 2/K] of the same shape and container type as ``q``.

    Raises:
        ValueError: if ``q`` has a floating-point dtype or a level outside [0, K), or ``num_bins`` < 2.
    """
    _check_num_bins(num_bins)
    levels, device = _levels_to_int64(q, num_bins)

    x = 2.0 * levels / num_bins - 1.0
    return _to_caller_type(x, device)


def _check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")


def quantize(audio: ArrayLike, num_bins: int = 256, quantization: str = "mu-law") -> ArrayLike:
    """Encode audio in [-1, 1] with ``mu_law_encode`` or ``linear_encode``, chosen by ``quantization``."""
    _check_quantization(quantization)
    if quantization == "mu-law":
        return mu_law_encode(audio, num_bins)
    return linear_encode(audio, num_bins)


def dequantize(q: ArrayLike, num_bins: int = 256, quantization: str = "mu-law") -> ArrayLike:
    """Decode levels with ``mu_law_decode`` or ``linear_decode``, chosen by ``quantization``."""
    _check_quantization(quantization)
    if quantization == "mu-law":
        return mu_law_decode(q, num_bins)
    return linear_decode(q, num_bins)
