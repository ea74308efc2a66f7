"""Encoding of discrete data to latents and decoding back, in batches, for whole dataset splits."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["EncodedSplit", "decode_latents", "encode_data", "encode_split", "flow_device", "flow_dtype"]

logger = logging.getLogger(__name__)

Noise = Union[str, Tensor]


def flow_device(flow: torch.nn.Module) -> torch.device:
    """Return the device of the flow's parameters."""
    return next(flow.parameters()).device


def flow_dtype(flow: torch.nn.Module) -> torch.dtype:
    """Return the floating-point dtype of the flow's parameters (the dtype of its latents)."""
    return next(flow.parameters()).dtype


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _batch_noise(noise: Noise, start: int, q: Tensor, generator: torch.Generator | None,
                 dtype: torch.dtype) -> Noise:
    """Return the noise argument of ``flow.encode`` for the examples start .. start + len(q)."""
    if isinstance(noise, Tensor):
        return noise[start : start + q.shape[0]].to(q.device)
    if noise == "uniform":
        # Drawn on the CPU in the flow's dtype: the stream then does not depend on the device, and the
        # values stay in [0, 1), which a float64 draw rounded to float32 would not guarantee.
        return torch.rand(q.shape, generator=generator, dtype=dtype).to(q.device)
    return noise


