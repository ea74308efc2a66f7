"""Helpers shared by the latent-space subcommands: flags, loading a flow with its data, output paths."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arflows.cli.common import (
    UsageError,
    add_data_arguments,
    load_flow_or_exit,
    resolve_device_or_exit,
)

__all__ = [
    "AudioFormat",
    "LoadedFlow",
    "add_checkpoint_arguments",
    "add_decoding_arguments",
    "add_length_arguments",
    "add_split_arguments",
    "audio_format",
    "check_output_dir",
    "check_output_files",
    "load_checkpoint_flow",
    "load_split",
    "positive_float",
    "positive_int",
    "resolve_length",
]

logger = logging.getLogger("arflows.cli")


def positive_int(text: str) -> int:
    """Parse a positive integer flag value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}; expected a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive; expected a positive integer")
    return value


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the checkpoint argument, `--weights`, `--device`, `--batch-size` and `--force`."""
    parser.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a run directory (its best.pt, else last.pt) or a checkpoint file")
    parser.add_argument("--weights", choices=("averaged", "raw"), default=None,
                        help="Polyak-averaged or raw optimised weights (default: averaged when the checkpoint "
                             "has them, else raw)")
    parser.add_argument("--device", default=None, metavar="auto|cpu|cuda",
                        help="where to run: auto picks CUDA when available; also cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help="examples per network pass or decoding loop (default: 64)")
    parser.add_argument("--force", action="store_true", help="overwrite output files that exist")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--naive`, for commands that decode latents."""
    parser.add_argument("--naive", action="store_true",
                        help="decode with the naive loop (one full network pass per step) even where the "
                             "flow has a faster cached path")


def add_length_arguments(parser: argparse.ArgumentParser, *, default_text: str) -> None:
    """Add `--length` (samples) and `--seconds`, the length of generated or cropped audio."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--length", type=positive_int, default=None, metavar="SAMPLES",
                       help=f"audio only: length in samples (default: {default_text})")
    group.add_argument("--seconds", type=positive_float, default=None, metavar="S",
                       help="audio only: length in seconds at the checkpoint's sample rate, instead of --length")


def resolve_length(args: argparse.Namespace, flow: Any, sample_rate: int | None) -> int | None:
    """Return the audio length in samples that `--length` or `--seconds` sets, or None when neither is given.

    Raises:
        UsageError: If either flag is given for an image flow.
    """
    if args.length is None and args.seconds is None:
        return None
    if not flow.is_audio:
        flag = "--length" if args.length is not None else "--seconds"
        raise UsageError(f"{flag} applies to audio checkpoints only; this checkpoint contains an image flow of "
                         f"shape {tuple(flow.data_shape)}")
    if args.length is not None:
        return args.length
    return max(1, round(args.seconds * sample_rate))


def positive_float(text: str) -> float:
    """Parse a positive finite number flag value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; expected a positive number")
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a positive finite number")
    return value


def add_split_arguments(parser: argparse.ArgumentParser, *, noise: bool = True) -> None:
    """Add the data flags, `--split`, `--seed` and (optionally) `--noise`."""
    parser.add_argument("--split", default="test", help="split to use: train, validation or test (default: test)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the dequantization noise and any random choice (default: 0)")
    if noise:
        parser.add_argument("--noise", choices=("uniform", "center"), default="uniform",
                            help="dequantization noise u of x = (q + u)/K: uniform in [0, 1) or the bin centre "
                                 "1/2 (default: uniform)")
    add_data_arguments(parser, required=False, training=False)
    # add_data_arguments documents --max-examples as a per-source-file subset; these commands cut the split.
    for action in parser._actions:
        if action.dest == "max_examples":
            action.help = "use only the first N examples of the split, in dataset order (default: all)"



@dataclass
class LoadedFlow:
    """A flow loaded for a subcommand.

    Attributes:
        flow: The flow, on the requested device, in the dtype it was saved in.
        metadata: Checkpoint metadata from `load_flow` ("path", "weights", "flow", "step", ...).
        fingerprint: Weights fingerprint of the flow as loaded.
    """

    flow: Any
    metadata: dict
    fingerprint: str


