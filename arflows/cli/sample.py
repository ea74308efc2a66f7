"""`arflows sample`: draw samples by decoding uniform latents, as a grid and as single images."""

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
    add_length_arguments,
    audio_format,
    check_output_dir,
    check_output_files,
    load_checkpoint_flow,
    positive_int,
    resolve_length,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows sample runs/digits -n 64 --out samples.png
  arflows sample runs/mnist -n 16 --seed 3 --out mnist_samples.png
  arflows sample runs/speech -n 4 --seconds 0.5 --out speech_samples.png

Besides the grid, a folder named like the grid without .png receives sample_NNNN.png per sample and
samples.npz with the integer data. Sampling is a sequential decode, one step per sub-pixel (pixelcnn,
gated_pixelcnn) or pixel (pixelcnn_pp); --naive runs the whole network at every step instead of the
flow's cached decoder.

Audio checkpoints write GRID.png with the waveforms and, in the folder, sample_NNNN.wav (16-bit PCM
at the sample rate of the training data) and samples.npz. --length sets the samples per clip, or
--seconds the duration; the default is the training crop length. Sampling audio is one sequential step
per sample.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows sample`."""
    parser = subparsers.add_parser(
        "sample", help="draw samples from a checkpoint (PNG grid and image or WAV files)",
        description="Draw samples q = f⁻¹(z) for uniform latents z and write them as a grid and as images, or "
                    "as waveforms and WAV files for audio.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("-n", "--num-samples", type=positive_int, default=16, metavar="N",
                        help="number of samples (default: 16)")
    parser.add_argument("--out", required=True, metavar="GRID.png", help="grid image to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default: 0)")
    parser.add_argument("--columns", type=positive_int, default=8,
                        help="images (or waveforms, at most 4) per grid row (default: 8)")
    add_length_arguments(parser, default_text="the training crop length, the flow's data shape")
    parser.add_argument("--sample-rate", type=positive_int, default=None, metavar="HZ",
                        help="audio only: sample rate of the WAV files, for checkpoints that do not store it "
                             "(default: the checkpoint's)")
    add_decoding_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `arflows sample`; return the exit status."""
    import numpy as np
    import torch

    from arflows.checkpoint import atomic_write_bytes
    from arflows.latent import decode_latents, sample_grid_figure, save_figure, write_png
    from arflows.latent.encoding import flow_dtype

    out = Path(args.out)
    if out.suffix != ".png":
        raise UsageError(f"--out {out} must end in .png")
    check_output_files([out], force=args.force)
    images_dir = check_output_dir(out.with_suffix(""), force=args.force)

    loaded = load_checkpoint_flow(args)
    flow = loaded.flow
    if flow.is_audio:
        return _sample_audio(args, loaded, out, images_dir)
    resolve_length(args, flow, None)
    generator = torch.Generator().manual_seed(args.seed)
    z = torch.rand((args.num_samples, *flow.data_shape), generator=generator, dtype=flow_dtype(flow))
    q = decode_latents(flow, z, batch_size=args.batch_size, naive=True if args.naive else None).numpy()

    images_dir.mkdir(parents=True, exist_ok=True)
    save_figure(sample_grid_figure(q, flow.num_bins, num_columns=args.columns,
                                   title=f"{args.num_samples} samples, seed {args.seed}"), out)
    for number, image in enumerate(q):
        write_png(image, flow.num_bins, images_dir / f"sample_{number:04d}.png")
    buffer = io.BytesIO()
    np.savez(buffer, q=q)
    atomic_write_bytes(images_dir / "samples.npz", buffer.getvalue())

    print(f"sampled {len(q)} examples ({'×'.join(map(str, q.shape[1:]))}, K={flow.num_bins}) from "
          f"{loaded.metadata['path']}")
    print(f"grid         {out}")
    print(f"images       {images_dir}/sample_NNNN.png, {images_dir / 'samples.npz'}")
    return 0


def _sample_audio(args: argparse.Namespace, loaded: Any, out: Path, clips_dir: Path) -> int:
    """Draw audio samples and write WAV files and a waveform figure; return the exit status."""
    import numpy as np
    import torch

    from arflows.checkpoint import atomic_write_bytes
    from arflows.data import save_wav
    from arflows.latent import decode_latents, save_figure
    from arflows.latent.audio_figures import waveform_figure
    from arflows.latent.encoding import flow_dtype

    flow = loaded.flow
    audio = audio_format(loaded.metadata, sample_rate=args.sample_rate)
    length = resolve_length(args, flow, audio.sample_rate) or flow.data_shape[-1]
    generator = torch.Generator().manual_seed(args.seed)
    z = torch.rand((args.num_samples, 1, length), generator=generator, dtype=flow_dtype(flow))
    q = decode_latents(flow, z, batch_size=args.batch_size, naive=True if args.naive else None).numpy()

    clips_dir.mkdir(parents=True, exist_ok=True)
    for number, clip in enumerate(q):
        save_wav(clips_dir / f"sample_{number:04d}.wav", clip, audio.sample_rate, num_bins=flow.num_bins,
                 quantization=audio.quantization)
    buffer = io.BytesIO()
    np.savez(buffer, q=q)
    atomic_write_bytes(clips_dir / "samples.npz", buffer.getvalue())
    save_figure(waveform_figure(q, None, flow.num_bins, quantization=audio.quantization, sample_rate=audio.sample_rate,
                                num_columns=min(args.columns, 4), titles=[f"sample {number}" for number in range(len(q))],
                                title=f"{args.num_samples} samples of {length} samples "
                                      f"({length / audio.sample_rate:.3g} s), seed {args.seed}"), out)

    print(f"sampled {len(q)} clips of {length} samples ({length / audio.sample_rate:.3g} s at {audio.sample_rate} Hz, "
          f"K={flow.num_bins}) from {loaded.metadata['path']}")
    print(f"waveforms    {out}")
    print(f"audio        {clips_dir}/sample_NNNN.wav, {clips_dir / 'samples.npz'}")
    return 0
