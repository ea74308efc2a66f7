"""Elementwise flows that turn discrete conditionals over K bins into invertible maps of [0, 1]."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "OutOfDomainError",
    "split_dequantized",
    "cat_bin_edges",
    "cat_log_prob",
    "cat_bin_bounds",
    "cat_encode",
    "cat_decode",
    "cat_forward",
    "cat_inverse",
    "logistic_mixture_cdf",
    "dmol_component_log_prob",
    "dmol_log_prob",
    "dmol_bin_bounds",
    "dmol_encode",
    "dmol_decode",
    "dmol_forward",
    "dmol_inverse",
    "channel_conditionals",
    "multivariate_dmol_log_prob",
    "multivariate_dmol_encode",
    "multivariate_dmol_decode",
    "CatFlow",
    "DMOLFlow",
    "MultivariateDMOLFlow",
]


class OutOfDomainError(ValueError):
    """Raised when an input lies outside the domain of a transform (x outside [0, 1), z outside [0, 1])."""


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------


def split_dequantized(x: Tensor, num_bins: int) -> Tuple[Tensor, Tensor]:
    r"""Split a dequantized value into its bin and its position inside the bin.

    For :math:`x \in [0, 1)`, returns :math:`q = \lfloor K x \rfloor` and :math:`u = K x - q`, so that
    :math:`x = (q + u) / K`. When rounding puts :math:`K x` on :math:`K` for x just below 1, q is K - 1 and
    u is 1.

    Args:
        x: Values in [0, 1), any shape.
        num_bins: The number of bins K.

    Returns:
        q (long, shape of x) and u (dtype of x, shape of x).
    """
    scaled = x * num_bins
    q = scaled.floor().clamp(max=num_bins - 1)
    return q.long(), scaled - q


def _check_unit_interval(name: str, value: Tensor, *, closed: bool) -> None:
    """Raise OutOfDomainError unless every element lies in [0, 1] (closed) or [0, 1) (half-open)."""
    if not torch.is_floating_point(value):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if torch.isnan(value).any():
        raise OutOfDomainError(f"{name} contains NaN; expected values in [0, 1{']' if closed else ')'}")
    low, high = value.min().item(), value.max().item()
    upper_ok = high <= 1.0 if closed else high < 1.0
    if low < 0.0 or not upper_ok:
        interval = "[0, 1]" if closed else "[0, 1)"
        raise OutOfDomainError(f"{name} has values in [{low}, {high}]; expected values in {interval}")


def _map_into_bin(lower: Tensor, upper: Tensor, u: Tensor) -> Tensor:
    r"""Compute :math:`z = z_\mathrm{lower} + u (z_\mathrm{upper} - z_\mathrm{lower})`, kept inside the bin.

    Rounding can push :math:`z` onto :math:`z_\mathrm{upper}` when u is within an ulp of 1; the result is
    then moved down to the largest float below the upper edge, so that the inverse finds the same bin.
    A bin of zero width in floating point (an unreachable bin) maps to its lower edge.
    """
    z = lower + u * (upper - lower)
    below_upper = torch.nextafter(upper, torch.zeros_like(upper))
    z = torch.where((z >= upper) & (upper > lower), below_upper, z)
    return torch.maximum(z, lower)


def _position_in_bin(z: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    r"""Invert the linear piece: :math:`u = (z - z_\mathrm{lower}) / (z_\mathrm{upper} - z_\mathrm{lower})`.

    Bins of zero width in floating point give u = 0. The result is clamped to [0, 1) only against rounding:
    z itself always lies in [z_lower, z_upper) for the bin the search found, except z = 1 on the last bin.
    """
    width = upper - lower
    safe_width = torch.where(width > 0, width, torch.ones_like(width))
    u = torch.where(width > 0, (z - lower) / safe_width, torch.zeros_like(z))
    return u.clamp(0.0, 1.0)


def _log1mexp(d: Tensor) -> Tensor:
    r"""Compute :math:`\log(1 - e^{-d})` for :math:`d > 0` without cancellation (Mächler 2012)."""
    small = d < math.log(2.0)
    # Both branches are evaluated by torch.where, so feed each one an argument it handles finitely.
    d_small = torch.where(small, d, torch.ones_like(d))
    d_large = torch.where(small, torch.ones_like(d), d)
    return torch.where(small, torch.log(-torch.expm1(-d_small)), torch.log1p(-torch.exp(-d_large)))


# ---------------------------------------------------------------------------------------------------------
# CatFlow: categorical conditionals
# ---------------------------------------------------------------------------------------------------------


def cat_bin_edges(logits: Tensor) -> Tensor:
    r"""Compute the CatFlow bin edges :math:`z_k = \pi_1 + \dots + \pi_k` in the latent space.

    The first edge is exactly 0 and the last exactly 1; interior edges are cumulative sums of
    :math:`\pi = \operatorname{softmax}(\text{logits})`, clamped to at most 1 against rounding.

    Args:
        logits: Unnormalized log-probabilities, shape (..., K).

    Returns:
        Edges of shape (..., K + 1), non-decreasing along the last dimension.
    """
    probs = torch.softmax(logits, dim=-1)
    interior = torch.cumsum(probs, dim=-1)[..., :-1].clamp(max=1.0)
    zeros = torch.zeros_like(interior[..., :1])
    ones = torch.ones_like(interior[..., :1])
    return torch.cat([zeros, interior, ones], dim=-1)


def cat_log_prob(q: Tensor, logits: Tensor) -> Tensor:
    r"""Compute :math:`\log \pi_q` with :math:`\pi = \operatorname{softmax}(\text{logits})`.

    Args:
        q: Bins, long, shape (...).
        logits: Shape (..., K).

    Returns:
        Log-probabilities, shape (...).
    """
    return _CategoricalLogProb.apply(q, logits)


class _CategoricalLogProb(torch.autograd.Function):
    r"""Compute :math:`\log \pi_q` with one log-softmax pass and an in-place backward pass.

    ``log_softmax(logits, -1).gather(...)`` copies logits whose class dimension is not the innermost one
    (the strided view that :meth:`arflows.flows.AutoregressiveFlow.parameters_of` returns) and then builds
    two more tensors of the logits' size in the backward pass (a zero-filled scatter target and the
    softmax gradient). Here the log-softmax runs along the class dimension where it lies in memory, and the
    backward pass writes the gradient :math:`g (\mathbb{1}_{k = q} - \pi_k)` into one new tensor in
    place. For K = 256 these are the largest tensors of a PixelCNN training step.
    """

    @staticmethod
    def forward(ctx, q: Tensor, logits: Tensor) -> Tensor:  # type: ignore[override]
        dim = _class_dim_in_memory(logits)
        log_probs = torch.log_softmax(logits.movedim(-1, dim), dim=dim)  # classes at dim, in memory order
        index = q.unsqueeze(dim)
        ctx.dim = dim
        ctx.save_for_backward(index, log_probs)
        return log_probs.gather(dim, index).squeeze(dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple[None, Tensor]:  # type: ignore[override]
        index, log_probs = ctx.saved_tensors
        dim = ctx.dim
        grad = grad.unsqueeze(dim).to(log_probs.dtype)
        # -g * softmax, then +g at the observed bin.
        grad_logits = log_probs.exp().mul_(-grad).scatter_add_(dim, index, grad.expand(index.shape))
        return None, grad_logits.movedim(dim, -1)


def _class_dim_in_memory(logits: Tensor) -> int:
    """Return the position d at which ``logits.movedim(-1, d)`` has its dimensions in memory order.

    Memory order means non-increasing strides over the dimensions of size > 1. A softmax along d then reads
    rows of the underlying storage, with at most a cheap copy that closes gaps between slices (as in a
    channel slice of a network's output), instead of transposing the logits. The last position is the
    fallback when no position qualifies.
    """
    last = logits.dim() - 1
    for dim in range(last, -1, -1):
        moved = logits.movedim(-1, dim)
        strides = [stride for stride, size in zip(moved.stride(), moved.shape) if size > 1]
        if all(outer >= inner for outer, inner in zip(strides, strides[1:])):
            return dim
    return last


def _log_softmax_last(logits: Tensor) -> Tensor:
    """Compute ``log_softmax(logits, dim=-1)`` along the last dimension's place in memory; same shape."""
    dim = _class_dim_in_memory(logits)
    return torch.log_softmax(logits.movedim(-1, dim), dim=dim).movedim(dim, -1)


def cat_bin_bounds(q: Tensor, logits: Tensor) -> Tuple[Tensor, Tensor]:
    """Return the latent interval [z_lower, z_upper) of bin q; its width is the bin probability.

    Args:
        q: Bins, long, shape (...).
        logits: Shape (..., K).

    Returns:
        Lower and upper edges, each of shape (...).
    """
    edges = cat_bin_edges(logits)
    lower = edges.gather(-1, q.unsqueeze(-1)).squeeze(-1)
    upper = edges.gather(-1, (q + 1).unsqueeze(-1)).squeeze(-1)
    return lower, upper


def cat_encode(q: Tensor, u: Tensor, logits: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Map the dequantized point :math:`x = (q + u)/K` through the CatFlow.

    Inside bin q the map is linear: :math:`z = z_q + u \pi_q`, with slope :math:`K \pi_q` in x, so
    :math:`\log |dz/dx| = \log K + \log \pi_q`.

    Args:
        q: Bins, long, shape (...).
        u: Positions inside the bins, in [0, 1), shape (...).
        logits: Shape (..., K).

    Returns:
        z in [0, 1] and the log-det, each of shape (...).
    """
    num_bins = logits.shape[-1]
    lower, upper = cat_bin_bounds(q, logits)
    z = _map_into_bin(lower, upper, u)
    log_det = math.log(num_bins) + cat_log_prob(q, logits)
    return z, log_det


def cat_decode(z: Tensor, logits: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Invert the CatFlow: find the bin q with :math:`z_q \le z < z_{q+1}` and the position u inside it.

    Warning:
        A bin whose width :math:`\pi_q` rounds to zero at the magnitude of its edge (below about
        :math:`6 \cdot 10^{-8}` near z = 1 in float32, :math:`10^{-16}` in float64) is unreachable: no z
        decodes to it, and encoding it gives the next reachable bin's lower edge.

    Args:
        z: Latents in [0, 1], shape (...).
        logits: Shape (..., K).

    Returns:
        q (long) and u in [0, 1], each of shape (...).
    """
    edges = cat_bin_edges(logits)
    num_bins = logits.shape[-1]
    interior = edges[..., 1:num_bins].contiguous()
    # The number of interior edges at or below z is the bin index.
    q = torch.searchsorted(interior, z.unsqueeze(-1).contiguous(), right=True).squeeze(-1)
    q = q.clamp(max=num_bins - 1)
    lower = edges.gather(-1, q.unsqueeze(-1)).squeeze(-1)
    upper = edges.gather(-1, (q + 1).unsqueeze(-1)).squeeze(-1)
    return q, _position_in_bin(z, lower, upper)


def cat_forward(x: Tensor, logits: Tensor) -> Tuple[Tensor, Tensor]:
    """Map x in [0, 1) to (z, log|dz/dx|) through the CatFlow; shapes (...) and logits (..., K)."""
    q, u = split_dequantized(x, logits.shape[-1])
    return cat_encode(q, u, logits)


def cat_inverse(z: Tensor, logits: Tensor) -> Tensor:
    """Map z in [0, 1] back to x = (q + u)/K; shapes (...) and logits (..., K)."""
    q, u = cat_decode(z, logits)
    return (q.to(z.dtype) + u) / logits.shape[-1]


# ---------------------------------------------------------------------------------------------------------
# Univariate discretized mixture of logistics (DMOL)
# ---------------------------------------------------------------------------------------------------------
#
# Data in bin k has the value c_k = 2k/(K-1) - 1 in [-1, 1] (the PixelCNN++ convention), and bin k covers
# [c_k - 1/(K-1), c_k + 1/(K-1)] except that bin 0 extends to -inf and bin K-1 to +inf. The boundary between
# bins j-1 and j ("integer edge" j, for j = 1..K-1) sits at e_j = (2j - 1)/(K-1) - 1.


def _edge_position(j: Tensor, num_bins: int, dtype: torch.dtype) -> Tensor:
    """Position e_j = (2j - 1)/(K - 1) - 1 of integer edge j in the [-1, 1] data scale."""
    return (2.0 * j.to(dtype) - 1.0) / (num_bins - 1) - 1.0


def logistic_mixture_cdf(
    j: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, num_bins: int
) -> Tensor:
    r"""Evaluate the mixture CDF at integer edge j: the latent edge :math:`z_j` of the DMOL flow.

    :math:`z_j = \sum_m w_m \, \sigma((e_j - \mu_m) e^{-s_m})` with :math:`w = \operatorname{softmax}(\text{logits})`
    for :math:`1 \le j \le K-1`, and exactly 0 for j = 0 and 1 for j = K. The sum runs over components in a
    fixed order with elementwise operations only, so the value at one element does not depend on the
    shape of the batch it is computed in (a reduction kernel may change its summation order with the shape).

    Args:
        j: Integer edges in [0, K], long, shape (...).
        logits: Mixture logits, shape (..., M).
        means: Component means in the [-1, 1] data scale, shape (..., M).
        log_scales: Component log-scales, shape (..., M).
        num_bins: The number of bins K.

    Returns:
        Edges in [0, 1], shape (...).
    """
    weights = torch.softmax(logits, dim=-1)
    position = _edge_position(j, num_bins, means.dtype)
    cdf = torch.zeros_like(position)
    for m in range(logits.shape[-1]):
        arg = (position - means[..., m]) * torch.exp(-log_scales[..., m])
        cdf = cdf + weights[..., m] * torch.sigmoid(arg)
    cdf = cdf.clamp(0.0, 1.0)
    cdf = torch.where(j <= 0, torch.zeros_like(cdf), cdf)
    return torch.where(j >= num_bins, torch.ones_like(cdf), cdf)


def dmol_component_log_prob(q: Tensor, means: Tensor, log_scales: Tensor, num_bins: int) -> Tensor:
    r"""Compute each logistic component's log-probability of bin q, exactly and stably.

    With :math:`a = (e_{q+1} - \mu) e^{-s}` and :math:`b = (e_q - \mu) e^{-s}` the bin mass is
    :math:`\sigma(a) - \sigma(b) = \sigma(a)\,\sigma(-b)\,(1 - e^{-(a-b)})`, so

    .. math:: \log P = \log\sigma(a) + \log\sigma(-b) + \log(1 - e^{-d}), \quad d = \frac{2}{K-1} e^{-s}.

    Every term is computed without cancellation, for tiny scales and far-away means alike. Bin 0 keeps only
    :math:`\log\sigma(a)` and bin K-1 only :math:`\log\sigma(-b)` (open edges).

    Args:
        q: Bins, long, shape (...).
        means: Shape (..., M).
        log_scales: Shape (..., M).
        num_bins: The number of bins K.

    Returns:
        Log-probabilities, shape (..., M).
    """
    dtype = means.dtype
    q = q.unsqueeze(-1)
    inverse_scales = torch.exp(-log_scales)
    upper = (_edge_position(q + 1, num_bins, dtype) - means) * inverse_scales
    lower = (_edge_position(q, num_bins, dtype) - means) * inverse_scales
    gap = (2.0 / (num_bins - 1)) * inverse_scales

    is_first = q == 0
    is_last = q == num_bins - 1
    log_upper = torch.where(is_last, torch.zeros_like(upper), F.logsigmoid(upper))
    log_lower = torch.where(is_first, torch.zeros_like(lower), F.logsigmoid(-lower))
    log_gap = torch.where(is_first | is_last, torch.zeros_like(gap), _log1mexp(gap))
    return log_upper + log_lower + log_gap


def dmol_log_prob(q: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, num_bins: int) -> Tensor:
    r"""Compute the discretized logistic mixture log-probability :math:`\log \sum_m w_m P_m(q)`.

    Args:
        q: Bins, long, shape (...).
        logits: Mixture logits, shape (..., M).
        means: Shape (..., M).
        log_scales: Shape (..., M).
        num_bins: The number of bins K.

    Returns:
        Log-probabilities, shape (...).
    """
    component = dmol_component_log_prob(q, means, log_scales, num_bins)
    return torch.logsumexp(torch.log_softmax(logits, dim=-1) + component, dim=-1)


def dmol_bin_bounds(
    q: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, num_bins: int
) -> Tuple[Tensor, Tensor]:
    """Return the latent interval [z_lower, z_upper) of bin q under the mixture CDF; shapes as in dmol_log_prob."""
    lower = logistic_mixture_cdf(q, logits, means, log_scales, num_bins)
    upper = logistic_mixture_cdf(q + 1, logits, means, log_scales, num_bins)
    return lower, upper


def dmol_encode(
    q: Tensor, u: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, num_bins: int
) -> Tuple[Tensor, Tensor]:
    r"""Map :math:`x = (q + u)/K` through the DMOL flow, evaluating the mixture CDF at two edges only.

    :math:`z = z_q + u (z_{q+1} - z_q)`; the log-det is :math:`\log K + \log P(q)`, computed in log space
    (the edge difference would underflow for bins of tiny mass). Costs O(M) per element.

    Args:
        q: Bins, long, shape (...).
        u: Positions inside the bins in [0, 1), shape (...).
        logits, means, log_scales: Mixture parameters, each of shape (..., M).
        num_bins: The number of bins K.

    Returns:
        z in [0, 1] and the log-det, each of shape (...).
    """
    lower, upper = dmol_bin_bounds(q, logits, means, log_scales, num_bins)
    z = _map_into_bin(lower, upper, u)
    log_det = math.log(num_bins) + dmol_log_prob(q, logits, means, log_scales, num_bins)
    return z, log_det


def dmol_decode(
    z: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, num_bins: int
) -> Tuple[Tensor, Tensor]:
    r"""Invert the DMOL flow exactly: binary search over the K integer edges, then the linear piece.

    The search keeps :math:`z_\mathrm{lo} \le z < z_\mathrm{hi}` over integer edges and halves
    [lo, hi) :math:`\lceil \log_2 K \rceil` times, each step one O(M) CDF evaluation. It compares z
    against the same floating-point edges that :func:`dmol_encode` uses, so there is no tolerance.

    Warning:
        As for the CatFlow, a bin whose mass rounds to zero at the magnitude of its edge is unreachable.

    Args:
        z: Latents in [0, 1], shape (...).
        logits, means, log_scales: Mixture parameters, each of shape (..., M).
        num_bins: The number of bins K.

    Returns:
        q (long) and u in [0, 1], each of shape (...).
    """
    low = torch.zeros(z.shape, dtype=torch.long, device=z.device)
    high = torch.full(z.shape, num_bins, dtype=torch.long, device=z.device)
    for _ in range(math.ceil(math.log2(num_bins))):
        middle = (low + high) // 2
        edge = logistic_mixture_cdf(middle, logits, means, log_scales, num_bins)
        at_or_below = edge <= z
        low = torch.where(at_or_below, middle, low)
        high = torch.where(at_or_below, high, middle)
    q = low
    lower, upper = dmol_bin_bounds(q, logits, means, log_scales, num_bins)
    return q, _position_in_bin(z, lower, upper)


def dmol_forward(
    x: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, num_bins: int
) -> Tuple[Tensor, Tensor]:
    """Map x in [0, 1) to (z, log|dz/dx|) through the DMOL flow; shapes as in :func:`dmol_encode`."""
    q, u = split_dequantized(x, num_bins)
    return dmol_encode(q, u, logits, means, log_scales, num_bins)


def dmol_inverse(z: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, num_bins: int) -> Tensor:
    """Map z in [0, 1] back to x = (q + u)/K; shapes as in :func:`dmol_decode`."""
    q, u = dmol_decode(z, logits, means, log_scales, num_bins)
    return (q.to(z.dtype) + u) / num_bins


# ---------------------------------------------------------------------------------------------------------
# Multivariate (channel-autoregressive) DMOL
# ---------------------------------------------------------------------------------------------------------


def _coefficient_index(channel: int, earlier: int) -> int:
    """Index of the coefficient pair (channel, earlier) in the order (1,0), (2,0), (2,1), (3,0), ..."""
    return channel * (channel - 1) // 2 + earlier


def channel_conditionals(
    q: Tensor,
    channel: int,
    logits: Tensor,
    means: Tensor,
    log_scales: Tensor,
    coefficients: Tensor,
    num_bins: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Compute the univariate mixture of channel c given the quantized earlier channels of the same pixel.

    The means shift linearly with the earlier channels' values :math:`x_{c'} = 2 q_{c'}/(K-1) - 1`:
    :math:`\mu_{c,m} + \sum_{c' < c} \alpha_{c,c',m} x_{c'}`, with :math:`\alpha` already bounded (tanh) by
    the caller. The mixture weights become the component posterior given the earlier channels' bins:
    :math:`\log w^{(c)}_m = \log w_m + \sum_{c'<c} \log P_m(q_{c'})` up to normalization. Then
    :math:`\prod_c \sum_m w^{(c)}_m P_m(q_c) = \sum_m w_m \prod_c P_m(q_c)`, the PixelCNN++ pixel probability.

    Args:
        q: Bins of the pixel's channels, long, shape (B, C, ...); only channels < c are read.
        channel: The channel c.
        logits: Mixture logits, shape (B, ..., M).
        means: Shape (B, C, ..., M).
        log_scales: Shape (B, C, ..., M).
        coefficients: Bounded coefficients, shape (B, C(C-1)/2, ..., M).
        num_bins: The number of bins K.

    Returns:
        Logits, means and log-scales of channel c, each of shape (B, ..., M).
    """
    channel_logits = torch.log_softmax(logits, dim=-1)
    channel_means = means[:, channel]
    for earlier in range(channel):
        value = (2.0 * q[:, earlier].to(means.dtype) / (num_bins - 1) - 1.0).unsqueeze(-1)
        channel_means = channel_means + coefficients[:, _coefficient_index(channel, earlier)] * value

        # The earlier channel's own conditional mean, which depends on the channels before it.
        earlier_means = means[:, earlier]
        for before in range(earlier):
            before_value = (2.0 * q[:, before].to(means.dtype) / (num_bins - 1) - 1.0).unsqueeze(-1)
            earlier_means = earlier_means + coefficients[:, _coefficient_index(earlier, before)] * before_value
        channel_logits = channel_logits + dmol_component_log_prob(
            q[:, earlier], earlier_means, log_scales[:, earlier], num_bins
        )
    return channel_logits, channel_means, log_scales[:, channel]


def multivariate_dmol_log_prob(
    q: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, coefficients: Tensor, num_bins: int
) -> Tensor:
    """Compute the per-channel conditional log-probabilities log P(q_c | q_<c) of each pixel.

    Args:
        q: Bins, long, shape (B, C, ...).
        logits: Shape (B, ..., M); means, log_scales: shape (B, C, ..., M); coefficients:
            shape (B, C(C-1)/2, ..., M).
        num_bins: The number of bins K.

    Returns:
        Log-probabilities, shape (B, C, ...); their sum over C is the pixel's mixture log-probability.
    """
    # All channels at once. With A_c = log w + sum_{c' < c} log P_m(q_c') (the unnormalized logits of
    # channel_conditionals) and L_c = logsumexp_m A_c, channel c's conditional is
    # logsumexp_m(A_c - L_c + log P_m(q_c)) = L_{c+1} - L_c, and L_0 = 0 because w is normalized.
    component = dmol_component_log_prob(q, _conditional_means(q, means, coefficients, num_bins), log_scales,
                                        num_bins)  # (B, C, ..., M)
    prefix = _log_softmax_last(logits).unsqueeze(1) + torch.cumsum(component, dim=1)  # A_{c+1}
    log_normalizers = torch.logsumexp(prefix, dim=-1)  # (B, C, ...): L_1 .. L_C
    previous = F.pad(log_normalizers[:, :-1], [0] * (2 * (q.dim() - 2)) + [1, 0])  # L_0 .. L_{C-1}
    return log_normalizers - previous


def _conditional_means(q: Tensor, means: Tensor, coefficients: Tensor, num_bins: int) -> Tensor:
    r"""Shift every channel's means by its earlier channels: :math:`\mu_{c,m} + \sum_{c'<c} \alpha_{c,c',m} x_{c'}`.

    The same sums as :func:`channel_conditionals`, added in the same order, for all channels in one call.

    Args:
        q: Bins, long, shape (B, C, ...).
        means: Shape (B, C, ..., M).
        coefficients: Bounded coefficients, shape (B, C(C-1)/2, ..., M).
        num_bins: The number of bins K.

    Returns:
        Conditional means, shape (B, C, ..., M).
    """
    channels = q.shape[1]
    if channels == 1:
        return means
    # Pair p couples channel rows[p] to the earlier channel columns[p], in the order (1,0), (2,0), (2,1), ...
    rows, columns = torch.tril_indices(channels, channels, offset=-1, device=q.device)
    values = (2.0 * q.to(means.dtype) / (num_bins - 1) - 1.0).unsqueeze(-1)  # (B, C, ..., 1)
    return means.index_add(1, rows, coefficients * values[:, columns])


def multivariate_dmol_encode(
    q: Tensor,
    u: Tensor,
    logits: Tensor,
    means: Tensor,
    log_scales: Tensor,
    coefficients: Tensor,
    num_bins: int,
) -> Tuple[Tensor, Tensor]:
    """Map x = (q + u)/K through the channel-autoregressive DMOL flow, all channels in parallel.

    Args:
        q: Bins, long, shape (B, C, ...); u: positions inside the bins, same shape.
        logits, means, log_scales, coefficients: As in :func:`multivariate_dmol_log_prob`.
        num_bins: The number of bins K.

    Returns:
        z in [0, 1] and the per-channel log-det, each of shape (B, C, ...).
    """
    latents, log_dets = [], []
    for channel in range(q.shape[1]):
        params = channel_conditionals(q, channel, logits, means, log_scales, coefficients, num_bins)
        z, log_det = dmol_encode(q[:, channel], u[:, channel], *params, num_bins)
        latents.append(z)
        log_dets.append(log_det)
    return torch.stack(latents, dim=1), torch.stack(log_dets, dim=1)


def multivariate_dmol_decode(
    z: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, coefficients: Tensor, num_bins: int
) -> Tuple[Tensor, Tensor]:
    """Invert the channel-autoregressive DMOL flow, one channel after another inside each pixel.

    Channel c is decoded with the conditionals given the already decoded bins of channels < c, exactly the
    quantities :func:`multivariate_dmol_encode` conditions on, so no network pass is needed per channel.

    Args:
        z: Latents in [0, 1], shape (B, C, ...).
        logits, means, log_scales, coefficients: As in :func:`multivariate_dmol_log_prob`.
        num_bins: The number of bins K.

    Returns:
        q (long) and u, each of shape (B, C, ...).
    """
    q = torch.zeros(z.shape, dtype=torch.long, device=z.device)
    u = torch.zeros_like(z)
    for channel in range(z.shape[1]):
        params = channel_conditionals(q, channel, logits, means, log_scales, coefficients, num_bins)
        q[:, channel], u[:, channel] = dmol_decode(z[:, channel], *params, num_bins)
    return q, u


# ---------------------------------------------------------------------------------------------------------
# Module wrappers
# ---------------------------------------------------------------------------------------------------------


class CatFlow(nn.Module):
    r"""CatFlow over K bins: the piecewise-linear map whose k-th piece has slope :math:`K \pi_k`.

    Parameters are a one-element tuple (logits,) with logits of shape (..., K). Data and latents have
    shape (...).

    Reference:
        Nielsen & Winther, "Closing the Dequantization Gap: PixelCNN as a Single-Layer Flow", NeurIPS 2020.
    """

    def __init__(self, num_bins: int):
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}")
        self.num_bins = num_bins

    def forward(self, x: Tensor, params: Tuple[Tensor]) -> Tuple[Tensor, Tensor]:
        """Map x in [0, 1) to (z, log|dz/dx|)."""
        _check_unit_interval("x", x, closed=False)
        return cat_forward(x, *params)

    def inverse(self, z: Tensor, params: Tuple[Tensor]) -> Tensor:
        """Map z in [0, 1] to x in [0, 1)."""
        _check_unit_interval("z", z, closed=True)
        return cat_inverse(z, *params)

    def bin_bounds(self, q: Tensor, params: Tuple[Tensor]) -> Tuple[Tensor, Tensor]:
        """Return the latent interval of bin q."""
        return cat_bin_bounds(q, *params)

    def log_prob(self, q: Tensor, params: Tuple[Tensor]) -> Tensor:
        """Return log P(q) per element."""
        return cat_log_prob(q, *params)

    def encode(self, q: Tensor, u: Tensor, params: Tuple[Tensor]) -> Tuple[Tensor, Tensor]:
        """Map (q, u) to (z, log-det) per element."""
        return cat_encode(q, u, *params)

    def decode(self, z: Tensor, params: Tuple[Tensor]) -> Tuple[Tensor, Tensor]:
        """Map z to (q, u) per element."""
        return cat_decode(z, *params)


class DMOLFlow(nn.Module):
    r"""Univariate discretized-mixture-of-logistics flow over K bins with M components.

    The latent bin edges are the mixture CDF at the integer edges, as in the PixelCNN++ likelihood
    (Salimans et al., 2017), with open first and last bins. Parameters are a tuple
    (logits, means, log_scales), each of shape (..., M); data and latents have shape (...).
    """

    def __init__(self, num_bins: int):
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}")
        self.num_bins = num_bins

    def forward(self, x: Tensor, params: Tuple[Tensor, Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        """Map x in [0, 1) to (z, log|dz/dx|)."""
        _check_unit_interval("x", x, closed=False)
        return dmol_forward(x, *params, self.num_bins)

    def inverse(self, z: Tensor, params: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Map z in [0, 1] to x in [0, 1)."""
        _check_unit_interval("z", z, closed=True)
        return dmol_inverse(z, *params, self.num_bins)

    def bin_bounds(self, q: Tensor, params: Tuple[Tensor, Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        """Return the latent interval of bin q."""
        return dmol_bin_bounds(q, *params, self.num_bins)

    def log_prob(self, q: Tensor, params: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Return log P(q) per element."""
        return dmol_log_prob(q, *params, self.num_bins)

    def encode(self, q: Tensor, u: Tensor, params: Tuple[Tensor, Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        """Map (q, u) to (z, log-det) per element."""
        return dmol_encode(q, u, *params, self.num_bins)

    def decode(self, z: Tensor, params: Tuple[Tensor, Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        """Map z to (q, u) per element."""
        return dmol_decode(z, *params, self.num_bins)


class MultivariateDMOLFlow(nn.Module):
    r"""Channel-autoregressive DMOL flow for C channels, as PixelCNN++ parameterizes RGB pixels.

    Parameters are a tuple (logits, means, log_scales, coefficients) of shapes (B, ..., M),
    (B, C, ..., M), (B, C, ..., M) and (B, C(C-1)/2, ..., M); data and latents have shape (B, C, ...).
    The forward map and the log-det are per channel; their sum over channels is the pixel's.
    """

    def __init__(self, num_bins: int):
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}")
        self.num_bins = num_bins

    def forward(self, x: Tensor, params: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
        """Map x in [0, 1) to (z, log|dz/dx|), the Jacobian being triangular across channels."""
        _check_unit_interval("x", x, closed=False)
        q, u = split_dequantized(x, self.num_bins)
        return multivariate_dmol_encode(q, u, *params, self.num_bins)

    def inverse(self, z: Tensor, params: Tuple[Tensor, ...]) -> Tensor:
        """Map z in [0, 1] to x in [0, 1)."""
        _check_unit_interval("z", z, closed=True)
        q, u = multivariate_dmol_decode(z, *params, self.num_bins)
        return (q.to(z.dtype) + u) / self.num_bins

    def bin_bounds(self, q: Tensor, params: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
        """Return the latent interval of each channel's bin given the earlier channels."""
        lowers, uppers = [], []
        for channel in range(q.shape[1]):
            conditionals = channel_conditionals(q, channel, *params, self.num_bins)
            lower, upper = dmol_bin_bounds(q[:, channel], *conditionals, self.num_bins)
            lowers.append(lower)
            uppers.append(upper)
        return torch.stack(lowers, dim=1), torch.stack(uppers, dim=1)

    def log_prob(self, q: Tensor, params: Tuple[Tensor, ...]) -> Tensor:
        """Return log P(q_c | q_<c) per channel element."""
        return multivariate_dmol_log_prob(q, *params, self.num_bins)

    def encode(self, q: Tensor, u: Tensor, params: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
        """Map (q, u) to (z, log-det) per channel element."""
        return multivariate_dmol_encode(q, u, *params, self.num_bins)

    def decode(self, z: Tensor, params: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
        """Map z to (q, u), channel after channel."""
        return multivariate_dmol_decode(z, *params, self.num_bins)
