"""`arflows encode`: latents z = f(x) of a dataset split, stored with the identity of the flow."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from arflows.cli.common import UsageError
from arflows.cli.latent_common import (
    add_checkpoint_arguments,
    add_split_arguments,
    check_output_files,
    load_checkpoint_flow,
    load_split,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows encode runs/digits --data digits --out latents.npz
  arflows encode runs/mnist --split test --max-examples 1000 --noise center --out mnist_z.npz

  arflows encode runs/speech --data wav:../shared/data/fsdd/train --max-examples 20 --out speech_z.npz

The .npz file holds latents (N×C×H×W, in the flow's dtype), indices (position of each example in the
dataset), labels and metadata (JSON: the flow configuration, data shape, K, a SHA-256 fingerprint of
the weights, the checkpoint, dataset, split, noise and seed). A PNG of data next to latents is written
beside it with the same name. 'arflows decode' checks the metadata against its checkpoint.

Audio checkpoints encode whole clips, whatever their length: latents are N×1×T with T the longest
clip, lengths holds each clip's length (latents after it are padding, 0.5), and the metadata adds the
sample rate and quantization. The PNG shows waveforms next to their latent sequences and the
histogram of all latents with its Kolmogorov-Smirnov test against U(0, 1).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows encode`."""
    parser = subparsers.add_parser(
        "encode", help="encode a dataset split to latents (.npz)",
        description="Map every example of a dataset split to its latent z = f((q + u)/K) in [0, 1] with one "
                    "parallel network pass per batch, and write the latents with the data they belong to.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="latent file to write")
    add_split_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `arflows encode`; return the exit status."""
    import torch

    from arflows.latent import data_latent_figure, encode_split, ks_uniform, save_figure, save_latents
    from arflows.latent.audio import valid_values

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UsageError(f"--out {out} must end in .npz")
    figure_path = out.with_suffix(".png")
    check_output_files([out, figure_path], force=args.force)

    loaded = load_checkpoint_flow(args)
    dataset, spec, options, max_examples = load_split(loaded, args)

    generator = torch.Generator().manual_seed(args.seed)
    encoded = encode_split(loaded.flow, dataset, args.split, max_examples=max_examples, noise=args.noise,
                           generator=generator, batch_size=args.batch_size)
    metadata = loaded.metadata
    info = {
        "checkpoint": str(metadata["path"]),
        "weights": metadata["weights"],
        "step": metadata.get("step"),
        "dataset": {"spec": spec, "options": options},
        "split": args.split,
        "noise": args.noise,
        "seed": args.seed,
        "bits_per_dim": encoded.bits_per_dim,
    }
    title = f"{spec}, {args.split} split: data and latents"
    if encoded.lengths is not None:
        info["sample_rate"] = int(dataset.sample_rate)
        info["quantization"] = dataset.quantization
        figure = encoded.figure(quantization=dataset.quantization, sample_rate=dataset.sample_rate, title=title)
        ks = ks_uniform(valid_values(encoded.latents, encoded.lengths))
        unit, shape = "bits/sample", f"clips of {encoded.lengths.min()} to {encoded.lengths.max()} samples"
    else:
        figure = data_latent_figure(encoded.data, encoded.latents, dataset.num_bins, title=title)
        ks = ks_uniform(encoded.latents)
        unit, shape = "bits/dim", "×".join(map(str, dataset.data_shape))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_latents(out, encoded.latents, encoded.indices, encoded.labels, flow=loaded.flow, info=info,
                 lengths=encoded.lengths)
    save_figure(figure, figure_path)

    print(f"encoded {len(encoded.indices)} examples of the {args.split} split of {spec} "
          f"({shape}, K={dataset.num_bins}) with {args.noise} noise")
    print(f"{unit:<12} {encoded.bits_per_dim:.4f}")
    print(f"uniformity   {ks.describe()}")
    print(f"latents      {out}")
    print(f"figure       {figure_path}")
    return 0
