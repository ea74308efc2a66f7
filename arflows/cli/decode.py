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
    audio_format,
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

Audio latents give DIR/clip_NNNNNN.wav per clip (16-bit PCM at the sample rate of the training data,
each clip at its own length), waveforms.png and decoded.npz with q (N×1×T, padded with 0 after each
clip's end), lengths, indices and labels. Decoding audio latents from 'arflows encode' returns the
quantized clips exactly; the WAV files hold the levels mapped back to samples, which quantize to the
same levels again.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows decode`."""
    parser = subparsers.add_parser(
        "decode", help="decode a latent file back to data (PNG images or WAV files)",
        description="Invert the flow on the latents of a file written by 'arflows encode' and write the data "
                    "as PNG images, or as WAV files for audio.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("latents", metavar="LATENTS.npz", help="latent file written by 'arflows encode'")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the decoded images or WAV files")
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
    try:
        check_latents_match_flow(latent_file, loaded.flow, loaded.fingerprint,
                                 allow_other_weights=args.allow_other_weights)
    except LatentFileError as error:
        raise UsageError(str(error)) from error
    if loaded.flow.is_audio:
        return _decode_audio(args, loaded, latent_file, out)

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


def _decode_audio(args: argparse.Namespace, loaded: Any, latent_file: Any, out: Path) -> int:
    """Decode audio latents to WAV files, one per clip at its own length; return the exit status."""
    import numpy as np

    from arflows.checkpoint import atomic_write_bytes
    from arflows.data import save_wav
    from arflows.latent import save_figure
    from arflows.latent.audio import decode_clips, unpad
    from arflows.latent.audio_figures import waveform_figure

    audio = audio_format(loaded.metadata, stored=latent_file.metadata)
    lengths = latent_file.lengths
    if lengths is None:
        lengths = np.full(latent_file.latents.shape[0], latent_file.latents.shape[-1], dtype=np.int64)
    q = decode_clips(loaded.flow, latent_file.latents, lengths, batch_size=args.batch_size,
                     naive=True if args.naive else None)
    num_bins = loaded.flow.num_bins

    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, q=q, lengths=lengths, indices=latent_file.indices, labels=latent_file.labels)
    atomic_write_bytes(out / "decoded.npz", buffer.getvalue())
    for clip, index in zip(unpad(q, lengths), latent_file.indices):
        save_wav(out / f"clip_{index:06d}.wav", clip, audio.sample_rate, num_bins=num_bins,
                 quantization=audio.quantization)
    titles = [f"clip {index} ({length} samples)" for index, length in zip(latent_file.indices, lengths)]
    save_figure(waveform_figure(q, lengths, num_bins, quantization=audio.quantization, sample_rate=audio.sample_rate,
                                titles=titles, title=f"decoded from {latent_file.path.name}"),
                out / "waveforms.png")

    print(f"decoded {len(q)} clips from {latent_file.path} ({int(lengths.sum())} samples, K={num_bins}, "
          f"{audio.quantization})")
    print(f"audio        {out}/clip_NNNNNN.wav ({audio.sample_rate} Hz), {out / 'waveforms.png'}")
    print(f"data         {out / 'decoded.npz'}")
    return 0
