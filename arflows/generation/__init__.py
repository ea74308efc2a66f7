"""Fast decoding: cached incremental generation for every network, verified against the naive loop."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from arflows.generation.common import MAX_REPAIRS, StepDecoder, cached_decode

if TYPE_CHECKING:
    from arflows.flows import AutoregressiveFlow

__all__ = ["MAX_REPAIRS", "StepDecoder", "build_decoder", "fast_decode"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def build_decoder(flow: AutoregressiveFlow, shape: tuple[int, ...]) -> StepDecoder | None:
    """Build the cached decoder of a flow for latents of the given shape, or None for unknown networks.

    Args:
        flow: The flow. Its network must be one of :class:`~arflows.nets.PixelCNN`,
            :class:`~arflows.nets.GatedPixelCNN`, :class:`~arflows.nets.PixelCNNPlusPlus` or
            :class:`~arflows.nets.WaveNet`, exactly (a subclass may change the forward pass).
        shape: (B, *data_shape) of the latents.

    Returns:
        The decoder, with caches allocated for this batch and shape.
    """
    from arflows.nets import GatedPixelCNN, PixelCNN, PixelCNNPlusPlus, WaveNet

    net = flow.net
    batch = shape[0]
    if type(net) is WaveNet:
        from arflows.generation.wavenet import WaveNetDecoder

        num_components = net.out_channels // 3 if flow.output == "mixture" else 0
        return WaveNetDecoder(net, flow.output, batch, shape[-1], flow.num_bins, num_components)
    if type(net) is PixelCNN:
        from arflows.generation.pixelcnn import PixelCNNDecoder

        return PixelCNNDecoder(net, batch, shape[2], shape[3], flow.num_bins)
    if type(net) is GatedPixelCNN:
        from arflows.generation.pixelcnn import GatedPixelCNNDecoder

        return GatedPixelCNNDecoder(net, batch, shape[2], shape[3], flow.num_bins)
    if type(net) is PixelCNNPlusPlus:
        from arflows.generation.pixelcnn_pp import PixelCNNPlusPlusDecoder

        return PixelCNNPlusPlusDecoder(net, batch, shape[2], shape[3], flow.num_bins)
    return None


def fast_decode(
    flow: AutoregressiveFlow, z: Tensor, stats: dict[str, int] | None = None
) -> tuple[Tensor, Tensor] | None:
    """Decode validated latents with the cached decoder and the verify-and-repair loop.

    Args:
        flow: The flow, in eval mode.
        z: Latents in [0, 1], shape (B, *data_shape), in the network's dtype.
        stats: If given, receives the counts of :func:`~arflows.generation.common.cached_decode`.

    Returns:
        (q, u), bit-identical to the naive loop's, or None when the network has no cached decoder.
    """
    decoder = build_decoder(flow, tuple(z.shape))
    if decoder is None:
        logger.debug("no cached decoder for %s, so the naive loop decodes", type(flow.net).__name__)
        return None
    return cached_decode(flow, z, decoder, stats)