@torch.no_grad()
def encode_data(
    flow: torch.nn.Module,
    q: Tensor,
    *,
    noise: Noise = "uniform",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    r"""Encode data to latents :math:`z = f((q + u)/K)`, one parallel network pass per batch.

    Args:
        flow: An :class:`~arflows.AutoregressiveFlow`.
        q: Integer data in [0, K), shape (N, *data_shape), on any device.
        noise: "uniform" (u ~ U[0, 1) drawn on the CPU with ``generator``), "center" (u = 1/2) or a tensor
            of u in [0, 1) of the shape of q.
        generator: CPU random generator of the uniform noise.
        batch_size: Examples per network pass.

    Returns:
        z of the shape of q in the flow's dtype and the log-determinants
        :math:`\log P(q) + D \log K` of shape (N,), both on the CPU.
    """
    _check_batch_size(batch_size)
    if isinstance(noise, Tensor) and tuple(noise.shape) != tuple(q.shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected the shape of q, {tuple(q.shape)}")
    if isinstance(noise, str) and noise not in ("uniform", "center"):
        raise ValueError(f"noise must be 'uniform', 'center' or a tensor; got {noise!r}")
    if q.shape[0] < 1:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected at least one example")

    device, dtype = flow_device(flow), flow_dtype(flow)
    latents, log_dets = [], []
    for start in range(0, q.shape[0], batch_size):
        batch = q[start : start + batch_size].to(device)
        z, log_det = flow.encode(batch, noise=_batch_noise(noise, start, batch, generator, dtype))
        latents.append(z.cpu())
        log_dets.append(log_det.cpu())
    return torch.cat(latents), torch.cat(log_dets)


def _decode_accepts_naive(flow: torch.nn.Module) -> bool:
    return "naive" in inspect.signature(flow.decode).parameters


@torch.no_grad()
def decode_latents(
    flow: torch.nn.Module, z: Tensor, *, batch_size: int = 256, naive: bool | None = None
) -> Tensor:
    """Decode latents back to data with ``flow.decode``, batch by batch.

    Args:
        flow: An :class:`~arflows.AutoregressiveFlow`.
        z: Latents in [0, 1], shape (N, *data_shape). They are cast to the flow's dtype, which is exact
            when z was stored in that dtype or a narrower one.
        batch_size: Examples per sequential decoding loop.
        naive: Passed on to ``flow.decode(naive=...)`` when the flow's decode takes that argument (a cached
            fast path next to the naive loop). None uses the flow's default. Decoders without the
            argument only have the naive loop, so any value runs that loop.

    Returns:
        q, int64, shape of z, on the CPU.
    """
    _check_batch_size(batch_size)
    if z.shape[0] < 1:
        raise ValueError(f"z has shape {tuple(z.shape)}; expected at least one example")

    options: dict[str, Any] = {}
    if naive is not None and _decode_accepts_naive(flow):
        options["naive"] = naive
    device, dtype = flow_device(flow), flow_dtype(flow)
    decoded = []
    for start in range(0, z.shape[0], batch_size):
        batch = z[start : start + batch_size].to(device=device, dtype=dtype)
        decoded.append(flow.decode(batch, **options).cpu())
        logger.debug("decoded %d of %d examples", min(start + batch_size, z.shape[0]), z.shape[0])
    return torch.cat(decoded)


@dataclass
class EncodedSplit:
    r"""The latents of examples of a dataset split, with the data they came from.

    Audio clips of varying length are padded at the end to the longest clip, and ``lengths`` gives
    each clip's length T_i: ``latents[i, :, :T_i]`` belongs to clip i, and the rest is padding
    (``LATENT_PADDING`` in the latents, level 0 in the data).

    Attributes:
        latents: z in [0, 1], float32 or float64 (the flow's dtype), shape (N, *data_shape), or
            (N, 1, max T_i) for audio clips.
        data: q, int64, shape of the latents.
        indices: Index of each example in the whole dataset, int64, shape (N,).
        labels: Label of each example (-1 when unlabelled), int64, shape (N,).
        log_det: :math:`\log P(q) + D \log K` of each example in nats, float64, shape (N,), with
            :math:`D = T_i` for audio clips.
        num_bins: The number of bins K of the data.
        lengths: Length T_i of each audio clip, int64, shape (N,), or None for images.
    """

    latents: np.ndarray
    data: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    log_det: np.ndarray
    num_bins: int
    lengths: np.ndarray | None = None

    def figure(self, **options: Any) -> Figure:
        """Return the data next to its latents.

        Images give :func:`~arflows.latent.figures.data_latent_figure`. Audio gives
        :func:`~arflows.latent.audio_figures.audio_latent_figure`, which takes ``quantization`` and
        ``sample_rate`` among the options.
        """
        if self.lengths is not None:
            from arflows.latent.audio_figures import audio_latent_figure

            return audio_latent_figure(self.data, self.latents, self.lengths, self.num_bins, **options)

        from arflows.latent.figures import data_latent_figure

        return data_latent_figure(self.data, self.latents, self.num_bins, **options)

    @property
    def num_dims(self) -> np.ndarray:
        """Dimensions D of each example (int64, (N,)): the length of an audio clip, else C·H·W."""
        if self.lengths is not None:
            return self.lengths.astype(np.int64)
        return np.full(len(self.log_det), int(np.prod(self.data.shape[1:])), dtype=np.int64)

    @property
    def bits_per_dim(self) -> float:
        r"""Bits/dim of the encoded examples, :math:`-\sum_n \log_2 P(q_n) / \sum_n D_n`, from the log-dets.

        For audio this is bits per sample over all samples of all clips, so long clips weigh more.
        """
        num_dims = self.num_dims
        log_prob = self.log_det - num_dims * np.log(self.num_bins)
        return float(-log_prob.sum() / (num_dims.sum() * np.log(2.0)))


def encode_split(
    flow: torch.nn.Module,
    dataset: Any,
    split: str = "test",
    *,
    max_examples: int | None = None,
    noise: Noise = "uniform",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> EncodedSplit:
    """Encode the examples of one split of a dataset.

    Args:
        flow: An :class:`~arflows.AutoregressiveFlow` whose data shape and K match the dataset.
        dataset: A :class:`~arflows.data.DiscreteDataset` (items of ``dataset.split(split)`` are
            ``(q, label)`` with q of shape data_shape).
        split: "train", "validation" or "test".
        max_examples: Encode only the first this many examples of the split, in dataset order.
        noise: "uniform", "center" or a tensor of the shape of the encoded data; see :func:`encode_data`.
        generator: CPU random generator of the uniform noise.
        batch_size: Examples per network pass.

    Returns:
        The latents with their data, dataset indices, labels and log-determinants.

    Raises:
        ValueError: If the dataset does not match the flow, or max_examples is not positive.
    """
    from arflows.training import check_data_matches_flow

    check_data_matches_flow(flow.config, dataset.num_bins, dataset.data_shape, f"dataset {dataset.spec!r}")
    items = dataset.split(split)
    indices = np.asarray(dataset.indices(split), dtype=np.int64)
    count = len(items)
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
            raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
        count = min(count, max_examples)
    if count == 0:
        raise ValueError(f"the {split} split of {dataset.spec!r} is empty; expected at least one example")

    pairs = [items[index] for index in range(count)]
    labels = np.asarray([int(label) for _, label in pairs], dtype=np.int64)
    if getattr(flow, "is_audio", False):
        return _encode_clip_split(flow, pairs, indices[:count], labels, noise=noise, generator=generator,
                                  batch_size=batch_size)

    q = torch.stack([torch.as_tensor(example) for example, _ in pairs])  # (N, *data_shape)
    z, log_det = encode_data(flow, q, noise=noise, generator=generator, batch_size=batch_size)
    logger.info("encoded %d examples of the %s split of %s", count, split, dataset.spec)

    return EncodedSplit(
        latents=z.numpy(),
        data=q.numpy().astype(np.int64),
        indices=indices[:count],
        labels=labels,
        log_det=log_det.to(torch.float64).numpy(),
        num_bins=int(flow.num_bins),
    )


def _encode_clip_split(flow: torch.nn.Module, pairs: list, indices: np.ndarray, labels: np.ndarray, *,
                       noise: Noise, generator: torch.Generator | None, batch_size: int) -> EncodedSplit:
    """Encode whole audio clips of varying length; see :func:`~arflows.latent.audio.encode_clips`."""
    from arflows.latent.audio import encode_clips, pad_clips

    if isinstance(noise, Tensor):
        raise TypeError("audio clips take noise 'uniform' or 'center', not a tensor, because their lengths vary")
    clips = [torch.as_tensor(example) for example, _ in pairs]
    latents, log_det, lengths = encode_clips(flow, clips, noise=noise, generator=generator, batch_size=batch_size)
    data, _ = pad_clips([clip.to(torch.int64) for clip in clips], padding_value=0)
    logger.info("encoded %d clips (%d samples)", len(clips), int(lengths.sum()))
    return EncodedSplit(latents=latents, data=data, indices=indices, labels=labels, log_det=log_det,
                        num_bins=int(flow.num_bins), lengths=lengths)
