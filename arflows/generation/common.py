"""Cached decoding shared by every network: the verify-and-repair loop and per-step transform inversions."""

from __future__ import annotations

import itertools
import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from arflows.flows import LOG_SCALE_MIN

if TYPE_CHECKING:
    from arflows.flows import AutoregressiveFlow

__all__ = [
    "MAX_REPAIRS",
    "MixtureStepDecoder",
    "StepDecoder",
    "concat_elu_into",
    "decode_categorical_step",
    "first_mismatch",
    "product_weight",
    "reference_decode",
]

logger = logging.getLogger(__name__)

# Each repair resumes the cached decoder after the first step where it differs from the reference
# decision. A difference needs z within rounding distance of a bin edge, so random latents rarely need a
# repair (benchmarks/RESULTS_generation.md counts them). Latents placed on bin edges on purpose (encoding
# with u = 0) can need one per step, so after this many repairs the naive loop finishes the decode.
MAX_REPAIRS = 8


class StepDecoder:
    """Base class of the cached decoders: one object per (flow, batch, shape), reusable across runs.

    A decoder runs the sequential steps of :meth:`AutoregressiveFlow.decode` in the same order (raster
    order, then channel order for categorical outputs), but computes each feature of the network once,
    at the step at which it becomes final, from cached features.

    Subclasses set ``num_steps`` and implement :meth:`run` and :meth:`cache_numel`.
    """

    num_steps: int

    def run(self, z: Tensor, q: Tensor, start: int) -> None:
        """Decode steps ``start .. num_steps - 1`` of latents z into q, in place.

        A run with ``start > 0`` resumes a previous run of this decoder on the same z whose decisions
        before ``start`` were the same: it reuses the caches that run computed for those steps.

        Args:
            z: Latents, shape (B, *data_shape), in the network's dtype.
            q: Bins, long, shape of z. Steps before ``start`` hold the decisions to condition on.
            start: The first step to decode.
        """
        raise NotImplementedError

    def cache_numel(self) -> int:
        """Count the elements of every preallocated cache (a fixed number for a given batch and shape)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# Reference decisions and the verify-and-repair loop
# ---------------------------------------------------------------------------------------------------------


def reference_decode(flow: AutoregressiveFlow, z: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Compute the naive loop's decision at every step, given the decisions q of all earlier steps.

    One parallel network pass on q gives the parameters of every step. Because the network is causal, the
    parameters of step t read only the steps before t, so they equal those of the naive loop's pass at
    step t whenever q agrees with the naive loop before t. The pass and the inverse transform run on the
    same shapes as in the naive loop, so on CPU they are bit-identical to it (see
    :meth:`AutoregressiveFlow.decode` for the assumption behind this).

    Args:
        flow: The flow.
        z: Latents, shape (B, *data_shape).
        q: Candidate bins, long, shape of z.

    Returns:
        The decisions (q, u) of the inverse transform at every step, each of the shape of z.
    """
    params = flow.parameters_of(q)
    return flow.transform.decode(z.to(params[0].dtype), params)


def first_mismatch(flow: AutoregressiveFlow, q: Tensor, q_reference: Tensor) -> int | None:
    """Return the first decoding step, over the whole batch, at which q differs from q_reference, or None."""
    differs = q != q_reference  # (B, C, *S)
    if flow.output == "categorical":
        # Steps run over positions in raster order, then channels: (B, C, *S) -> (B, *S, C) -> (B, steps).
        per_step = differs.movedim(1, -1).reshape(differs.shape[0], -1)
    else:
        # One step decodes every channel of a position: (B, C, *S) -> (B, *S) -> (B, steps).
        per_step = differs.any(dim=1).reshape(differs.shape[0], -1)
    wrong = per_step.any(dim=0).nonzero()
    return int(wrong[0].item()) if len(wrong) > 0 else None


def _step_index(flow: AutoregressiveFlow, shape: tuple[int, ...], step: int) -> tuple:
    return next(itertools.islice(flow._decode_steps(shape), step, None))


