"""Latent files: `.npz` archives of latents with the metadata that identifies the flow that wrote them."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

__all__ = [
    "LATENT_FILE_FORMAT",
    "LATENT_FILE_VERSION",
    "LatentFile",
    "LatentFileError",
    "check_latents_match_flow",
    "load_latents",
    "save_latents",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

LATENT_FILE_FORMAT = "arflows-latents"
# Version 2 added the optional "lengths" array of audio clips; version 1 files read unchanged.
LATENT_FILE_VERSION = 2

PathLike = Union[str, os.PathLike]


class LatentFileError(ValueError):
    """A latent file that is unreadable, malformed, or written by a flow other than the one given."""


def weights_fingerprint(flow: torch.nn.Module) -> str:
    """Return the SHA-256 of the flow's state dict: every entry's name, dtype, shape and bytes, by name.

    Two flows share a fingerprint exactly when they hold the same weights in the same dtype, whichever
    file they came from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(flow.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Viewing as bytes works for every dtype, bfloat16 included, which .numpy() rejects.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _normalise(value: Any) -> Any:
    """Return value as it reads back from JSON (tuples become lists), for comparisons with stored metadata."""
    return json.loads(json.dumps(value))


@dataclass
class LatentFile:
    """The contents of a latent file.

    Attributes:
        path: The file.
        latents: z in [0, 1], float32 or float64, shape (N, *data_shape).
        indices: Index of each example in its dataset, int64, shape (N,).
        labels: Label of each example (-1 when unlabelled), int64, shape (N,).
        metadata: The flow configuration ("flow"), "data_shape", "num_bins", "weights_fingerprint",
            "dtype", and how the latents were made ("checkpoint", "weights", "step", "dataset", "split",
            "noise", "seed"; audio also "sample_rate" and "quantization").
        lengths: For audio clips of varying length, the length T_i of each clip, int64, shape (N,); the
            latents then have shape (N, 1, max T_i) and ``latents[i, :, T_i:]`` is padding. None otherwise.
    """

    path: Path
    latents: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    metadata: dict[str, Any]
    lengths: np.ndarray | None = None


def save_latents(path: PathLike, latents: np.ndarray, indices: np.ndarray, labels: np.ndarray,
                 *, flow: torch.nn.Module, info: dict[str, Any], lengths: np.ndarray | None = None) -> dict[str, Any]:
    """Write latents with their indices, labels and the flow's identity to an `.npz` file, atomically.

    Args:
        path: The file to write.
        latents: z in [0, 1], shape (N, *data_shape), in the flow's dtype, so that decoding reads exactly
            the encoded values. Audio clips of varying length: padded latents (N, 1, max T_i).
        indices: Dataset index of each example, shape (N,).
        labels: Label of each example, shape (N,).
        flow: The flow that encoded them; its configuration and weights fingerprint go into the metadata.
        info: JSON-serialisable facts about how the latents were made, stored with the metadata.
        lengths: Length T_i of each audio clip, shape (N,), for padded audio latents; None otherwise.

    Returns:
        The metadata written.
    """
    from arflows import __version__
    from arflows.checkpoint import atomic_write_bytes

    latents = np.asarray(latents)
    if latents.shape[0] != len(indices) or latents.shape[0] != len(labels):
        raise ValueError(f"latents {latents.shape}, indices ({len(indices)},) and labels ({len(labels)},) must "
                         "describe the same number of examples")
    arrays = {}
    if lengths is not None:
        lengths = np.asarray(lengths)
        if latents.ndim != 3 or latents.shape[1] != 1 or lengths.shape != (latents.shape[0],):
            raise ValueError(f"lengths {lengths.shape} need padded audio latents (N, 1, T) with one length per "
                             f"clip; got latents {latents.shape}")
        if lengths.min() < 1 or lengths.max() != latents.shape[-1]:
            raise ValueError(f"lengths lie in [{lengths.min()}, {lengths.max()}]; expected positive lengths whose "
                             f"maximum is the padded length {latents.shape[-1]}")
        arrays["lengths"] = lengths.astype(np.int64)
    metadata = {
        "format": LATENT_FILE_FORMAT,
        "format_version": LATENT_FILE_VERSION,
        "arflows_version": __version__,
        **_normalise(info),
        "flow": _normalise(flow.config),
        "data_shape": list(flow.data_shape),
        "num_bins": int(flow.num_bins),
        "dtype": str(latents.dtype),
        "num_examples": int(latents.shape[0]),
        "weights_fingerprint": weights_fingerprint(flow),
    }
    buffer = io.BytesIO()
    np.savez(buffer, latents=latents, indices=np.asarray(indices, dtype=np.int64),
             labels=np.asarray(labels, dtype=np.int64), metadata=np.array(json.dumps(metadata, sort_keys=True)),
             **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return metadata


def load_latents(path: PathLike) -> LatentFile:
    """Read and validate a latent file written by :func:`save_latents`.

    Raises:
        LatentFileError: If the file is missing or not an arflows latent file, or if its latents contain
            NaN, lie outside [0, 1] or disagree with the stored shape.
    """
    path = Path(path)
    if not path.is_file():
        raise LatentFileError(f"latent file {path} not found")
    if not zipfile.is_zipfile(path):
        raise LatentFileError(f"{path} is not a readable .npz latent file (not a zip archive); expected a "
                              "file written by 'arflows encode'")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise LatentFileError(f"{path} is not a readable .npz latent file: {error}") from error

    missing = [name for name in ("latents", "indices", "labels", "metadata") if name not in contents]
    if missing:
        raise LatentFileError(f"{path} lacks the arrays {missing}; expected a file written by 'arflows encode'")
    try:
        metadata = json.loads(str(contents["metadata"]))
    except json.JSONDecodeError as error:
        raise LatentFileError(f"{path} has unreadable metadata: {error}") from error
    if not isinstance(metadata, dict) or metadata.get("format") != LATENT_FILE_FORMAT:
        raise LatentFileError(f"{path} is not an arflows latent file (expected metadata format "
                              f"{LATENT_FILE_FORMAT!r})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > LATENT_FILE_VERSION:
        raise LatentFileError(f"{path} has latent file version {version!r}; this arflows reads versions up "
                              f"to {LATENT_FILE_VERSION}")

    latents = contents["latents"]
    if latents.dtype not in (np.float32, np.float64):
        raise LatentFileError(f"{path}: latents have dtype {latents.dtype}; expected float32 or float64")
    expected_shape = tuple(int(size) for size in metadata.get("data_shape", ()))
    lengths = _read_lengths(path, contents, latents, expected_shape)
    if lengths is None and (latents.ndim < 2 or tuple(latents.shape[1:]) != expected_shape or latents.shape[0] < 1):
        raise LatentFileError(f"{path}: latents have shape {latents.shape}; the metadata expects "
                              f"(N, {', '.join(map(str, expected_shape))}) with N >= 1")
    if np.isnan(latents).any():
        count = int(np.isnan(latents).sum())
        raise LatentFileError(f"{path}: {count} latents are NaN; expected values in [0, 1]")
    low, high = float(latents.min()), float(latents.max())
    if low < 0.0 or high > 1.0:
        raise LatentFileError(f"{path}: latents lie in [{low}, {high}]; expected values in [0, 1]")
    for name in ("indices", "labels"):
        if contents[name].shape != (latents.shape[0],):
            raise LatentFileError(f"{path}: {name} has shape {contents[name].shape}; expected "
                                  f"({latents.shape[0]},), one per latent")
    return LatentFile(path, latents, contents["indices"].astype(np.int64), contents["labels"].astype(np.int64),
                      metadata, lengths)


def _read_lengths(path: Path, contents: dict[str, np.ndarray], latents: np.ndarray,
                  expected_shape: tuple[int, ...]) -> np.ndarray | None:
    """Return the clip lengths of padded audio latents after checking them, or None if there are none."""
    if "lengths" not in contents:
        return None
    lengths = contents["lengths"]
    if len(expected_shape) != 2 or latents.ndim != 3 or latents.shape[1] != expected_shape[0] or latents.shape[0] < 1:
        raise LatentFileError(f"{path}: latents have shape {latents.shape} with clip lengths; expected padded "
                              "audio latents (N, 1, T) with N >= 1")
    if lengths.shape != (latents.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise LatentFileError(f"{path}: lengths has shape {lengths.shape} and dtype {lengths.dtype}; expected "
                              f"({latents.shape[0]},) integers, one per clip")
    if lengths.min() < 1 or lengths.max() != latents.shape[-1]:
        raise LatentFileError(f"{path}: lengths lie in [{lengths.min()}, {lengths.max()}]; expected positive "
                              f"lengths whose maximum is the padded length {latents.shape[-1]}")
    return lengths.astype(np.int64)


def check_latents_match_flow(latent_file: LatentFile, flow: torch.nn.Module, fingerprint: str, *,
                             allow_other_weights: bool = False) -> None:
    """Raise LatentFileError unless the latents were written by this flow.

    Args:
        latent_file: A file from :func:`load_latents`.
        flow: The flow that will decode them.
        fingerprint: :func:`weights_fingerprint` of the flow as loaded (before any dtype change).
        allow_other_weights: Accept different weights of the same architecture with a warning, for
            decoding the latents of one checkpoint with another.
    """
    stored = latent_file.metadata
    path = latent_file.path
    expected = {"data_shape": list(flow.data_shape), "num_bins": int(flow.num_bins),
                "flow": _normalise(flow.config)}
    for key in ("data_shape", "num_bins"):
        if stored.get(key) != expected[key]:
            raise LatentFileError(f"{path} contains latents with {key}={stored.get(key)}, but the checkpoint's "
                                  f"flow has {key}={expected[key]}; decode with the checkpoint that encoded them")
    if stored.get("flow") != expected["flow"]:
        raise LatentFileError(f"{path} was written by the flow {stored.get('flow')}, but the checkpoint contains "
                              f"{expected['flow']}; decode with the checkpoint that encoded them")
    if stored.get("weights_fingerprint") != fingerprint:
        message = (f"{path} was encoded with other weights (fingerprint {str(stored.get('weights_fingerprint'))[:12]}, "
                   f"checkpoint {stored.get('checkpoint')}, {stored.get('weights')} weights) than the ones "
                   f"loaded (fingerprint {fingerprint[:12]})")
        if not allow_other_weights:
            raise LatentFileError(message + "; decode with the same checkpoint and --weights, or pass "
                                            "--allow-other-weights")
        logger.warning("%s; decoding anyway, so the data will differ from the encoded examples", message)
