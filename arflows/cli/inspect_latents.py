"""`arflows inspect`: how uniform and independent the latents of data and of model samples are."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from arflows.cli.common import UsageError
from arflows.cli.latent_common import (
    add_checkpoint_arguments,
    add_decoding_arguments,
    add_length_arguments,
    add_split_arguments,
    check_output_dir,
    load_checkpoint_flow,
    load_split,
    resolve_length,
)

__all__ = ["FIGURE_NAMES", "add_parser", "run"]

logger = logging.getLogger("arflows.cli")

# Files that `arflows inspect` writes into DIR, besides summary.json.
FIGURE_NAMES = ("data_vs_latent", "data_histogram", "data_ks_map", "samples_histogram", "samples_ks_map",
                "correlations")

EPILOG = """\
examples:
  arflows inspect runs/digits --data digits --out inspect/
  arflows inspect runs/mnist --max-examples 2000 --num-samples 16 --out inspect_mnist/

DIR receives summary.json and PNG figures: data_vs_latent, data_histogram (marginal density of all
latents and per channel against U(0, 1), with Kolmogorov-Smirnov tests), data_ks_map (KS statistic
per dimension), the same two for re-encoded model samples, and correlations (each latent against its
left, upper and previous-channel neighbour). Latents of a correct flow are independent U(0, 1) for
data drawn from the model, so re-encoded samples must look uniform whatever the fit. Data latents
look uniform only as far as the model fits the data. Uniform marginals are necessary, not sufficient.

Audio checkpoints encode whole clips and leave the padding after each clip's end out of every
statistic. data_vs_latent shows waveforms next to their latent sequences; the KS maps become the KS
statistic per step t (over the steps every clip has), and correlations pair each latent with the
previous step. Samples have --length samples (or --seconds; default: the training crop length).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows inspect`."""
    parser = subparsers.add_parser(
        "inspect", help="uniformity checks of the latents: histograms, KS tests, correlations",
        description="Encode a dataset split, test its latents against independent U(0, 1) noise, and compare "
                    "with re-encoded samples of the model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for summary.json and the figures")
    parser.add_argument("--num-samples", type=int, default=64, metavar="N",
                        help="model samples to draw and re-encode; 0 skips them (default: 64)")
    add_length_arguments(parser, default_text="the training crop length, the flow's data shape")
    add_split_arguments(parser)
    add_decoding_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `arflows inspect`; return the exit status."""
    import torch

    from arflows.checkpoint import atomic_write_json
    from arflows.latent import data_latent_figure, encode_split, inspect_latents, save_figure

    if args.num_samples < 0:
        raise UsageError(f"--num-samples must be 0 or more, got {args.num_samples}")
    out = check_output_dir(Path(args.out), force=args.force)
    loaded = load_checkpoint_flow(args)
    dataset, spec, options, max_examples = load_split(loaded, args)
    sample_length = resolve_length(args, loaded.flow, getattr(dataset, "sample_rate", None))

    generator = torch.Generator().manual_seed(args.seed)
    encoded = encode_split(loaded.flow, dataset, args.split, max_examples=max_examples, noise=args.noise,
                           generator=generator, batch_size=args.batch_size)
    inspection = inspect_latents(loaded.flow, encoded.latents, num_samples=args.num_samples, generator=generator,
                                 batch_size=args.batch_size, naive=True if args.naive else None,
                                 lengths=encoded.lengths, sample_length=sample_length)

    figures = inspection.figures()
    title = f"{spec}, {args.split} split: data and latents"
    if encoded.lengths is not None:
        figures["data_vs_latent"] = encoded.figure(quantization=dataset.quantization,
                                                   sample_rate=dataset.sample_rate, title=title)
    else:
        figures["data_vs_latent"] = data_latent_figure(encoded.data, encoded.latents, dataset.num_bins, title=title)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FIGURE_NAMES:
        if name in figures:
            save_figure(figures[name], out / f"{name}.png")
            written.append(f"{name}.png")

    summary = {
        "checkpoint": str(loaded.metadata["path"]),
        "weights": loaded.metadata["weights"],
        "step": loaded.metadata.get("step"),
        "dataset": {"spec": spec, "options": options, "split": args.split,
                    "num_examples": len(encoded.indices)},
        "noise": args.noise,
        "seed": args.seed,
        "bits_per_dim": encoded.bits_per_dim,
        "num_samples": args.num_samples,
        "figures": written,
        **inspection.summary,
    }

    if encoded.lengths is not None:
        summary["bits_per_sample"] = encoded.bits_per_dim
        summary["sample_length"] = sample_length or loaded.flow.data_shape[-1]
    atomic_write_json(out / "summary.json", summary)

    data_ks = inspection.summary["data"]["ks"]["text"]
    unit = "bits/sample" if encoded.lengths is not None else "bits/dim"
    print(f"inspected {len(encoded.indices)} examples of the {args.split} split of {spec}, "
          f"{args.num_samples} re-encoded samples")
    print(f"{unit:<12} {encoded.bits_per_dim:.4f}")
    print(f"data         {data_ks}")
    if inspection.summary["samples"] is not None:
        print(f"samples      {inspection.summary['samples']['ks']['text']}")
    print(f"verdict      {inspection.summary['verdict']}")
    print(f"written      {out / 'summary.json'} and {len(written)} figures in {out}")
    return 0
