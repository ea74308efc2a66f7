"""Tests of whether latents z = f(x) look like independent U(0, 1) noise: KS tests and neighbour correlations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import scipy.stats
import torch

__all__ = [
    "NECESSARY_NOT_SUFFICIENT",
    "SMALLEST_POSITIVE_DOUBLE",
    "KSResult",
    "NeighbourCorrelation",
    "as_numpy",
    "ks_per_channel",
    "ks_statistic_map",
    "ks_uniform",
    "neighbour_correlations",
    "uniformity_summary",
]

# The smallest positive (subnormal) float64, 2**-1074. A p-value that scipy returns as 0.0 is below it.
SMALLEST_POSITIVE_DOUBLE = float(np.finfo(np.float64).smallest_subnormal)

NECESSARY_NOT_SUFFICIENT = (
    "Uniform marginals are necessary but not sufficient: the latents of a correct flow are independent "
    "U(0, 1), so dependence between dimensions (see the neighbour correlations) also reveals a misfit."
)

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_numpy(values: ArrayLike) -> np.ndarray:
    """Return a tensor or array as a float64 NumPy array on the CPU."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _check_latents(z: np.ndarray, min_dims: int) -> None:
    if z.ndim < min_dims:
        raise ValueError(f"latents have shape {z.shape}; expected (N, C, H, W) or (N, 1, T)")
    if z.size == 0:
        raise ValueError(f"latents have shape {z.shape}; expected at least one value")
    if np.isnan(z).any():
        raise ValueError("latents contain NaN; expected values in [0, 1]")


@dataclass(frozen=True)
class KSResult:
    r"""A one-sample Kolmogorov–Smirnov test against U(0, 1).

    Attributes:
        statistic: :math:`D_n = \sup_t |F_n(t) - t|`, where :math:`F_n` is the empirical CDF.
        p_value: :math:`P(D_n \ge d)` under the null hypothesis, from ``scipy.stats.kstest``. It is 0.0
            when the true value underflows float64.
        num_values: The sample size n.
        log10_p_upper_bound: :math:`\log_{10}(2 e^{-2 n d^2})`, capped at 0: the Dvoretzky–Kiefer–Wolfowitz
            inequality with Massart's constant bounds the p-value from above by :math:`2 e^{-2 n d^2}`,
            so this stays informative where ``p_value`` underflows.
    """

    statistic: float
    p_value: float
    num_values: int
    log10_p_upper_bound: float

    @property
    def p_value_underflows(self) -> bool:
        """Whether the p-value is too small for float64 (scipy returned exactly 0)."""
        return self.p_value == 0.0

    def describe(self) -> str:
        """Return a one-line summary that states an underflowing p-value as a bound, not as 0."""
        if self.p_value_underflows:
            p_text = (f"p < {SMALLEST_POSITIVE_DOUBLE:.1e} (below the smallest positive double; "
                      f"DKW bound p <= 1e{self.log10_p_upper_bound:.0f})")
        else:
            p_text = f"p = {self.p_value:.3g}"
        return f"KS D = {self.statistic:.4g}, {p_text}, n = {self.num_values}"

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dictionary, with the text of :meth:`describe`."""
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "p_value_underflows": self.p_value_underflows,
            "log10_p_upper_bound": self.log10_p_upper_bound,
            "num_values": self.num_values,
            "text": self.describe(),
        }


def _dkw_log10_bound(statistic: float, num_values: int) -> float:
    return min(0.0, math.log10(2.0) - 2.0 * num_values * statistic**2 / math.log(10.0))


def ks_uniform(values: ArrayLike) -> KSResult:
    """Test whether values are a sample of U(0, 1) with ``scipy.stats.kstest``.

    Args:
        values: Latents in [0, 1], any shape; every element is one observation.

    Returns:
        The statistic, the p-value and the DKW upper bound of its logarithm.

    Raises:
        ValueError: If the values are empty or contain NaN.
    """
    flat = as_numpy(values).ravel()
    if flat.size == 0:
        raise ValueError("cannot test an empty array; expected at least one value")
    if np.isnan(flat).any():
        raise ValueError("values contain NaN; expected values in [0, 1]")
    result = scipy.stats.kstest(flat, "uniform")
    statistic = float(result.statistic)
    return KSResult(statistic, float(result.pvalue), int(flat.size), _dkw_log10_bound(statistic, flat.size))


def _check_lengths(array: np.ndarray, lengths: ArrayLike | None) -> np.ndarray | None:
    """Return lengths as int64 after checking them against padded audio latents (N, 1, T)."""
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    if array.ndim != 3 or lengths.shape != (array.shape[0],):
        raise ValueError(f"lengths of shape {lengths.shape} need padded audio latents (N, 1, T) with one length "
                         f"per clip; got latents of shape {array.shape}")
    if lengths.min() < 1 or lengths.max() > array.shape[-1]:
        raise ValueError(f"lengths lie in [{lengths.min()}, {lengths.max()}]; expected values in "
                         f"[1, {array.shape[-1]}]")
    return lengths.astype(np.int64)


def _valid(array: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Return the latents before each clip's end as one flat array (all latents without lengths)."""
    if lengths is None:
        return array.ravel()
    return np.concatenate([array[row, :, :length].ravel() for row, length in enumerate(lengths)])


