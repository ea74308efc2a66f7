"""Self-describing training checkpoints: atomic writes, safe loading and `load_flow`."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_json",
    "capture_rng_state",
    "load_checkpoint",
    "load_flow",
    "remove_stale_temporary_files",
    "resolve_checkpoint_path",
    "restore_rng_state",
    "save_checkpoint",
    "state_dict_from_averaged",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "arflows-checkpoint"
CHECKPOINT_VERSION = 1

# Keys every checkpoint carries. The weights and optimizer entries are large; the rest is metadata.
_REQUIRED_KEYS = ("format", "format_version", "flow", "model", "step")
_STATE_KEYS = ("model", "averaged_model", "optimizer", "lr_scheduler", "grad_scaler", "rng")

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A file that is missing, unreadable or not an arflows checkpoint, or weights it does not contain."""


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, which is flushed and fsynced and then renamed
    over `path` with `os.replace` (atomic on POSIX and Windows within one file system). A process killed
    in between leaves at most a stale `.<name>.*.tmp` file next to the target.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        # Covers KeyboardInterrupt too, so an interrupted save never leaves its temporary file behind.
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _fsync_directory(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed. Windows cannot open
    # directories, and some file systems reject fsync on them; the file content is already safe then.
    if os.name == "nt":
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_checkpoint(path: PathLike, checkpoint: dict) -> None:
    """Serialise `checkpoint` with `torch.save` and write it atomically to `path`.

    Args:
        path: Target file, usually `RUN_DIR/last.pt` or `RUN_DIR/best.pt`.
        checkpoint: Dictionary with at least the keys in `_REQUIRED_KEYS`. It must hold only tensors,
            plain containers, numbers, strings, booleans and None, so that `load_checkpoint` can read it
            with `weights_only=True`.
    """
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint dictionary lacks the keys {missing}; expected all of {_REQUIRED_KEYS}")

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def resolve_checkpoint_path(path_or_run_dir: PathLike, *, prefer: str = "best") -> Path:
    """Return the checkpoint file named by a file path or a run directory.

    Args:
        path_or_run_dir: A checkpoint file, or a run directory written by `arflows train`.
        prefer: For a run directory, `"best"` returns `best.pt` when it exists and `last.pt` otherwise;
            `"last"` returns `last.pt` when it exists and `best.pt` otherwise.

    Raises:
        CheckpointError: If the path does not exist or the directory contains neither file.
    """
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer must be 'best' or 'last', got {prefer!r}")

    path = Path(path_or_run_dir)
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} contains no checkpoint (neither best.pt nor last.pt); "
                              "pass a run directory written by 'arflows train' or a .pt file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    return path


def load_checkpoint(path_or_run_dir: PathLike, *, map_location: Any = "cpu", prefer: str = "best") -> dict:
    """Load and validate a checkpoint with `torch.load(weights_only=True)`.

    Args:
        path_or_run_dir: A checkpoint file or a run directory (see `resolve_checkpoint_path`).
        map_location: Passed to `torch.load`; tensors go to the CPU by default.
        prefer: Which file of a run directory to read first, `"best"` or `"last"`.

    Returns:
        The checkpoint dictionary with an extra key `"path"` holding the file that was read.

    Raises:
        CheckpointError: If the file is not a readable arflows checkpoint of a supported version.
    """
    path = resolve_checkpoint_path(path_or_run_dir, prefer=prefer)
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since PyTorch 1.6; anything else is another kind of file
        # or one cut short before its central directory was written.
        raise CheckpointError(f"{path} is not a readable checkpoint: not a zip archive as torch.save "
                              "writes (another kind of file, or truncated)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only=True rejects arbitrary Python objects, which arflows checkpoints never contain.
        raise CheckpointError(f"{path} is not an arflows checkpoint: it contains objects that "
                              f"torch.load(weights_only=True) rejects ({_unpickler_reason(error)})") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not written by "
                              f"torch.save): {error}") from error

    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not an arflows checkpoint "
                              f"(expected the key 'format' = {CHECKPOINT_FORMAT!r})")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, but this arflows reads "
                              f"versions up to {CHECKPOINT_VERSION}; upgrade arflows")
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks the checkpoint keys {missing}")

    checkpoint["path"] = str(path)
    return checkpoint


def _unpickler_reason(error: Exception) -> str:
    # torch's message is several paragraphs long; the line after "WeightsUnpickler error:" names the
    # rejected object.
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().split("\n")[0].strip()
        return reason or text.splitlines()[0]
    return text.splitlines()[0] if text else type(error).__name__


