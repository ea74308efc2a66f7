"""The `arflows` command line: one subcommand per module, registered in `COMMAND_MODULES`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from arflows.cli.common import EXIT_USAGE, UsageError, configure_logging, print_error

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# Each module defines `add_parser(subparsers) -> ArgumentParser`, which registers its subcommand and sets
# `handler=run` with `run(args) -> int`. A new subcommand is a new module plus one name here.
COMMAND_MODULES = ("arflows.cli.train", "arflows.cli.evaluate", "arflows.cli.encode", "arflows.cli.decode",
                   "arflows.cli.sample", "arflows.cli.inspect_latents", "arflows.cli.interpolate", "arflows.cli.demo")

EPILOG = """\
examples:
  arflows train --model pixelcnn --data digits --out runs/digits --filters 32 --blocks 2 --epochs 5
  arflows evaluate runs/digits --json
  python -m arflows train --help
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every registered subcommand."""
    import arflows

    parser = argparse.ArgumentParser(
        prog="arflows",
        description="PixelCNN, gated PixelCNN, PixelCNN++ and WaveNet as exact normalizing flows of "
                    "discrete data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"arflows {arflows.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="log warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        command_parser = importlib.import_module(name).add_parser(subparsers)
        # Also accept -v/-q after the subcommand; SUPPRESS keeps the top-level count when they are absent.
        command_parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                    help="log debug messages")
        command_parser.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                                    help="log warnings and errors only")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the `arflows` command line and return its exit status.

    Exit status: 0 on success, 1 for a failed run, 2 for invalid input (printed as one line, without a
    traceback), and 128 + N when `train` stopped on signal N after saving a checkpoint.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose - args.quiet)

    from arflows.checkpoint import CheckpointError

    try:
        return int(args.handler(args) or 0)
    except (UsageError, CheckpointError) as error:
        print_error(args.command, str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        # A second Ctrl-C during training, or one outside it: stop without a traceback.
        logging.getLogger("arflows.cli").warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
