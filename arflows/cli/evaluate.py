"""`arflows evaluate`: exact bits/dim of a checkpoint over a whole dataset split."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from arflows.cli.common import (
    UsageError,
    add_data_arguments,
    add_device_arguments,
    data_options_from_args,
    is_main_process,
    load_flow_or_exit,
)

__all__ = ["add_parser", "resolve_data_options", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows evaluate runs/mnist                      # best.pt (else last.pt), averaged weights, test split
  arflows evaluate runs/mnist/last.pt --split validation --weights raw
  arflows evaluate runs/mnist --data mnist:data/mnist --json
  torchrun --nproc-per-node 2 -m arflows evaluate runs/c10 --json

bits/dim is the total code length of the split, sum of -log2 P(q) over all examples divided by the
sum of their dimensions (not a mean of per-batch means). Audio checkpoints evaluate every clip of the
split whole, whatever its length, so the number is exact bits per sample over all samples of the
split (printed as bits/sample; the JSON key stays bits_per_dim). Data flags default to the options the run was
trained with (channels, crop, resize, K, split fractions and seed, --max-examples), so the test split
is the one held out from training; flags given here replace them.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows evaluate`."""
    parser = subparsers.add_parser(
        "evaluate", help="exact bits/dim of a checkpoint on a dataset split",
        description="Compute the exact discrete negative log-likelihood of a checkpoint over every example "
                    "of a dataset split, in bits per dimension.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a run directory (its best.pt, else last.pt) or a checkpoint file")
    parser.add_argument("--split", default="test", help="split to evaluate: train, validation or test "
                                                        "(default: test)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", choices=("averaged", "raw"), default=None,
                         help="Polyak-averaged or raw optimised weights (default: averaged when the "
                              "checkpoint has them, else raw)")
    weights.add_argument("--no-ema", dest="weights", action="store_const", const="raw",
                         help="same as --weights raw")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (bits_per_dim, nats_per_example, num_examples, num_dims, "
                             "dataset, split, checkpoint, unit, ...) instead of text; for audio bits_per_dim "
                             "is bits per sample and num_dims the number of samples")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="examples per forward pass and process (default: 64)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader worker processes (default: 0)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar on a terminal (default: yes)")
    add_device_arguments(parser, precision_default="the checkpoint's float32 or float64")
    add_data_arguments(parser, required=False, training=False)
    parser.set_defaults(handler=run)
    return parser


def resolve_data_options(metadata: dict, args: argparse.Namespace) -> tuple[str, dict]:
    """Return the dataset spec and `load_dataset` options for evaluating a checkpoint.

    Starts from the options the checkpoint was trained with, which fix the shape of an example and the
    partition, then applies the flags given on the command line. `--max-examples` is kept too: sources
    without a test split (folders, digits, WAV) partition the chosen subset, so another subset would
    have a test split that overlaps the training examples.
    """
    stored = metadata.get("dataset") or {}
    options = {key: value for key, value in (stored.get("options") or {}).items() if key != "download"}
    options.update(data_options_from_args(args))
    spec = args.data or (metadata.get("config") or {}).get("data") or stored.get("spec")
    if spec is None:
        raise UsageError(f"{metadata['path']} does not name its dataset; pass --data")
    return spec, options


def run(args: argparse.Namespace) -> int:
    """Run `arflows evaluate`; return the exit status."""
    import torch

    from arflows.data import load_dataset
    from arflows.training import check_data_matches_flow, evaluate_dataset, init_distributed

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}")
    try:
        context = init_distributed(args.device or "auto")
    except ValueError as error:
        raise UsageError(str(error)) from error

    try:
        flow, metadata = load_flow_or_exit(args.checkpoint, weights=args.weights, map_location=context.device)
        trained_dtype = next(flow.parameters()).dtype
        precision = args.precision or ("float64" if trained_dtype == torch.float64 else "float32")
        flow.to(torch.float64 if precision == "float64" else torch.float32)

        spec, options = resolve_data_options(metadata, args)
        try:
            dataset = load_dataset(spec, **options)
            if args.split not in dataset.split_names:
                raise ValueError(f"unknown split {args.split!r}; expected one of {', '.join(dataset.split_names)}")
            split = dataset.split(args.split)
            check_data_matches_flow(metadata["flow"], dataset.num_bins, dataset.data_shape,
                                    f"dataset {spec!r} ({args.split} split)")
        except (ValueError, TypeError, OSError) as error:
            raise UsageError(f"checkpoint {metadata['path']}: {error}") from error

        result = evaluate_dataset(flow, split, batch_size=args.batch_size, device=context.device,
                                  precision=precision, num_workers=args.num_workers, context=context,
                                  progress=args.progress)
    finally:
        if context.is_distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    if not is_main_process():
        return 0
    report = {
        "bits_per_dim": result.bits_per_dim,
        "nats_per_example": result.nats_per_example,
        "num_examples": result.num_examples,
        "num_dims": result.num_dims,
        "dims_per_example": result.dims_per_example,
        "dataset": spec,
        "split": args.split,
        "checkpoint": os.fspath(metadata["path"]),
        "weights": metadata["weights"],
        "step": metadata.get("step"),
        "precision": precision,
    }
    is_audio = getattr(dataset, "sample_rate", None) is not None
    report["unit"] = "bits/sample" if is_audio else "bits/dim"
    if is_audio:
        report["sample_rate"] = int(dataset.sample_rate)
        report["receptive_field"] = metadata.get("receptive_field")
    if args.json:
        print(json.dumps(report))
        return 0

    print(f"checkpoint   {report['checkpoint']} ({report['weights']} weights, step {report['step']}, "
          f"{metadata['flow']['model']})")
    if is_audio:
        lengths = dataset.lengths[dataset.indices(args.split)]
        print(f"dataset      {spec}, {args.split} split: {result.num_examples} whole clips of {lengths.min()} to "
              f"{lengths.max()} samples, {result.num_dims} samples at {dataset.sample_rate} Hz, "
              f"K={metadata['flow']['num_bins']} ({dataset.quantization})")
        print(f"bits/sample  {result.bits_per_dim:.6f}")
        print(f"nats/clip    {result.nats_per_example:.4f}")
        return 0
    shape = "×".join(str(size) for size in metadata["flow"]["data_shape"])
    print(f"dataset      {spec}, {args.split} split: {result.num_examples} examples, {result.num_dims} "
          f"dimensions, K={metadata['flow']['num_bins']}, flow shape {shape}")
    print(f"bits/dim     {result.bits_per_dim:.6f}")
    print(f"nats/example {result.nats_per_example:.4f}")
    return 0