def ks_per_channel(z: ArrayLike, lengths: ArrayLike | None = None) -> list[KSResult]:
    """Run :func:`ks_uniform` on each channel of latents of shape (N, C, ...); return C results.

    With ``lengths`` (padded audio latents (N, 1, T)), only the values before each clip's end count.
    """
    array = as_numpy(z)
    _check_latents(array, 2)
    lengths = _check_lengths(array, lengths)
    if lengths is not None:
        return [ks_uniform(_valid(array, lengths))]
    return [ks_uniform(array[:, channel]) for channel in range(array.shape[1])]


def ks_statistic_map(z: ArrayLike, lengths: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Compute the KS statistic against U(0, 1) separately at every dimension, across examples.

    At each dimension d the N values :math:`z_{1d}, \dots, z_{Nd}` are one sample, so a model that fits
    some positions (say the image border, or the first steps of a clip) better than others shows up as a
    pattern in the map.

    Args:
        z: Latents of shape (N, *data_shape), N >= 1.
        lengths: For padded audio latents (N, 1, T), the clip lengths (N,). The map then covers the
            steps that every clip has, t < min(lengths).

    Returns:
        The statistics :math:`D_N` and their p-values (``scipy.stats.kstwo``), each of shape data_shape,
        or (1, min(lengths)) with lengths.
    """
    array = as_numpy(z)
    _check_latents(array, 2)
    lengths = _check_lengths(array, lengths)
    if lengths is not None:
        array = array[:, :, : int(lengths.min())]
    num_examples = array.shape[0]

    # (N, *shape) -> (N, D): the vectorised two-sided statistic over the sorted sample of each column.
    ordered = np.sort(array.reshape(num_examples, -1), axis=0)
    ranks = np.arange(1, num_examples + 1, dtype=np.float64)[:, None]
    above = (ranks / num_examples - ordered).max(axis=0)
    below = (ordered - (ranks - 1) / num_examples).max(axis=0)
    statistic = np.maximum(above, below)
    p_value = scipy.stats.kstwo.sf(statistic, num_examples)
    return statistic.reshape(array.shape[1:]), np.asarray(p_value).reshape(array.shape[1:])


@dataclass(frozen=True)
class NeighbourCorrelation:
    r"""Pearson correlation between each latent and its neighbour in one direction.

    Under independence :math:`r \sqrt{n}` is approximately standard normal even though neighbouring
    pairs share values, because products of centred independent values are uncorrelated.

    Attributes:
        direction: "left" (previous column, or previous step of audio), "above" (previous row) or
            "previous_channel" (channel c - 1 at the same position).
        correlation: Pearson r over all pairs, or None when one side is constant.
        num_pairs: The number of pairs n.
        z_score: :math:`r \sqrt{n}`, or None with the correlation.
        p_value: Two-sided normal p-value of the z-score, or None with the correlation.
    """

    direction: str
    correlation: float | None
    num_pairs: int
    z_score: float | None
    p_value: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dictionary."""
        return {
            "direction": self.direction,
            "correlation": self.correlation,
            "num_pairs": self.num_pairs,
            "z_score": self.z_score,
            "p_value": self.p_value,
        }


def _pearson(first: np.ndarray, second: np.ndarray, direction: str) -> NeighbourCorrelation:
    first, second = first.ravel(), second.ravel()
    num_pairs = int(first.size)
    first = first - first.mean()
    second = second - second.mean()
    scale = math.sqrt(float(np.dot(first, first)) * float(np.dot(second, second)))
    if num_pairs < 2 or scale == 0.0:
        return NeighbourCorrelation(direction, None, num_pairs, None, None)
    correlation = float(np.dot(first, second)) / scale
    z_score = correlation * math.sqrt(num_pairs)
    p_value = float(2.0 * scipy.stats.norm.sf(abs(z_score)))
    return NeighbourCorrelation(direction, correlation, num_pairs, z_score, p_value)


def neighbour_correlations(z: ArrayLike, lengths: ArrayLike | None = None) -> dict[str, NeighbourCorrelation]:
    """Correlate each latent with its left neighbour, the one above it and the previous channel.

    Args:
        z: Latents of shape (N, C, H, W) or (N, 1, T).
        lengths: For padded audio latents (N, 1, T), the clip lengths (N,): "left" then pairs step t with
            step t - 1 for 1 <= t < lengths[i] only.

    Returns:
        A dict from direction to :class:`NeighbourCorrelation`. "above" needs images with H >= 2,
        "left" a width or length of at least 2 and "previous_channel" C >= 2; absent directions are
        left out.
    """
    array = as_numpy(z)
    _check_latents(array, 3)
    lengths = _check_lengths(array, lengths)
    if lengths is not None:
        if lengths.max() < 2:
            return {}
        current = np.concatenate([array[row, 0, 1:length] for row, length in enumerate(lengths)])
        previous = np.concatenate([array[row, 0, : length - 1] for row, length in enumerate(lengths)])
        return {"left": _pearson(current, previous, "left")}
    correlations = {}
    if array.shape[-1] >= 2:
        correlations["left"] = _pearson(array[..., 1:], array[..., :-1], "left")
    if array.ndim == 4 and array.shape[2] >= 2:
        correlations["above"] = _pearson(array[:, :, 1:, :], array[:, :, :-1, :], "above")
    if array.shape[1] >= 2:
        correlations["previous_channel"] = _pearson(array[:, 1:], array[:, :-1], "previous_channel")
    return correlations


def uniformity_summary(z: ArrayLike, *, lengths: ArrayLike | None = None,
                       num_histogram_bins: int = 50) -> dict[str, Any]:
    """Summarise how uniform and independent latents look, as a JSON-serialisable dictionary.

    Args:
        z: Latents of shape (N, C, H, W) or (N, 1, T).
        lengths: For padded audio latents (N, 1, T), the clip lengths (N,). Padding is left out of
            every statistic, and the KS map covers the steps that every clip has.
        num_histogram_bins: Bins of the marginal histogram on [0, 1].

    Returns:
        A dict with the shape, min, max and mean, the KS test over all values and per channel, a summary
        of the KS map (mean and max statistic, fraction of dimensions with p < 0.01 against the 1% a
        correct flow gives), the neighbour correlations, the histogram densities and a note that uniform
        marginals are necessary but not sufficient.
    """
    array = as_numpy(z)
    _check_latents(array, 3)
    lengths = _check_lengths(array, lengths)
    values = _valid(array, lengths)
    statistic_map, p_map = ks_statistic_map(array, lengths)
    densities, _ = np.histogram(values, bins=num_histogram_bins, range=(0.0, 1.0), density=True)
    summary = {
        "shape": list(array.shape),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "ks": ks_uniform(values).to_dict(),
        "ks_per_channel": [result.to_dict() for result in ks_per_channel(array, lengths)],
        "ks_map": {
            "mean_statistic": float(statistic_map.mean()),
            "max_statistic": float(statistic_map.max()),
            "fraction_p_below_0.01": float((p_map < 0.01).mean()),
            "num_examples_per_dimension": int(array.shape[0]),
        },
        "neighbour_correlations": {
            direction: result.to_dict() for direction, result in neighbour_correlations(array, lengths).items()
        },
        "histogram_density": [float(value) for value in densities],
        "note": NECESSARY_NOT_SUFFICIENT,
    }
    if lengths is not None:
        summary["lengths"] = {"min": int(lengths.min()), "max": int(lengths.max()), "total": int(lengths.sum())}
        summary["ks_map"]["num_steps"] = int(statistic_map.shape[-1])
    return summary