def state_dict_from_averaged(averaged_state: dict) -> dict:
    """Return the flow's state dict inside an `AveragedModel` state dict.

    `AveragedModel.state_dict()` prefixes every entry of the wrapped module with `module.` and adds the
    counter `n_averaged`; this strips the prefix and drops the counter.
    """
    prefix = "module."
    return {key[len(prefix):]: value for key, value in averaged_state.items() if key.startswith(prefix)}


def load_flow(path_or_run_dir: PathLike, *, weights: str = "averaged",
              map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a flow from a checkpoint alone.

    Args:
        path_or_run_dir: A checkpoint file, or a run directory (its `best.pt`, else `last.pt`).
        weights: `"averaged"` loads the Polyak-averaged (EMA) weights, `"raw"` the optimised weights.
        map_location: Where the weights go, as for `torch.load`.

    Returns:
        `(flow, metadata)`. The flow is in eval mode, in the floating-point dtype it was trained in.
        `metadata` is the checkpoint dictionary without the weight, optimizer and RNG entries, plus
        `"path"` (the file read), `"weights"` (the weights loaded) and `"receptive_field"` (past samples
        a WaveNet reads at each step, None for image networks).

    Raises:
        CheckpointError: If the file is not a checkpoint, or `weights="averaged"` is requested from a run
            trained without weight averaging (`--ema-decay 0`).
    """
    if weights not in ("averaged", "raw"):
        raise ValueError(f"weights must be 'averaged' or 'raw', got {weights!r}")

    checkpoint = load_checkpoint(path_or_run_dir, map_location=map_location)
    if weights == "averaged":
        if checkpoint.get("averaged_model") is None:
            raise CheckpointError(f"{checkpoint['path']} contains no averaged weights because the run was "
                                  "trained with --ema-decay 0; load the raw weights instead")
        state = state_dict_from_averaged(checkpoint["averaged_model"])
    else:
        state = checkpoint["model"]

    # Imported here because arflows.flows imports the networks, which need not load for checkpoint I/O.
    from arflows.flows import flow_from_config

    flow = flow_from_config(checkpoint["flow"])

    # load_state_dict copies into the existing parameters and would silently cast float64 weights to
    # float32, so the flow first takes the dtype the weights were stored in.
    dtype = next((value.dtype for value in state.values() if value.is_floating_point()), None)
    if dtype is not None:
        flow.to(dtype)
    flow.load_state_dict(state)
    flow.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    flow.eval()

    metadata = {key: value for key, value in checkpoint.items() if key not in _STATE_KEYS}
    metadata["weights"] = weights
    # Checkpoints written before the receptive field was stored get it from the rebuilt network.
    if metadata.get("receptive_field") is None:
        receptive_field = getattr(flow.net, "receptive_field", None)
        metadata["receptive_field"] = None if receptive_field is None else int(receptive_field)
    return flow, metadata


def capture_rng_state() -> dict:
    """Return the state of every random number generator training uses, as tensors and plain values.

    Covers Python's `random`, NumPy's global generator, torch's CPU generator and, once CUDA is
    initialised, every CUDA device's generator. The result is loadable with `weights_only=True`.
    """
    version, python_state, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": list(cuda_states),
    }


def restore_rng_state(state: dict) -> None:
    """Restore generators from a `capture_rng_state` dictionary.

    CUDA states are restored only when CUDA is available with the same number of devices. Otherwise
    they are skipped with a warning, so that a CUDA checkpoint still resumes on another machine.
    """
    python = state["python"]
    random.setstate((python["version"], tuple(int(value) for value in python["state"].tolist()),
                     python["gauss_next"]))

    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))

    torch.set_rng_state(state["torch"].cpu())

    cuda_states = state.get("cuda") or []
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all([value.cpu() for value in cuda_states])
        else:
            logger.warning("checkpoint contains %d CUDA generator states but %d CUDA devices are visible; "
                           "CUDA random numbers will differ from the uninterrupted run",
                           len(cuda_states), torch.cuda.device_count() if torch.cuda.is_available() else 0)


def remove_stale_temporary_files(directory: PathLike, names: Optional[tuple[str, ...]] = None) -> int:
    """Delete `.<name>.*.tmp` files left by atomic writes of a killed process; return how many went."""
    directory = Path(directory)
    names = names or ("last.pt", "best.pt", "config.json")
    removed = 0
    for name in names:
        for stale in directory.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
            removed += 1
    return removed
