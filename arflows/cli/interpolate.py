"""`arflows interpolate`: decoded interpolations between pairs of real examples in latent space."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from arflows.cli.common import UsageError
from arflows.cli.latent_common import (
    add_checkpoint_arguments,
    add_decoding_arguments,
    add_split_arguments,
    check_image_flow,
    check_output_files,
    load_checkpoint_flow,
    load_split,
    positive_int,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows interpolate runs/digits --data digits --pairs 4 --steps 8 --out interpolation.png
  arflows interpolate runs/mnist --mode linear --seed 1 --out linear.png

Pairs are drawn at random (with --seed) from the split. gaussian mode mixes y = Φ⁻¹(z) with weights
w/sqrt(w² + (1-w)²) and (1-w)/sqrt(w² + (1-w)²), which keeps a mix of independent standard normals
standard normal, and maps back with Φ; linear mode mixes z directly. The first and last column are
the encoded examples themselves and decode to them exactly.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows interpolate`."""
    from arflows.latent import INTERPOLATION_MODES

    parser = subparsers.add_parser(
        "interpolate", help="interpolate between pairs of examples in latent space (PNG grid)",
        description="Encode pairs of examples, interpolate their latents and decode every step.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--out", required=True, metavar="GRID.png", help="grid image to write")
    parser.add_argument("--pairs", type=positive_int, default=4, metavar="P", help="pairs of examples (default: 4)")
    parser.add_argument("--steps", type=int, default=8, metavar="S",
                        help="images per pair, both endpoints included, at least 2 (default: 8)")
    parser.add_argument("--mode", choices=INTERPOLATION_MODES, default="gaussian",
                        help="gaussian: mix normal variables Φ⁻¹(z) with norm-preserving weights; linear: mix "
                             "z (default: gaussian)")
    add_split_arguments(parser)
    add_decoding_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `arflows interpolate`; return the exit status."""
    import torch

    from arflows.latent import interpolate, save_figure

    if args.steps < 2:
        raise UsageError(f"--steps must be at least 2 (both endpoints), got {args.steps}")
    out = Path(args.out)
    if out.suffix != ".png":
        raise UsageError(f"--out {out} must end in .png")
    check_output_files([out], force=args.force)

    loaded = load_checkpoint_flow(args)
    check_image_flow(loaded.flow, "interpolate")
    dataset, spec, _, max_examples = load_split(loaded, args)
    items = dataset.split(args.split)
    available = len(items) if max_examples is None else min(len(items), max_examples)
    if available < 2 * args.pairs:
        raise UsageError(f"--pairs {args.pairs} needs {2 * args.pairs} examples, but the {args.split} split of "
                         f"{spec} has {available}; lower --pairs")

    generator = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(available, generator=generator)[: 2 * args.pairs].tolist()
    q = torch.stack([torch.as_tensor(items[index][0]) for index in chosen])  # (2P, C, H, W)
    result = interpolate(loaded.flow, q[: args.pairs], q[args.pairs :], args.steps, mode=args.mode,
                         noise=args.noise, generator=generator, batch_size=args.batch_size,
                         naive=True if args.naive else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(result.figure(), out)

    indices = dataset.indices(args.split)
    pairs = ", ".join(f"{indices[chosen[pair]]}-{indices[chosen[args.pairs + pair]]}" for pair in range(args.pairs))
    print(f"interpolated {args.pairs} pairs of the {args.split} split of {spec} (dataset indices {pairs}) "
          f"in {args.steps} {args.mode} steps")
    print(f"endpoints    {'decode exactly to the examples' if result.endpoints_exact else 'DIFFER from the examples'}")
    print(f"grid         {out}")
    return 0 if result.endpoints_exact else 1
