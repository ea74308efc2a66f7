"""Audio clips of varying length in latent space: padding with lengths, encoding and decoding by length."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor

from arflows.latent.encoding import _check_batch_size, decode_latents, flow_device, flow_dtype

__all__ = [
    "LATENT_PADDING",
    "crop_or_pad",
    "decode_clips",
    "encode_clips",
    "length_groups",
    "pad_clips",
    "silence_level",
    "unpad",
    "valid_values",
]

logger = logging.getLogger(__name__)

# Value of padded latents after a clip's end. Any value in [0, 1] keeps a latent file valid; 1/2 is the
# median of U(0, 1), so a padded position that slips into a statistic does not bias it to one side.
LATENT_PADDING = 0.5

ArrayLike = Union[np.ndarray, Tensor]


def pad_clips(clips: Sequence[ArrayLike], padding_value: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack clips of shape (1, T_i) or (T_i,) into one array (N, 1, max T_i), padded at the end.

    Returns:
        The padded array, in the clips' common dtype, and the lengths T_i (int64, shape (N,)).
    """
    if len(clips) == 0:
        raise ValueError("cannot pad an empty list of clips; expected at least one clip")
    arrays = [np.asarray(clip.detach().cpu() if isinstance(clip, Tensor) else clip).reshape(-1) for clip in clips]
    lengths = np.array([len(array) for array in arrays], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError(f"clip {int(np.argmin(lengths))} is empty; expected clips of at least one sample")
    padded = np.full((len(arrays), 1, int(lengths.max())), padding_value, dtype=np.result_type(*arrays))
    for row, array in enumerate(arrays):
        padded[row, 0, : len(array)] = array
    return padded, lengths


def unpad(padded: ArrayLike, lengths: ArrayLike) -> list[np.ndarray]:
    """Return clip i of a padded array (N, 1, T) as an array of shape (1, lengths[i])."""
    array = np.asarray(padded.detach().cpu() if isinstance(padded, Tensor) else padded)
    return [array[row, :, : int(length)] for row, length in enumerate(np.asarray(lengths))]


def valid_values(padded: ArrayLike, lengths: ArrayLike | None) -> np.ndarray:
    """Return the values of a padded array (N, 1, T) before each clip's end, flattened (float64)."""
    array = np.asarray(padded.detach().cpu() if isinstance(padded, Tensor) else padded, dtype=np.float64)
    if lengths is None:
        return array.ravel()
    return np.concatenate([clip.ravel() for clip in unpad(array, lengths)])


def check_lengths(lengths: ArrayLike, num_clips: int, max_length: int) -> np.ndarray:
    """Return lengths as int64 after checking that there is one per clip, in [1, max_length]."""
    lengths = np.asarray(lengths)
    if lengths.shape != (num_clips,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths has shape {lengths.shape} and dtype {lengths.dtype}; expected {num_clips} "
                         "integers, one per clip")
    if num_clips and (lengths.min() < 1 or lengths.max() > max_length):
        raise ValueError(f"lengths lie in [{lengths.min()}, {lengths.max()}]; expected values in [1, {max_length}]")
    return lengths.astype(np.int64)


def length_groups(lengths: ArrayLike, batch_size: int) -> list[np.ndarray]:
    """Group clip indices by equal length into batches of at most ``batch_size``, in first-seen order.

    Clips in one batch share their length, so each batch runs through the flow unpadded. A padded batch
    would run each clip's network on a longer canvas than the one it was encoded on, and exact decoding
    relies on the same arithmetic as encoding.
    """
    _check_batch_size(batch_size)
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(np.asarray(lengths).tolist()):
        groups.setdefault(int(length), []).append(index)
    batches = []
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            batches.append(np.array(members[start : start + batch_size], dtype=np.int64))
    return batches


@torch.no_grad()
def encode_clips(
    flow: torch.nn.Module,
    clips: Sequence[Tensor],
    *,
    noise: str = "uniform",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Encode whole clips of varying length, batching only clips of equal length.

    The noise u of clip i is drawn on the CPU in clip order, ``torch.rand((1, 1, T_i), generator)``, so
    ``batch_size`` changes the latents only by the rounding of the network's batched arithmetic.

    Args:
        flow: An audio :class:`~arflows.AutoregressiveFlow`.
        clips: Integer clips in [0, K), each of shape (1, T_i).
        noise: "uniform" (u ~ U[0, 1)) or "center" (u = 1/2).
        generator: CPU random generator of the uniform noise.
        batch_size: Clips per network pass.

    Returns:
        The latents z padded with ``LATENT_PADDING`` to shape (N, 1, max T_i) in the flow's dtype, the
        log-determinants :math:`\log P(q_i) + T_i \log K` (float64, (N,)) and the lengths (int64, (N,)).
    """
    if noise not in ("uniform", "center"):
        raise ValueError(f"noise must be 'uniform' or 'center' for audio clips, got {noise!r}")
    _check_batch_size(batch_size)
    if len(clips) == 0:
        raise ValueError("cannot encode an empty list of clips; expected at least one clip")

    device, dtype = flow_device(flow), flow_dtype(flow)
    clips = [torch.as_tensor(clip).reshape(1, -1) for clip in clips]
    lengths = np.array([clip.shape[-1] for clip in clips], dtype=np.int64)
    noises = [torch.rand((1, 1, int(length)), generator=generator, dtype=dtype) if noise == "uniform" else None
              for length in lengths]

    latents = np.full((len(clips), 1, int(lengths.max())), LATENT_PADDING,
                      dtype=np.float64 if dtype == torch.float64 else np.float32)
    log_det = np.zeros(len(clips), dtype=np.float64)
    for batch in length_groups(lengths, batch_size):
        q = torch.stack([clips[index] for index in batch]).to(device)  # (B, 1, T)
        batch_noise = "center" if noise == "center" else torch.cat([noises[index] for index in batch]).to(device)
        z, batch_log_det = flow.encode(q, noise=batch_noise)
        latents[batch, :, : q.shape[-1]] = z.cpu().numpy()
        log_det[batch] = batch_log_det.to(torch.float64).cpu().numpy()
    return latents, log_det, lengths


@torch.no_grad()
def decode_clips(
    flow: torch.nn.Module,
    latents: ArrayLike,
    lengths: ArrayLike,
    *,
    batch_size: int = 256,
    naive: bool | None = None,
    padding_value: int = 0,
) -> np.ndarray:
    """Decode padded latents (N, 1, T) of clips with the given lengths, batching clips of equal length.

    Args:
        flow: An audio :class:`~arflows.AutoregressiveFlow`.
        latents: z in [0, 1], shape (N, 1, T); positions at or after a clip's length are ignored.
        lengths: Clip lengths, shape (N,), in [1, T].
        batch_size: Clips per sequential decoding loop.
        naive: Passed on to :func:`~arflows.latent.encoding.decode_latents`.
        padding_value: Level written after each clip's end.

    Returns:
        q, int64, shape (N, 1, T).
    """
    z = torch.as_tensor(np.asarray(latents.detach().cpu() if isinstance(latents, Tensor) else latents))
    if z.dim() != 3 or z.shape[1] != 1:
        raise ValueError(f"latents have shape {tuple(z.shape)}; expected audio latents (N, 1, T)")
    lengths = check_lengths(lengths, z.shape[0], z.shape[-1])

    decoded = np.full(tuple(z.shape), padding_value, dtype=np.int64)
    batches = length_groups(lengths, batch_size)
    for number, batch in enumerate(batches):
        length = int(lengths[batch[0]])
        q = decode_latents(flow, z[torch.from_numpy(batch), :, :length], batch_size=len(batch), naive=naive)
        decoded[batch, :, :length] = q.numpy()
        logger.debug("decoded batch %d of %d (%d clips of %d samples)", number + 1, len(batches), len(batch), length)
    return decoded


def silence_level(num_bins: int, quantization: str) -> int:
    """Return the level that a sample of exactly 0 quantizes to, the level of silence."""
    from arflows.data import quantize

    return int(np.asarray(quantize(np.zeros(1), num_bins, quantization))[0])


def crop_or_pad(clip: ArrayLike, length: int, padding_value: int) -> np.ndarray:
    """Return the first ``length`` samples of a clip (1, T) or (T,), padded at the end with ``padding_value``.

    Returns:
        int64 array of shape (1, length).
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length must be a positive number of samples, got {length!r}")
    array = np.asarray(clip.detach().cpu() if isinstance(clip, Tensor) else clip, dtype=np.int64).reshape(-1)
    result = np.full((1, int(length)), padding_value, dtype=np.int64)
    kept = min(len(array), int(length))
    result[0, :kept] = array[:kept]
    return result