def load_checkpoint_flow(args: argparse.Namespace) -> LoadedFlow:
    """Load the flow named by `args.checkpoint` with `args.weights` on `args.device`."""
    from arflows.latent import weights_fingerprint

    device = resolve_device_or_exit(args.device)
    flow, metadata = load_flow_or_exit(args.checkpoint, weights=args.weights, map_location=device)
    return LoadedFlow(flow, metadata, weights_fingerprint(flow))


@dataclass
class AudioFormat:
    """Sample rate and quantization with which an audio flow's levels become WAV files.

    Attributes:
        sample_rate: Samples per second of the training data, in Hz.
        quantization: "mu-law" or "linear", the quantization of the training data.
    """

    sample_rate: int
    quantization: str


def audio_format(metadata: dict, *, sample_rate: int | None = None, stored: dict | None = None) -> AudioFormat:
    """Return the sample rate and quantization of an audio checkpoint's data.

    Looks, in order, at ``sample_rate`` (a `--sample-rate` flag), at ``stored`` (the metadata of a latent
    file), at the dataset description of the checkpoint (written by `arflows train`) and at the data
    options it was trained with.

    Raises:
        UsageError: If no sample rate is known. The message names the --sample-rate flag.
    """
    dataset = metadata.get("dataset") or {}
    options = dataset.get("options") or {}
    sources = [stored or {}, dataset, options]
    rate = sample_rate
    for source in sources:
        if rate is None and source.get("sample_rate") is not None:
            rate = int(source["sample_rate"])
    quantization = next((source["quantization"] for source in sources if source.get("quantization")), "mu-law")
    if rate is None:
        raise UsageError(f"{metadata['path']} does not store the sample rate of its audio; pass --sample-rate HZ")
    if rate < 1:
        raise UsageError(f"--sample-rate must be a positive number of samples per second, got {rate}")
    return AudioFormat(rate, quantization)


def load_split(loaded: LoadedFlow, args: argparse.Namespace) -> tuple[Any, str, dict, int | None]:
    """Load the dataset for `args` and check it against the flow.

    The data options the checkpoint was trained with (channels, crop, resize, K, split seed, validation
    fraction, the training run's file subset) apply unless flags override them. `--max-examples` is
    returned, not passed to `load_dataset`, so that the partition stays the one of training.

    Returns:
        `(dataset, spec, options, max_examples)`.

    Raises:
        UsageError: If the dataset cannot be loaded, lacks the split, or does not match the flow.
    """
    from arflows.cli.evaluate import resolve_data_options
    from arflows.data import load_dataset
    from arflows.training import check_data_matches_flow

    spec, options = resolve_data_options(loaded.metadata, args)
    # --max-examples here cuts the split. A --max-examples given to `arflows train` chose the files that
    # were partitioned, so it stays a load option: without it the test split would be a different one.
    max_examples = args.max_examples
    options.pop("max_examples", None)
    trained_options = (loaded.metadata.get("dataset") or {}).get("options") or {}
    if trained_options.get("max_examples") is not None:
        options["max_examples"] = trained_options["max_examples"]
    if max_examples is not None and max_examples < 1:
        raise UsageError(f"--max-examples must be a positive integer, got {max_examples}")
    try:
        dataset = load_dataset(spec, **options)
        if args.split not in dataset.split_names:
            raise ValueError(f"unknown split {args.split!r}; expected one of {', '.join(dataset.split_names)}")
        check_data_matches_flow(loaded.flow.config, dataset.num_bins, dataset.data_shape,
                                f"dataset {spec!r} ({args.split} split)")
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        raise UsageError(f"checkpoint {loaded.metadata['path']}: {error}") from error
    if dataset.num_examples(args.split) == 0:
        raise UsageError(f"the {args.split} split of {spec!r} is empty; choose another --split")
    return dataset, spec, options, max_examples


def check_output_files(paths: Sequence[Path], *, force: bool) -> None:
    """Raise UsageError if an output file is a directory, or exists without --force.

    Nothing is created, so that a command that fails later leaves no empty folders behind.
    """
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path} is a directory; expected a file path")
        if path.exists() and not force:
            raise UsageError(f"{path} already exists; pass --force to overwrite it")


def check_output_dir(path: Path, *, force: bool) -> Path:
    """Raise UsageError if an output folder is a file, or a non-empty folder without --force; return it."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file; expected a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UsageError(f"--out {path} already exists and is not empty; pass --force to overwrite its files")
    return path
