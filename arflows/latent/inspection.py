"""Uniformity checks of the latents of data and of re-encoded model samples, with their figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from arflows.latent.encoding import decode_latents, encode_data, flow_dtype
from arflows.latent.figures import correlation_figure, histogram_figure, ks_map_figure
from arflows.latent.uniformity import (
    NECESSARY_NOT_SUFFICIENT,
    ArrayLike,
    as_numpy,
    ks_statistic_map,
    neighbour_correlations,
    uniformity_summary,
)

__all__ = ["REJECTION_LEVEL", "Inspection", "inspect_latents", "sample_and_reencode"]

logger = logging.getLogger(__name__)

# p-value below which the summary's verdict calls latents non-uniform. A correct flow's re-encoded samples
# fall below it by chance once in a thousand inspections.
REJECTION_LEVEL = 1e-3


@torch.no_grad()
def sample_and_reencode(
    flow: torch.nn.Module,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    naive: bool | None = None,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw samples by decoding uniform latents, then encode them again with fresh uniform noise.

    The re-encoded latents of a correct flow are independent U(0, 1) whatever the weights, because the
    flow maps its own dequantized distribution to the uniform one. Non-uniform re-encoded samples point
    at a bug in encode or decode. Non-uniform data latents next to uniform re-encoded samples point at a
    model that does not fit the data.

    Args:
        flow: An :class:`~arflows.AutoregressiveFlow` of images or fixed-length audio.
        num_samples: Number of samples N >= 1.
        generator: CPU random generator of the latents and the noise.
        batch_size: Examples per decoding loop and encoding pass.
        naive: Passed on to :func:`~arflows.latent.encoding.decode_latents`.
        length: For audio flows, the number of samples T per sample (default: the flow's data shape).

    Returns:
        The samples q (int64) and their re-encoded latents, both of shape (N, *data_shape) (audio
        (N, 1, length)).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    shape = tuple(flow.data_shape)
    if length is not None:
        if not getattr(flow, "is_audio", False):
            raise ValueError("length applies to audio flows only; image flows sample their data shape")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive number of samples, got {length!r}")
        shape = (1, length)
    z = torch.rand((num_samples, *shape), generator=generator, dtype=flow_dtype(flow))
    samples = decode_latents(flow, z, batch_size=batch_size, naive=naive)
    reencoded, _ = encode_data(flow, samples, noise="uniform", generator=generator, batch_size=batch_size)
    return samples.numpy(), reencoded.numpy()


def _verdict(data: dict[str, Any], samples: dict[str, Any] | None) -> str:
    data_uniform = data["ks"]["p_value"] >= REJECTION_LEVEL
    if samples is None:
        return ("data latents look uniform at the 0.1% level" if data_uniform else
                "data latents are not uniform (p < 0.001); inspect re-encoded samples to tell a model "
                "misfit from a bug")
    samples_uniform = samples["ks"]["p_value"] >= REJECTION_LEVEL
    if not samples_uniform:
        return ("re-encoded model samples are not uniform (p < 0.001): encode and decode disagree, "
                "which points at a bug rather than at the fit")
    if not data_uniform:
        return ("re-encoded model samples look uniform but the data latents do not (p < 0.001): the "
                "flow is consistent and the model does not fit the data perfectly")
    return "data latents and re-encoded samples both look uniform at the 0.1% level"


@dataclass
class Inspection:
    """The uniformity checks of :func:`inspect_latents`.

    Attributes:
        data_latents: Latents of the data, shape (N, *data_shape), or padded audio latents (N, 1, T).
        samples: Model samples, int64, shape (M, *data_shape), or None when no samples were drawn.
        sample_latents: Their re-encoded latents, or None.
        summary: JSON-serialisable dict with keys "data", "samples" (or None), "verdict" and "note".
        data_lengths: Lengths of the audio clips behind padded ``data_latents``, int64 (N,), or None.
    """

    data_latents: np.ndarray
    samples: np.ndarray | None
    sample_latents: np.ndarray | None
    summary: dict[str, Any]
    data_lengths: np.ndarray | None = None

    def figures(self) -> dict[str, Figure]:
        """Return the histograms, KS maps and neighbour correlations as named figures.

        Names: "data_histogram", "data_ks_map", "samples_histogram", "samples_ks_map" (the last two only
        with samples) and "correlations".
        """
        figures = {}
        sources = {"data": (self.data_latents, self.data_lengths)}
        if self.sample_latents is not None:
            sources["samples"] = (self.sample_latents, None)
        titles = {"data": "latents of the data", "samples": "latents of re-encoded model samples"}
        for name, (latents, lengths) in sources.items():
            figures[f"{name}_histogram"] = histogram_figure(latents, lengths=lengths, title=titles[name])
            statistic_map, _ = ks_statistic_map(latents, lengths)
            figures[f"{name}_ks_map"] = ks_map_figure(statistic_map, latents.shape[0],
                                                      title=f"KS statistic per dimension, {titles[name]}")
        figures["correlations"] = correlation_figure(
            {name: neighbour_correlations(latents, lengths) for name, (latents, lengths) in sources.items()}
        )
        return figures


def inspect_latents(
    flow: torch.nn.Module,
    data_latents: ArrayLike,
    *,
    num_samples: int = 64,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    naive: bool | None = None,
    lengths: ArrayLike | None = None,
    sample_length: int | None = None,
) -> Inspection:
    """Check data latents for uniformity and compare with the re-encoded samples of the model.

    Args:
        flow: The flow that encoded the data.
        data_latents: Latents of data, shape (N, *data_shape), or padded audio latents (N, 1, T).
        num_samples: Samples to draw and re-encode; 0 skips them (sampling is a sequential decode).
        generator: CPU random generator of the samples and their noise.
        batch_size: Examples per decoding loop and encoding pass.
        naive: Passed on to :func:`~arflows.latent.encoding.decode_latents`.
        lengths: Clip lengths (N,) of padded audio latents; padding is left out of every statistic.
        sample_length: Samples per audio sample (default: the flow's data shape).

    Returns:
        The latents, samples and a summary with KS tests, KS map summaries, neighbour correlations and a
        verdict that distinguishes a model misfit from a bug.
    """
    data_latents = as_numpy(data_latents)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    data_lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    data_summary = uniformity_summary(data_latents, lengths=data_lengths)

    samples = sample_latents = sample_summary = None
    if num_samples > 0:
        samples, sample_latents = sample_and_reencode(flow, num_samples, generator=generator,
                                                      batch_size=batch_size, naive=naive, length=sample_length)
        sample_summary = uniformity_summary(sample_latents)

    summary = {
        "data": data_summary,
        "samples": sample_summary,
        "verdict": _verdict(data_summary, sample_summary),
        "note": NECESSARY_NOT_SUFFICIENT,
    }
    logger.info("latent inspection: %s", summary["verdict"])
    return Inspection(data_latents, samples, None if sample_latents is None else as_numpy(sample_latents),
                      summary, data_lengths)
