"""Interpolation between two examples in latent space: Gaussian norm-preserving or linear in z."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from arflows.latent.encoding import Noise, decode_latents, encode_data
from arflows.latent.figures import interpolation_figure

__all__ = ["INTERPOLATION_MODES", "Z_CLAMP", "Interpolation", "interpolate", "interpolate_latents",
           "interpolation_weights"]

logger = logging.getLogger(__name__)

INTERPOLATION_MODES = ("gaussian", "linear")

# Latents are clamped to [Z_CLAMP, 1 - Z_CLAMP] before the inverse normal CDF, in float64. Both bounds are
# exact doubles, because doubles below 1 are spaced 2**-53 apart. The inverse CDF then stays finite (about
# ±8.1) and the mixed value within sqrt(2) times that. The normal CDF of any finite double lies in [0, 1].
Z_CLAMP = float(torch.finfo(torch.float64).eps)


def interpolation_weights(num_steps: int) -> np.ndarray:
    """Return the weights w_s = 1 - s/(S - 1), s = 0, ..., S - 1, of the first example (float64, (S,))."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer of at least 2 (both endpoints), got {num_steps!r}")
    return 1.0 - np.arange(num_steps, dtype=np.float64) / (num_steps - 1)


def interpolate_latents(z0: Tensor, z1: Tensor, num_steps: int, *, mode: str = "gaussian") -> Tensor:
    r"""Interpolate between latents with the weights of :func:`interpolation_weights`.

    ``mode="gaussian"`` maps both latents to standard normal variables :math:`y = \Phi^{-1}(z)`, mixes
    them with norm-preserving weights

    .. math:: y(w) = \frac{w y_0 + (1 - w) y_1}{\sqrt{w^2 + (1 - w)^2}},

    which keeps y(w) standard normal when y0 and y1 are independent standard normals, and maps back with
    :math:`z(w) = \Phi(y(w))`. ``mode="linear"`` mixes z directly, :math:`z(w) = w z_0 + (1 - w) z_1`.

    The arithmetic runs in float64. Before :math:`\Phi^{-1}`, z is clamped to [eps, 1 - eps] with eps =
    ``Z_CLAMP`` = ``torch.finfo(torch.float64).eps`` (2.2e-16), so that z = 0 or 1 gives no ±inf or NaN.
    The endpoints (w = 1 and w = 0) are the input tensors themselves, not :math:`\Phi(\Phi^{-1}(z))`, so
    they decode to exactly the encoded examples.

    Args:
        z0: Latents in [0, 1] of the first examples, shape (P, *data_shape).
        z1: Latents of the second examples, same shape and dtype.
        num_steps: Number of points S >= 2, endpoints included.
        mode: "gaussian" or "linear".

    Returns:
        Latents in [0, 1] of shape (P, S, *data_shape) in the dtype of z0; [:, 0] is z0, [:, -1] is z1.
    """
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"mode must be one of {INTERPOLATION_MODES}, got {mode!r}")
    if z0.shape != z1.shape or z0.dtype != z1.dtype:
        raise ValueError(f"z0 {tuple(z0.shape)} {z0.dtype} and z1 {tuple(z1.shape)} {z1.dtype} must have the "
                         "same shape and dtype")
    if not z0.is_floating_point():
        raise ValueError(f"latents must be floating-point, got dtype {z0.dtype}")
    for name, value in (("z0", z0), ("z1", z1)):
        if torch.isnan(value).any() or value.min() < 0 or value.max() > 1:
            raise ValueError(f"{name} has values outside [0, 1] or NaN; expected latents in [0, 1]")

    weights = torch.as_tensor(interpolation_weights(num_steps), dtype=torch.float64, device=z0.device)
    # (S,) -> (1, S, 1, ..., 1) so that it broadcasts against (P, 1, *data_shape).
    weights = weights.view(1, num_steps, *([1] * (z0.dim() - 1)))
    first = z0.to(torch.float64).unsqueeze(1)
    second = z1.to(torch.float64).unsqueeze(1)

    if mode == "gaussian":
        y0 = torch.special.ndtri(first.clamp(Z_CLAMP, 1.0 - Z_CLAMP))
        y1 = torch.special.ndtri(second.clamp(Z_CLAMP, 1.0 - Z_CLAMP))
        mixed = (weights * y0 + (1.0 - weights) * y1) / torch.sqrt(weights**2 + (1.0 - weights) ** 2)
        path = torch.special.ndtr(mixed)
    else:
        # A convex combination can round one ulp above 1.
        path = (weights * first + (1.0 - weights) * second).clamp(0.0, 1.0)

    # Rounding a double in [0, 1] to float32 stays in [0, 1].
    path = path.to(z0.dtype)
    path[:, 0] = z0
    path[:, -1] = z1
    return path


