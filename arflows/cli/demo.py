"""`arflows demo`: train on scikit-learn's digits for a few minutes and write a report of every tool."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from arflows.cli.common import UsageError

__all__ = ["add_parser", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows demo                       # about 5 minutes on two CPU cores, writes demo/report.md
  arflows demo --out /tmp/demo --minutes 1 --force
  arflows demo --audio               # spoken digits, about 2.5 minutes, writes demo-audio/report.md
  arflows demo --audio --audio-data wav:recordings --minutes 1

The digits (1,797 images of 8×8 with 17 grey levels) ship with scikit-learn, so nothing is downloaded.
The report shows the exact test bits/dim, the training curve, data next to its latents, histograms and
Kolmogorov-Smirnov tests of the latents of test data and of re-encoded samples, neighbour correlations,
interpolations and samples.

--audio runs the same tools on real speech instead: a tiny WaveNet trained on random crops of 600
recordings (by default the Free Spoken Digit Dataset in ../shared/data/fsdd/train, looked up next to
the current folder and next to the repository), evaluated on whole test clips in bits/sample, with
decoded clips, samples and an interpolation written as WAV files. Without recordings it stops with a
message that asks for --audio-data.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows demo`."""
    from arflows.audio_demo import DEFAULT_AUDIO_MINUTES
    from arflows.demo import DEFAULT_MINUTES

    parser = subparsers.add_parser(
        "demo", help="train on scikit-learn's digits (or spoken digits) and write a report of every latent tool",
        description="Train a small gated PixelCNN on scikit-learn's 8×8 digits, evaluate its exact bits/dim, "
                    "encode, inspect, interpolate and sample, and write DIR/report.md with every figure. "
                    "--audio does the same with a tiny WaveNet on recorded speech.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: demo, or demo-audio with --audio)")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training time in minutes of wall time (default: {DEFAULT_MINUTES:g}, "
                             f"{DEFAULT_AUDIO_MINUTES:g} with --audio)")
    parser.add_argument("--audio", action="store_true",
                        help="train a WaveNet on recorded speech instead of a PixelCNN on the digits")
    parser.add_argument("--audio-data", default=None, metavar="wav:PATH",
                        help="recordings for --audio, a folder of WAV files (default: "
                             "../shared/data/fsdd/train when it exists)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="also stop training after N optimizer steps (default: no step limit)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training, noise and samples (default: 0)")
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda",
                        help="where to train and run the flow (default: cpu)")
    parser.add_argument("--force", action="store_true", help="replace the demo's files in a non-empty DIR")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `arflows demo`; return the exit status."""
    from arflows.cli.common import resolve_device_or_exit
    from arflows.demo import DEFAULT_MINUTES, run_demo
    from arflows.training import ConfigurationError, NonFiniteLossError

    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be a positive integer, got {args.max_steps}")
    if args.audio_data is not None and not args.audio:
        raise UsageError("--audio-data applies to the audio demo only; add --audio")
    device = resolve_device_or_exit(args.device)
    if args.audio:
        return _run_audio(args, str(device))
    try:
        result = run_demo(args.out or "demo", minutes=DEFAULT_MINUTES if args.minutes is None else args.minutes,
                          max_steps=args.max_steps, force=args.force, seed=args.seed, device=str(device))
    except (ValueError, ConfigurationError) as error:
        raise UsageError(str(error)) from error
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 1

    numbers = result.numbers
    inspection = numbers["inspection"]
    print(f"trained      {numbers['model']}, {numbers['training']['step']} steps in "
          f"{numbers['training']['seconds']:.0f} s")
    print(f"test         {numbers['test_bits_per_dim']:.4f} bits/dim (exact)")
    print(f"round trip   decode(encode(test)) {'==' if numbers['decode_exact'] else '!='} test images")
    print(f"uniformity   data: {inspection['data']['ks']['text']}")
    print(f"             samples: {inspection['samples']['ks']['text']}")
    print(f"report       {result.report}")
    return 0


def _run_audio(args: argparse.Namespace, device: str) -> int:
    """Run `arflows demo --audio`; return the exit status."""
    from arflows.audio_demo import DEFAULT_AUDIO_MINUTES, run_audio_demo
    from arflows.training import ConfigurationError, NonFiniteLossError

    try:
        result = run_audio_demo(args.out or "demo-audio", data=args.audio_data,
                                minutes=DEFAULT_AUDIO_MINUTES if args.minutes is None else args.minutes,
                                max_steps=args.max_steps, force=args.force, seed=args.seed, device=device)
    except (ValueError, ConfigurationError) as error:
        raise UsageError(str(error)) from error
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 1

    numbers = result.numbers
    inspection = numbers["inspection"]
    print(f"trained      {numbers['model']}, {numbers['training']['step']} steps in "
          f"{numbers['training']['seconds']:.0f} s (receptive field {numbers['receptive_field']} samples)")
    print(f"test         {numbers['test_bits_per_sample']:.4f} bits/sample (exact, {numbers['dataset']['num_test']} "
          "whole clips)")
    print(f"round trip   decode(encode(test)) {'==' if numbers['decode_exact'] else '!='} test clips")
    print(f"uniformity   data: {inspection['data']['ks']['text']}")
    print(f"             samples: {inspection['samples']['ks']['text']}")
    print(f"report       {result.report}")
    return 0
