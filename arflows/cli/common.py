"""Helpers shared by the subcommands: errors, logging, devices, data flags, checkpoints, output paths."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "EXIT_USAGE",
    "UsageError",
    "add_data_arguments",
    "add_device_arguments",
    "configure_logging",
    "data_options_from_args",
    "is_main_process",
    "load_flow_or_exit",
    "prepare_output_file",
    "prepare_run_dir",
    "print_error",
    "resolve_device_or_exit",
]

logger = logging.getLogger("arflows.cli")

# Exit status of user errors (bad flags, missing data, mismatched checkpoint), as argparse uses.
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line or its inputs; `main` prints the message and exits with status 2."""


def is_main_process() -> bool:
    """Return whether this is rank 0 of a torchrun job, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def configure_logging(verbosity: int = 0) -> None:
    """Send log records to stderr: INFO by default, DEBUG with -v, WARNING with -q.

    Processes other than rank 0 of a torchrun job log warnings and errors only.
    """
    level = logging.INFO
    if verbosity > 0:
        level = logging.DEBUG
    elif verbosity < 0:
        level = logging.WARNING
    if not is_main_process():
        level = max(level, logging.WARNING)
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    # basicConfig adds a stderr handler only when the root logger has none, so the handlers of an
    # embedding program (or pytest) stay in place. The level goes on the package logger, not the root.
    logging.basicConfig(format=f"{prefix}%(levelname)s %(name)s: %(message)s")
    logging.getLogger("arflows").setLevel(level)


# --------------------------------------------------------------------------------------------------------
# Devices and checkpoints
# --------------------------------------------------------------------------------------------------------


def add_device_arguments(parser: Any, *, precision_default: str = "float32", training: bool = False) -> None:
    """Add `--device` and `--precision` to a parser or argument group."""
    from arflows.training import PRECISIONS

    parser.add_argument("--device", default=None, metavar="auto|cpu|cuda",
                        help="where to run: auto picks CUDA when available (cuda:LOCAL_RANK under torchrun); "
                             "also cuda:N (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="arithmetic: float32; float64 for exactness checks; bf16 or fp16 mixed precision "
                             "through torch.autocast (the likelihood itself is computed in float32)"
                             f"{', fp16 with a GradScaler' if training else ''} (default: {precision_default})")


def resolve_device_or_exit(name: Optional[str]) -> Any:
    """Return the torch device for a `--device` value, raising UsageError when it is unavailable."""
    from arflows.training import resolve_device

    try:
        return resolve_device(name or "auto", local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as error:
        raise UsageError(str(error)) from error


def load_flow_or_exit(path_or_run_dir: str, *, weights: Optional[str] = None,
                      map_location: Any = "cpu") -> tuple[Any, dict]:
    """Load a flow from a checkpoint file or run directory for a subcommand.

    Args:
        path_or_run_dir: A `.pt` file or a run directory (its best.pt, else last.pt).
        weights: `"averaged"`, `"raw"`, or None for the averaged weights when the checkpoint has them.
        map_location: Device of the loaded flow.

    Returns:
        `(flow, metadata)` as `arflows.checkpoint.load_flow` returns them.

    Raises:
        UsageError: If the path is not a checkpoint or lacks the requested weights.
    """
    from arflows import checkpoint

    try:
        if weights is None:
            try:
                return checkpoint.load_flow(path_or_run_dir, weights="averaged", map_location=map_location)
            except checkpoint.CheckpointError as error:
                if "averaged" not in str(error):
                    raise
                logger.info("the checkpoint has no averaged weights; using the raw weights")
                return checkpoint.load_flow(path_or_run_dir, weights="raw", map_location=map_location)
        return checkpoint.load_flow(path_or_run_dir, weights=weights, map_location=map_location)
    except checkpoint.CheckpointError as error:
        raise UsageError(str(error)) from error


# --------------------------------------------------------------------------------------------------------
# Output paths
# --------------------------------------------------------------------------------------------------------


def prepare_output_file(path: str, *, force: bool) -> Path:
    """Return `path` as a Path whose folder exists, raising UsageError if the file exists without --force."""
    target = Path(path)
    if target.exists() and not force:
        raise UsageError(f"{target} already exists; pass --force to overwrite it")
    if target.is_dir():
        raise UsageError(f"{target} is a directory; expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def prepare_run_dir(path: str, *, force: bool, resume: bool, run_files: tuple[str, ...]) -> Path:
    """Check that a run directory may be written, and with --force clear the previous run's files.

    A new run needs an absent or empty directory. `resume` needs an existing `last.pt` or `best.pt`.
    With `force`, the files a run writes (`run_files`, TensorBoard event files) are deleted first;
    other files are left alone. Only rank 0 deletes anything.

    Raises:
        UsageError: If the directory contains files and neither --resume nor --force is given, or if
            --resume finds no checkpoint.
    """
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file; expected a directory")

    if resume:
        if not any((run_dir / name).is_file() for name in ("last.pt", "best.pt")):
            raise UsageError(f"cannot resume: {run_dir} contains no last.pt or best.pt")
        return run_dir

    existing = sorted(item.name for item in run_dir.iterdir()) if run_dir.is_dir() else []
    if existing and not force:
        contains_run = any(name in run_files for name in existing)
        hint = ("it already contains a run; pass --resume to continue it or --force to start over"
                if contains_run else "pass --force to write into it anyway")
        raise UsageError(f"--out {run_dir} is not empty ({', '.join(existing[:5])}"
                         f"{', ...' if len(existing) > 5 else ''}); {hint}")
    if existing and is_main_process():
        for name in existing:
            item = run_dir / name
            stale_temporary = name.startswith(".") and name.endswith(".tmp")
            if name in run_files or name.startswith("events.out.tfevents.") or stale_temporary:
                item.unlink()
        logger.info("--force: removed the previous run's files from %s", run_dir)
    return run_dir


# --------------------------------------------------------------------------------------------------------
# Data flags
# --------------------------------------------------------------------------------------------------------


def _size(text: str) -> Any:
    """Parse `28` or `28x32` (height × width) for --crop and --resize."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; expected N or HxW, e.g. 28 or 24x32")
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; expected N or HxW with positive integers")
    return values[0] if len(values) == 1 else tuple(values)


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool, training: bool) -> None:
    """Add `--data` and the flags passed on to `arflows.data.load_dataset`.

    Every default is None, meaning "not given", so that commands can tell explicit flags from defaults
    (evaluation falls back to the options stored in the checkpoint).
    """
    title = "data" if training else "data (unset flags take the options the run was trained with)"
    group = parser.add_argument_group(title)
    group.add_argument("--data", required=required, default=None, metavar="SPEC",
                       help="dataset: mnist:PATH (mnist.npz or IDX files), cifar10:PATH, folder:PATH "
                            "(image files), wav:PATH (WAV files) or digits (scikit-learn's 8×8 digits)"
                            + (" (required for a new run)" if training else " (default: the checkpoint's dataset)"))
    group.add_argument("--channels", type=int, choices=(1, 3), default=None,
                       help="convert images to 1 (grey) or 3 (RGB) channels (default: the dataset's own)")
    group.add_argument("--crop", type=_size, default=None, metavar="N|HxW",
                       help="centre-crop images to N×N or H×W pixels (default: no crop)")
    group.add_argument("--resize", type=_size, default=None, metavar="N|HxW",
                       help="resize images to N×N or H×W pixels after cropping (default: no resize)")
    group.add_argument("--num-bins", type=int, default=None, metavar="K",
                       help="number of discrete levels K; images accept only their own K (default: 256 for "
                            "audio and 8-bit images, 17 for digits)")
    group.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                       help="download MNIST or CIFAR-10 into PATH when the data is missing (default: no)")
    group.add_argument("--validation-fraction", type=float, default=None, metavar="F",
                       help="fraction in [0, 1) of the training examples held out for validation (default: 0.1)")
    group.add_argument("--test-fraction", type=float, default=None, metavar="F",
                       help="fraction in [0, 1) held out as test by sources without a test split "
                            "(folders, digits, WAV folders) (default: 0.1)")
    group.add_argument("--split-seed", type=int, default=None, metavar="N",
                       help="seed of the train/validation/test partition and of --max-examples (default: 0)")
    group.add_argument("--max-examples", type=int, default=None, metavar="N",
                       help="read a seeded random choice of at most N examples from each source part "
                            "(train and test files, or the whole folder) before splitting (default: all)")
    group.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                       help="resample audio to HZ samples per second (default: the files' rate)")
    group.add_argument("--mono", action=argparse.BooleanOptionalAction, default=None,
                       help="mix multi-channel audio down to mono (default: no)")
    group.add_argument("--quantization", choices=("mu-law", "linear"), default=None,
                       help="audio quantization to K levels (default: mu-law)")
    if training:
        group.add_argument("--segment-length", type=int, default=None, metavar="SAMPLES",
                           help="length of the random audio crops used for training, in samples "
                                "(required for audio data, unused for images)")


_DATA_FLAG_TO_OPTION = {
    "channels": "channels",
    "crop": "crop",
    "resize": "resize",
    "num_bins": "num_bins",
    "download": "download",
    "validation_fraction": "validation_fraction",
    "test_fraction": "test_fraction",
    "split_seed": "seed",
    "max_examples": "max_examples",
    "sample_rate": "sample_rate",
    "mono": "mono",
    "quantization": "quantization",
}


def data_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Return the `load_dataset` keyword arguments given explicitly on the command line."""
    options = {}
    for flag, option in _DATA_FLAG_TO_OPTION.items():
        value = getattr(args, flag, None)
        if value is not None:
            options[option] = list(value) if isinstance(value, tuple) else value
    return options


def print_error(command: str, message: str) -> None:
    """Print a one-line error for `command` on stderr, as argparse does."""
    print(f"arflows {command}: error: {message}", file=sys.stderr)
