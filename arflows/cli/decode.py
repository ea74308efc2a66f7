"""`arflows decode`: data f⁻¹(z) of a latent file, as PNG images and an .npz of integers."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path
from typing import Any

from arflows.cli.common import UsageError
from arflows.cli.latent_common import (
    add_checkpoint_arguments,
    add_decoding_arguments,
    check_image_flow,
    check_output_dir,
    load_checkpoint_flow,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows encode runs/digits --data digits --out latents.npz
  arflows decode runs/digits latents.npz --out decoded/

DIR receives example_NNNNNN.png per latent (NNNNNN: the example's index in its dataset; grey levels
scaled by 255/(K-1), which keeps every level distinct), grid.png and decoded.npz with the integer data
(q, indices, labels). Decoding latents written by 'arflows encode' with the same checkpoint returns
the original examples exactly. Decoding is sequential, one step per sub-pixel or pixel; --naive runs
the whole network at every step instead of the flow's cached decoder.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows decode`."""
    parser = subparsers.add_parser(
        "decode", help="decode a latent file back to data (PNG images)",
        description="Invert the flow on the latents of a file written by 'arflows encode' and write the data "
                    "as PNG images.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("latents", metavar="LATENTS.npz", help="latent file written by 'arflows encode'")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the decoded images")
    parser.add_argument("--allow-other-weights", action="store_true",
                        help="decode latents encoded by other weights of the same architecture (with a "
                             "warning) instead of rejecting them")
    add_decoding_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `arflows decode`; return the exit status."""
    import numpy as np
    import torch

    from arflows.checkpoint import atomic_write_bytes
    from arflows.latent import (
        LatentFileError,
        check_latents_match_flow,
        decode_latents,
        load_latents,
        sample_grid_figure,
        save_figure,
        write_png,
    )

    try:
        latent_file = load_latents(args.latents)
    except LatentFileError as error:
        raise UsageError(str(error)) from error
    out = check_output_dir(Path(args.out), force=args.force)

    loaded = load_checkpoint_flow(args)
    check_image_flow(loaded.flow, "decode")
    try:
        check_latents_match_flow(latent_file, loaded.flow, loaded.fingerprint,
                                 allow_other_weights=args.allow_other_weights)
    except LatentFileError as error:
        raise UsageError(str(error)) from error

    q = decode_latents(loaded.flow, torch.from_numpy(latent_file.latents), batch_size=args.batch_size,
                       naive=True if args.naive else None).numpy()
    num_bins = loaded.flow.num_bins

    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, q=q, indices=latent_file.indices, labels=latent_file.labels)
    atomic_write_bytes(out / "decoded.npz", buffer.getvalue())
    for image, index in zip(q, latent_file.indices):
        write_png(image, num_bins, out / f"example_{index:06d}.png")
    save_figure(sample_grid_figure(q[:64], num_bins, title=f"decoded from {latent_file.path.name}"),
                out / "grid.png")

    print(f"decoded {len(q)} examples from {latent_file.path} ({'×'.join(map(str, q.shape[1:]))}, K={num_bins})")
    print(f"images       {out}/example_NNNNNN.png, {out / 'grid.png'}")
    print(f"data         {out / 'decoded.npz'}")
    return 0