@dataclass
class Interpolation:
    """Decoded interpolations between pairs of examples.

    Attributes:
        data: Decoded data, int64, shape (P, S, *data_shape) (audio (P, S, 1, T)); [:, 0] and [:, -1] are
            the two examples.
        latents: The interpolated latents, shape (P, S, *data_shape).
        weights: Weight w of the first example at each step, float64, shape (S,).
        mode: "gaussian" or "linear".
        endpoints_exact: Whether the decoded endpoints equal the input examples.
        num_bins: K of the data.
    """

    data: np.ndarray
    latents: np.ndarray
    weights: np.ndarray
    mode: str
    endpoints_exact: bool
    num_bins: int

    def figure(self, **options: Any) -> Figure:
        """Return the decoded grid: :func:`~arflows.latent.figures.interpolation_figure` for images,
        :func:`~arflows.latent.audio_figures.audio_interpolation_figure` (which takes ``quantization``
        and ``sample_rate``) for audio of shape (P, S, 1, T)."""
        if self.data.ndim == 4:
            from arflows.latent.audio_figures import audio_interpolation_figure

            return audio_interpolation_figure(self.data, self.num_bins, self.weights, mode=self.mode, **options)
        return interpolation_figure(self.data, self.num_bins, self.weights, mode=self.mode, **options)


def interpolate(
    flow: torch.nn.Module,
    q0: Tensor,
    q1: Tensor,
    num_steps: int,
    *,
    mode: str = "gaussian",
    noise: Noise = "uniform",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    naive: bool | None = None,
) -> Interpolation:
    """Encode pairs of examples, interpolate their latents and decode every step.

    Args:
        flow: An :class:`~arflows.AutoregressiveFlow`.
        q0: First examples, integers in [0, K), shape (P, *data_shape).
        q1: Second examples, same shape.
        num_steps: Points per pair S >= 2, endpoints included.
        mode: "gaussian" (norm-preserving mix of normal variables) or "linear" (mix of z).
        noise: Dequantization noise of the encoding, as for :func:`~arflows.latent.encoding.encode_data`.
        generator: CPU random generator of uniform noise.
        batch_size: Examples per decoding loop.
        naive: Passed on to :func:`~arflows.latent.encoding.decode_latents`.

    Returns:
        The decoded grid, its latents and weights.
    """
    if q0.shape != q1.shape:
        raise ValueError(f"q0 has shape {tuple(q0.shape)} but q1 has {tuple(q1.shape)}; expected equal shapes")
    z, _ = encode_data(flow, torch.cat([q0, q1]), noise=noise, generator=generator, batch_size=batch_size)
    num_pairs = q0.shape[0]
    path = interpolate_latents(z[:num_pairs], z[num_pairs:], num_steps, mode=mode)

    # (P, S, *data_shape) -> (P * S, *data_shape) for decoding, and back.
    flat = path.reshape(num_pairs * num_steps, *path.shape[2:])
    decoded = decode_latents(flow, flat, batch_size=batch_size, naive=naive).reshape(path.shape)
    endpoints_exact = bool(torch.equal(decoded[:, 0], q0.cpu().long()) and
                           torch.equal(decoded[:, -1], q1.cpu().long()))
    if not endpoints_exact:
        logger.warning("interpolation endpoints do not decode to the encoded examples; the flow's decode "
                       "is not the exact inverse of its encode for these inputs")
    return Interpolation(
        data=decoded.numpy(),
        latents=path.numpy(),
        weights=interpolation_weights(num_steps),
        mode=mode,
        endpoints_exact=endpoints_exact,
        num_bins=int(flow.num_bins),
    )
