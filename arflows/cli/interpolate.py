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
    add_length_arguments,
    add_split_arguments,
    check_output_dir,
    check_output_files,
    load_checkpoint_flow,
    load_split,
    positive_int,
    resolve_length,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows interpolate runs/digits --data digits --pairs 4 --steps 8 --out interpolation.png
  arflows interpolate runs/mnist --mode linear --seed 1 --out linear.png
  arflows interpolate runs/speech --pairs 1 --steps 5 --seconds 0.5 --out speech.png

Pairs are drawn at random (with --seed) from the split. gaussian mode mixes y = Φ⁻¹(z) with weights
w/sqrt(w² + (1-w)²) and (1-w)/sqrt(w² + (1-w)²), which keeps a mix of independent standard normals
standard normal, and maps back with Φ; linear mode mixes z directly. The first and last column are
the encoded examples themselves and decode to them exactly.

Audio checkpoints crop or pad both clips of a pair to one length: --length samples (or --seconds;
default: the maximum length of the chosen clips), cutting longer clips at the end and padding shorter
ones with the level of silence. GRID.png then shows the waveforms (one row per pair), and a folder
named like the grid without .png receives pair_P_step_S.wav per decoded step (16-bit PCM at the
training data's sample rate) and interpolation.npz with the levels.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows interpolate`."""
    from arflows.latent import INTERPOLATION_MODES

    parser = subparsers.add_parser(
        "interpolate", help="interpolate between pairs of examples in latent space (PNG grid, WAV files)",
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
    add_length_arguments(parser, default_text="the maximum length of the chosen clips")
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
    dataset, spec, _, max_examples = load_split(loaded, args)
    length = resolve_length(args, loaded.flow, getattr(dataset, "sample_rate", None))
    clips_dir = check_output_dir(out.with_suffix(""), force=args.force) if loaded.flow.is_audio else None
    items = dataset.split(args.split)
    available = len(items) if max_examples is None else min(len(items), max_examples)
    if available < 2 * args.pairs:
        raise UsageError(f"--pairs {args.pairs} needs {2 * args.pairs} examples, but the {args.split} split of "
                         f"{spec} has {available}; lower --pairs")

    generator = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(available, generator=generator)[: 2 * args.pairs].tolist()
    examples = [torch.as_tensor(items[index][0]) for index in chosen]
    if clips_dir is not None:
        from arflows.latent.audio import crop_or_pad, silence_level

        length = length or max(example.shape[-1] for example in examples)
        silence = silence_level(dataset.num_bins, dataset.quantization)
        examples = [torch.from_numpy(crop_or_pad(example, length, silence)) for example in examples]
    q = torch.stack(examples)  # (2P, C, H, W) or (2P, 1, length)
    result = interpolate(loaded.flow, q[: args.pairs], q[args.pairs :], args.steps, mode=args.mode,
                         noise=args.noise, generator=generator, batch_size=args.batch_size,
                         naive=True if args.naive else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    if clips_dir is not None:
        _write_audio(result, clips_dir, dataset.sample_rate, dataset.quantization)
        save_figure(result.figure(quantization=dataset.quantization, sample_rate=dataset.sample_rate), out)
    else:
        save_figure(result.figure(), out)

    indices = dataset.indices(args.split)
    pairs = ", ".join(f"{indices[chosen[pair]]}-{indices[chosen[args.pairs + pair]]}" for pair in range(args.pairs))
    print(f"interpolated {args.pairs} pairs of the {args.split} split of {spec} (dataset indices {pairs}) "
          f"in {args.steps} {args.mode} steps")
    print(f"endpoints    {'decode exactly to the examples' if result.endpoints_exact else 'DIFFER from the examples'}")
    print(f"grid         {out}")
    if clips_dir is not None:
        print(f"audio        {clips_dir}/pair_P_step_S.wav ({q.shape[-1]} samples each), "
              f"{clips_dir / 'interpolation.npz'}")
    return 0 if result.endpoints_exact else 1


def _write_audio(result: Any, clips_dir: Path, sample_rate: int, quantization: str) -> None:
    """Write each decoded step as pair_P_step_S.wav and all levels as interpolation.npz."""
    import io

    import numpy as np

    from arflows.checkpoint import atomic_write_bytes
    from arflows.data import save_wav

    clips_dir.mkdir(parents=True, exist_ok=True)
    num_pairs, num_steps = result.data.shape[:2]
    for pair in range(num_pairs):
        for step in range(num_steps):
            save_wav(clips_dir / f"pair_{pair}_step_{step}.wav", result.data[pair, step], sample_rate,
                     num_bins=result.num_bins, quantization=quantization)
    buffer = io.BytesIO()
    np.savez(buffer, q=result.data, weights=result.weights)
    atomic_write_bytes(clips_dir / "interpolation.npz", buffer.getvalue())