def _finish_naively(flow: AutoregressiveFlow, z: Tensor, q: Tensor, u: Tensor, start: int) -> None:
    """Run the naive loop of :meth:`AutoregressiveFlow.decode` from step ``start`` on, in place."""
    shape = tuple(z.shape)
    remaining = list(itertools.islice(flow._decode_steps(shape), start, None))
    # The naive loop's canvas is zero at the steps it has not decoded yet.
    for index in remaining:
        q[index] = 0
    for index in remaining:
        params = flow.parameters_of(q)
        step_q, step_u = flow.transform.decode(z.to(params[0].dtype), params)
        q[index] = step_q[index]
        u[index] = step_u[index].to(u.dtype)


@torch.no_grad()
def cached_decode(
    flow: AutoregressiveFlow, z: Tensor, decoder: StepDecoder, stats: dict[str, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Decode z with a cached decoder, then verify every step against the naive loop's decision.

    The decoder proposes all steps. One reference pass (:func:`reference_decode`) then gives the naive
    decision at each step given the proposal's earlier steps. Where they first differ, the reference
    decision replaces the proposal and the decoder resumes from the next step, reusing its caches for
    the steps before. After :data:`MAX_REPAIRS` repairs the naive loop decodes the remaining steps.

    Args:
        flow: The flow, in eval mode.
        z: Validated latents, shape (B, *data_shape), in the network's dtype.
        decoder: A decoder built for this flow, batch and shape.
        stats: If given, receives "repairs" (number of repaired steps), "reference_passes" (parallel
            verification passes) and "naive_steps" (steps left to the naive loop).

    Returns:
        q (long) and u, equal to those of the naive loop, each of the shape of z.
    """
    q = torch.zeros(z.shape, dtype=torch.long, device=z.device)
    start = 0
    counts = {"repairs": 0, "reference_passes": 0, "naive_steps": 0}
    if stats is not None:
        stats.update(counts)
        counts = stats
    while True:
        decoder.run(z, q, start)
        q_reference, u_reference = reference_decode(flow, z, q)
        counts["reference_passes"] += 1
        step = first_mismatch(flow, q, q_reference)
        if step is None:
            return q, u_reference.to(z.dtype)

        index = _step_index(flow, tuple(z.shape), step)
        q[index] = q_reference[index]
        start = step + 1
        counts["repairs"] += 1
        logger.debug(
            "cached decoding differs from the reference at step %d (repair %d)", step, counts["repairs"]
        )
        if counts["repairs"] == MAX_REPAIRS:
            break

    counts["naive_steps"] = decoder.num_steps - start
    logger.info(
        "cached decoding differed from the reference pass %d times, which suggests latents on bin edges, "
        "so the naive loop decodes steps %d to %d",
        counts["repairs"],
        start,
        decoder.num_steps - 1,
    )
    u = u_reference.to(z.dtype)
    _finish_naively(flow, z, q, u, start)
    return q, u


# ---------------------------------------------------------------------------------------------------------
# Per-step inverse transforms
# ---------------------------------------------------------------------------------------------------------


def decode_categorical_step(z: Tensor, logits: Tensor) -> Tensor:
    """Find the CatFlow bin of z for one step: the number of interior edges at or below z.

    Args:
        z: Latents, shape (B, 1), contiguous.
        logits: Shape (B, K).

    Returns:
        Bins, long, shape (B, 1).
    """
    interior = torch.cumsum(torch.softmax(logits, dim=1)[:, :-1], dim=1)  # (B, K - 1)
    return torch.searchsorted(interior, z, right=True)


def _coefficient_index(channel: int, earlier: int) -> int:
    return channel * (channel - 1) // 2 + earlier


# Below this many (batch × edges × components) elements, evaluating every edge at once takes fewer
# operations than the two-level search and about as long for the arithmetic (a few microseconds).
_FULL_SEARCH_ELEMENTS = 8192


class MixtureStepDecoder:
    r"""Invert the channel-autoregressive DMOL flow at one position per call, with few small operations.

    Channel c has the mixture of :func:`arflows.transforms.channel_conditionals`: means shifted by
    :math:`\sum_{c'<c} \alpha_{c,c'} x_{c'}` and weights proportional to :math:`w_m \prod_{c'<c} P_m(q_{c'})`.
    Its latent edges are :math:`z_j = \sum_m w_m \sigma((e_j - \mu_m) e^{-s_m})` at the integer edges
    :math:`e_j = (2j - 1)/(K - 1) - 1`, and its bin is the number of edges at or below z. For small
    batches every edge is evaluated at once. Otherwise the search evaluates every g-th edge
    (g = ceil(sqrt(K - 1))), then the g - 1 edges inside the bracketing block, so each channel costs two
    products of g edges by M components instead of K - 1.

    Mathematically this is :func:`arflows.transforms.multivariate_dmol_decode`. The floating-point edges
    can differ from it in the last bits, which the verification pass of :func:`cached_decode` accounts for.

    Args:
        num_channels: C.
        num_components: M.
        num_bins: K.
        dtype: Floating-point type of the parameters.
        device: Device of the parameters.
    """

    def __init__(
        self, num_channels: int, num_components: int, num_bins: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.num_channels = num_channels
        self.num_components = num_components
        self.num_bins = num_bins
        self.num_edges = num_edges = num_bins - 1
        self.block = block = math.isqrt(num_edges - 1) + 1 if num_edges > 1 else 1
        pairs = num_channels * (num_channels - 1) // 2
        self.split_sizes = [num_components, num_channels * num_components, num_channels * num_components]
        self.split_sizes.append(pairs * num_components)
        # Edge positions e_0 .. e_K with e_0 = -inf and e_K = +inf: the bounds of bin q are e_q and e_{q+1}.
        # The g - 1 entries after e_K are +inf as well, so that a block past the last edge reads CDF 1.
        j = torch.arange(num_bins + block, device=device)
        positions = (2.0 * j.to(dtype) - 1.0) / (num_bins - 1) - 1.0
        positions[0] = -math.inf
        positions[num_bins:] = math.inf
        self.positions = positions
        self.interior = positions[1:num_bins].view(1, -1, 1)
        # Coarse edges g, 2g, ... <= K - 1, and the offsets 1 .. g - 1 of the edges inside a block.
        self.coarse = positions[block : num_edges + 1 : block].view(1, -1, 1)
        self.offsets = torch.arange(1, block, device=device).view(1, -1, 1)
        # Network input 2q/(K - 1) - 1 of each bin.
        self.values = 2.0 * torch.arange(num_bins, device=device).to(dtype) / (num_bins - 1) - 1.0

    def _component_log_prob(
        self, bins: Tensor, mean: Tensor, log_scale: Tensor, inverse_scale: Tensor
    ) -> Tensor:
        """Compute log P_m(q) = log sigma(a) + log sigma(-b) + log(1 - e^(b - a)) per component, (B, 1, M).

        Here a and b are the standardized upper and lower bin edges, and bins has shape (B, 1, 1). The
        infinite outer edges of bins 0 and K - 1 make the corresponding terms exactly zero.
        """
        upper = (self.positions.take(bins + 1) - mean) * inverse_scale
        lower = (self.positions.take(bins) - mean) * inverse_scale
        gap = torch.log(-torch.expm1(lower - upper))
        return F.logsigmoid(upper) + F.logsigmoid(-lower) + gap

    def _cdf(self, positions: Tensor, mean: Tensor, inverse_scale: Tensor, weights: Tensor) -> Tensor:
        """Evaluate the mixture CDF at positions (·, n, 1) for means, inverse scales and weights (B, 1, M)."""
        return torch.linalg.vecdot(torch.sigmoid((positions - mean) * inverse_scale), weights)  # (B, n)

    def _search(self, z: Tensor, mean: Tensor, inverse_scale: Tensor, weights: Tensor) -> Tensor:
        """Return the number of interior edges whose CDF value is at most z (B, 1), as (B, 1) long."""
        if z.shape[0] * self.num_edges * self.num_components <= _FULL_SEARCH_ELEMENTS or self.block == 1:
            return torch.searchsorted(self._cdf(self.interior, mean, inverse_scale, weights), z, right=True)

        coarse = self._cdf(self.coarse, mean, inverse_scale, weights)
        blocks = torch.searchsorted(coarse, z, right=True)  # (B, 1): edges g·blocks and below are <= z
        # Edges g·blocks + 1 .. g·blocks + g - 1 of the bracketing block, (B, g - 1, 1).
        indices = torch.add(self.offsets, blocks.unsqueeze(2), alpha=self.block)
        fine = self._cdf(self.positions.take(indices), mean, inverse_scale, weights)
        return torch.add((fine <= z).sum(dim=1, keepdim=True), blocks, alpha=self.block)

    def __call__(self, z: Tensor, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Decode one position.

        Args:
            z: Latents, shape (B, C).
            raw: Raw network outputs of the position, shape (B, M·(1 + 2C + C(C-1)/2)), laid out as in
                :meth:`arflows.flows.AutoregressiveFlow.parameters_of`.

        Returns:
            Bins (long) and their scaled values 2q/(K-1) - 1 (dtype of raw), each of shape (B, C).
        """
        batch = raw.shape[0]
        channels, components = self.num_channels, self.num_components
        logits, means, log_scales, coefficients = raw.split(self.split_sizes, dim=1)
        # (B, C·M) -> (B, C, 1, M) -> C tensors (B, 1, M), one per channel.
        means = means.view(batch, channels, 1, components).unbind(1)
        log_scales = log_scales.clamp(min=LOG_SCALE_MIN).view(batch, channels, 1, components)
        inverse_scales = torch.exp(-log_scales).unbind(1)
        log_scales = log_scales.unbind(1)
        coefficients = torch.tanh(coefficients).view(batch, -1, 1, components).unbind(1)
        z_columns = z.t().contiguous().unsqueeze(2).unbind(0)  # C tensors (B, 1)

        log_weights = torch.log_softmax(logits, dim=1).unsqueeze(1)  # (B, 1, M)
        bins = []
        values = []  # (B, 1, 1) each
        for channel in range(channels):
            mean = means[channel]
            for earlier in range(channel):
                pair = _coefficient_index(channel, earlier)
                mean = torch.addcmul(mean, coefficients[pair], values[earlier])
            weights = torch.softmax(log_weights, dim=2)
            channel_bins = self._search(z_columns[channel], mean, inverse_scales[channel], weights)
            channel_bins = channel_bins.clamp_(max=self.num_bins - 1).unsqueeze(2)  # (B, 1, 1)
            bins.append(channel_bins)
            values.append(self.values.take(channel_bins))
            if channel + 1 < channels:
                log_weights = log_weights + self._component_log_prob(
                    channel_bins, mean, log_scales[channel], inverse_scales[channel]
                )
        if channels == 1:
            return bins[0].view(batch, 1), values[0].view(batch, 1)
        return torch.cat(bins, dim=1).view(batch, channels), torch.cat(values, dim=1).view(batch, channels)


# ---------------------------------------------------------------------------------------------------------
# Cache helpers
# ---------------------------------------------------------------------------------------------------------


def concat_elu_into(x: Tensor, out: Tensor, dim: int) -> None:
    """Write elu([x, -x]) along ``dim`` into ``out``, whose size along ``dim`` is twice that of x.

    One broadcast product by (1, -1) writes both halves, then the ELU runs in place.
    """
    half = x.shape[dim]
    shape = list(out.shape)
    shape[dim : dim + 1] = [2, half]
    signs = _signs(x, dim)
    torch.mul(x.unsqueeze(dim), signs, out=out.view(shape))
    F.elu(out, inplace=True)


_SIGNS = {}


def _signs(x: Tensor, dim: int) -> Tensor:
    """Return the constant (1, -1) shaped to broadcast against x.unsqueeze(dim) along the new dimension."""
    key = (x.dtype, x.device, x.dim(), dim)
    signs = _SIGNS.get(key)
    if signs is None:
        shape = [1] * (x.dim() + 1)
        shape[dim] = 2
        signs = torch.tensor([1.0, -1.0], dtype=x.dtype, device=x.device).view(shape)
        _SIGNS[key] = signs
    return signs


def product_weight(weight: Tensor) -> Tensor:
    """Return the (in, out) matrix ``weight`` as a transposed view of a contiguous (out, in) copy.

    MKL reads the (out, in) rows contiguously when the other factor has few rows, which makes the
    per-step products of a small batch about a third faster than with a contiguous (in, out) matrix
    (measured on a 2-core AMD EPYC VM with torch 2.13 and 640 x 320 float32 weights).
    """
    return weight.t().contiguous().t()


def tensor_numel(*tensors: Tensor | None) -> int:
    """Sum the element counts of the given tensors, skipping None."""
    return sum(tensor.numel() for tensor in tensors if tensor is not None)
