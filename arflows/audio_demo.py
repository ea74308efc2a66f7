"""`arflows demo --audio`: train a tiny WaveNet on spoken digits and report every latent tool on speech."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from matplotlib.figure import Figure

from arflows.demo import DemoResult, _prepare_output, _read_metrics, training_curve_figure

__all__ = [
    "AUDIO_DEMO_HYPERPARAMETERS",
    "AUDIO_DEMO_OUTPUTS",
    "DEFAULT_AUDIO_MINUTES",
    "default_audio_data",
    "run_audio_demo",
]

logger = logging.getLogger(__name__)

# The Free Spoken Digit Dataset's training recordings, where a full checkout of the project keeps them:
# next to the repository, in shared/data. The first existing candidate wins.
_FSDD_RELATIVE = Path("shared") / "data" / "fsdd" / "train"

# A categorical WaveNet of one cycle of 8 dilated layers (receptive field 257 samples, 32 ms at 8 kHz) with
# 16 residual channels and 24,528 parameters. With the settings below and the default 2 minutes, it trained
# 1,151 steps on one thread of a 2-core machine shared with other jobs and reached 4.69 test bits/sample;
# the whole demo took 2.5 minutes. Sampling and decoding are one step per sample.
AUDIO_DEMO_MODEL = "wavenet"
AUDIO_DEMO_HYPERPARAMETERS = {"residual_channels": 16, "dilation_channels": 16, "skip_channels": 32,
                              "num_layers": 8, "num_cycles": 1, "output": "categorical"}
AUDIO_SEGMENT_LENGTH = 1024

# Reading 600 of the 2,700 recordings keeps each validation pass (60 whole clips) to a few seconds.
AUDIO_MAX_FILES = 600

DEFAULT_AUDIO_MINUTES = 2.0

AUDIO_TRAINING_SETTINGS = {
    "batch_size": 8,
    "lr": 3e-3,
    "lr_decay": 0.9995,
    "ema_decay": 0.99,
    "eval_every": "0.5min",
    "checkpoint_every": "10min",
    "log_every": 25,
}

# Files and folders of DIR that the audio demo writes. --force removes exactly these first.
AUDIO_DEMO_OUTPUTS = ("run", "wav", "report.md", "summary.json", "latents.npz", "training_curve.png",
                      "data_vs_latent.png", "data_histogram.png", "data_ks_map.png", "samples_histogram.png",
                      "samples_ks_map.png", "correlations.png", "interpolation.png", "samples.png")

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the previous thread count.

    The demo's network is tiny, and sequential decoding runs a few small products per sample. On a 2-core
    machine shared with other jobs, two threads were far slower than one: decoding 4 clips of 2,000
    samples took 21 to 37 s against 0.6 s, and a training step about 3.7 s against 0.15 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def default_audio_data() -> str | None:
    """Return ``wav:PATH`` for the spoken digits beside the working folder or the repository, or None.

    Looks for ``../shared/data/fsdd/train`` relative to the current folder, then relative to the folder
    that contains the ``arflows`` package (the repository root of a source checkout).
    """
    repository = Path(__file__).resolve().parents[1]
    for base in (Path.cwd().parent, repository.parent):
        candidate = base / _FSDD_RELATIVE
        if candidate.is_dir():
            return f"wav:{candidate}"
    return None


def _check_arguments(minutes: float, counts: dict[str, int], seconds: dict[str, float]) -> None:
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if counts["num_steps"] < 2:
        raise ValueError(f"num_steps must be at least 2 (both endpoints), got {counts['num_steps']}")
    for name, value in seconds.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def run_audio_demo(
    out: PathLike = "demo-audio",
    *,
    data: str | None = None,
    minutes: float = DEFAULT_AUDIO_MINUTES,
    max_steps: int | None = None,
    force: bool = False,
    seed: int = 0,
    device: str = "cpu",
    max_files: int = AUDIO_MAX_FILES,
    num_encoded: int = 20,
    num_decoded: int = 4,
    num_samples: int = 4,
    sample_seconds: float = 0.5,
    num_steps: int = 5,
) -> DemoResult:
    """Train a tiny WaveNet on real recordings, evaluate it exactly, run every latent tool, write a report.

    Everything runs on one torch thread (see :func:`_one_thread`), and the previous count is restored.

    Args:
        out: Output folder: ``run/`` (the training run), ``wav/`` (decoded test clips, samples and the
            interpolation as WAV files), ``report.md``, ``summary.json``, ``latents.npz`` and the figures.
        data: ``wav:PATH`` of the recordings; None uses :func:`default_audio_data`.
        minutes: Training time limit in minutes of wall time.
        max_steps: Optional limit on optimizer steps; training stops at the first limit reached.
        force: Replace the demo's files in a non-empty ``out``.
        seed: Seed of the file choice, training, noise, samples and the interpolation pair.
        device: Where to train and run the flow.
        max_files: Recordings read (a seeded random choice), before the splits are made.
        num_encoded: Test clips encoded whole and inspected.
        num_decoded: Of those, clips decoded back to check exactness (one sequential step per sample).
        num_samples: Samples drawn (written as WAV files, and re-encoded for the uniformity check).
        sample_seconds: Duration of each sample and of the interpolated clips.
        num_steps: Clips of the interpolation, endpoints included.

    Returns:
        Where the report and figures are, and the numbers they show.

    Raises:
        ValueError: If no recordings are found, ``out`` is not empty without ``force``, or an argument is
            out of range.
    """
    _check_arguments(minutes, {"max_files": max_files, "num_encoded": num_encoded, "num_decoded": num_decoded,
                               "num_samples": num_samples, "num_steps": num_steps},
                     {"sample_seconds": sample_seconds})
    spec = data or default_audio_data()
    if spec is None:
        raise ValueError("no recordings for the audio demo: ../shared/data/fsdd/train does not exist next to the "
                         "current folder or the repository; pass --audio-data wav:PATH (a folder of WAV files)")
    if not spec.startswith("wav:"):
        raise ValueError(f"the audio demo needs a folder of WAV files as wav:PATH, got {spec!r}")
    out = Path(out)
    _prepare_output(out, force, AUDIO_DEMO_OUTPUTS)
    with _one_thread():
        return _run(out, spec, minutes=minutes, max_steps=max_steps, seed=seed, device=device, max_files=max_files,
                    num_encoded=num_encoded, num_decoded=num_decoded, num_samples=num_samples,
                    sample_seconds=sample_seconds, num_steps=num_steps)


def _run(out: Path, spec: str, *, minutes: float, max_steps: int | None, seed: int, device: str, max_files: int,
         num_encoded: int, num_decoded: int, num_samples: int, sample_seconds: float,
         num_steps: int) -> DemoResult:
    """Train, evaluate, encode, decode, inspect, interpolate and sample; see :func:`run_audio_demo`."""
    from arflows.checkpoint import load_flow
    from arflows.data import load_dataset
    from arflows.latent import encode_split, inspect_latents, save_latents
    from arflows.training import TrainingConfig, evaluate_dataset, train

    # Training.
    config = TrainingConfig(model=AUDIO_DEMO_MODEL, data=spec, out=str(out / "run"),
                            hyperparameters=dict(AUDIO_DEMO_HYPERPARAMETERS), segment_length=AUDIO_SEGMENT_LENGTH,
                            data_options={"max_examples": max_files, "seed": seed}, max_minutes=minutes,
                            max_steps=max_steps, seed=seed, device=device, **AUDIO_TRAINING_SETTINGS)
    started = time.monotonic()
    summary = train(config)
    training_seconds = time.monotonic() - started
    logger.info("trained %d steps in %.0f s", summary.step, training_seconds)

    flow, metadata = load_flow(out / "run", weights="averaged", map_location=device)
    dataset = load_dataset(spec, max_examples=max_files, seed=seed)
    sample_rate, quantization = dataset.sample_rate, dataset.quantization
    started = time.monotonic()
    test = evaluate_dataset(flow, dataset.split("test"))
    evaluation_seconds = time.monotonic() - started
    generator = torch.Generator().manual_seed(seed)
    (out / "wav").mkdir()
    figures: dict[str, Path] = {}

    def save(name: str, figure: Figure) -> None:
        from arflows.latent import save_figure

        figures[name] = out / f"{name}.png"
        save_figure(figure, figures[name])

    save("training_curve", training_curve_figure(_read_metrics(out / "run" / "metrics.jsonl"),
                                                 test_bits_per_dim=test.bits_per_dim, unit="bits/sample"))

    # Encoding whole test clips, and decoding some of them back as a check of exactness.
    encoded = encode_split(flow, dataset, "test", max_examples=num_encoded, generator=generator)
    save_latents(out / "latents.npz", encoded.latents, encoded.indices, encoded.labels, flow=flow,
                 lengths=encoded.lengths,
                 info={"checkpoint": str(metadata["path"]), "weights": metadata["weights"],
                       "dataset": {"spec": spec, "options": {"max_examples": max_files, "seed": seed}},
                       "split": "test", "noise": "uniform", "seed": seed, "sample_rate": sample_rate,
                       "quantization": quantization})
    save("data_vs_latent", encoded.figure(quantization=quantization, sample_rate=sample_rate,
                                          title="test recordings and their latents"))
    decoded = _decode_and_write(flow, encoded, min(num_decoded, len(encoded.indices)), out / "wav",
                                sample_rate, quantization)

    # Uniformity of data latents and of re-encoded samples. The samples are also written as WAV files.
    sample_length = max(1, round(sample_seconds * sample_rate))
    started = time.monotonic()
    inspection = inspect_latents(flow, encoded.latents, lengths=encoded.lengths, num_samples=num_samples,
                                 sample_length=sample_length, generator=generator)
    sample_seconds_taken = time.monotonic() - started
    for name, figure in inspection.figures().items():
        save(name, figure)
    save("samples", _write_samples(inspection.samples, out / "wav", flow.num_bins, sample_rate, quantization))

    # Gaussian interpolation between two test clips cut or padded to the sample length.
    interpolation = _interpolate_pair(flow, encoded, num_steps, sample_length, generator, quantization,
                                      out / "wav", sample_rate)
    save("interpolation", interpolation.pop("figure"))

    numbers = {
        "model": AUDIO_DEMO_MODEL,
        "hyperparameters": dict(AUDIO_DEMO_HYPERPARAMETERS),
        "num_parameters": int(sum(parameter.numel() for parameter in flow.parameters())),
        "receptive_field": metadata.get("receptive_field"),
        "segment_length": AUDIO_SEGMENT_LENGTH,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "dataset": {"spec": spec, "max_files": max_files, "sample_rate": sample_rate, "quantization": quantization,
                    "num_bins": dataset.num_bins, "num_train": dataset.num_examples("train"),
                    "num_validation": dataset.num_examples("validation"), "num_test": dataset.num_examples("test"),
                    "test_samples": test.num_dims},
        "training": {"step": summary.step, "epochs": summary.epoch, "seconds": training_seconds,
                     "stop_reason": summary.stop_reason, "best_val_bits_per_dim": summary.best_val_bits_per_dim,
                     "checkpoint": str(metadata["path"])},
        "test_bits_per_sample": test.bits_per_dim,
        "evaluation_seconds": evaluation_seconds,
        "encoded_bits_per_sample": encoded.bits_per_dim,
        "num_encoded": len(encoded.indices),
        **decoded,
        "num_samples": num_samples,
        "sample_length": sample_length,
        "sample_seconds": sample_seconds_taken,
        "inspection": inspection.summary,
        "interpolation": interpolation,
        "figures": {name: path.name for name, path in figures.items()},
    }
    (out / "summary.json").write_text(json.dumps(numbers, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    report = out / "report.md"
    _write_report(report, numbers, figures)
    logger.info("audio demo report written to %s", report)
    return DemoResult(out=out, report=report, numbers=numbers, figures=figures)


def _decode_and_write(flow: torch.nn.Module, encoded: Any, count: int, folder: Path, sample_rate: int,
                      quantization: str) -> dict[str, Any]:
    """Decode the first ``count`` encoded clips, compare them with the data and write them as WAV files."""
    from arflows.data import save_wav
    from arflows.latent.audio import decode_clips, unpad

    lengths = encoded.lengths[:count]
    started = time.monotonic()
    # The padded latents are cut to the longest of these clips, so that no step past it is decoded.
    q = decode_clips(flow, encoded.latents[:count, :, : int(lengths.max())], lengths)
    seconds = time.monotonic() - started
    exact = all(np.array_equal(clip, data) for clip, data in zip(unpad(q, lengths), unpad(encoded.data, lengths)))
    files = []
    for clip, index in zip(unpad(q, lengths), encoded.indices[:count]):
        path = folder / f"test_{index:06d}.wav"
        save_wav(path, clip, sample_rate, num_bins=flow.num_bins, quantization=quantization)
        files.append(f"wav/{path.name}")
    return {"num_decoded": count, "decoded_samples": int(lengths.sum()), "decode_exact": bool(exact),
            "decode_seconds": seconds, "decoded_files": files}


def _write_samples(samples: np.ndarray, folder: Path, num_bins: int, sample_rate: int, quantization: str) -> Figure:
    """Write each sample as wav/sample_N.wav and return the figure of their waveforms."""
    from arflows.data import save_wav
    from arflows.latent.audio_figures import waveform_figure

    for number, clip in enumerate(samples):
        save_wav(folder / f"sample_{number}.wav", clip, sample_rate, num_bins=num_bins, quantization=quantization)
    return waveform_figure(samples, None, num_bins, quantization=quantization, sample_rate=sample_rate,
                           titles=[f"wav/sample_{number}.wav" for number in range(len(samples))],
                           title=f"{len(samples)} samples from the flow")


def _interpolate_pair(flow: torch.nn.Module, encoded: Any, num_steps: int, length: int,
                      generator: torch.Generator, quantization: str, folder: Path,
                      sample_rate: int) -> dict[str, Any]:
    """Interpolate between two random encoded test clips and write each step as a WAV file."""
    from arflows.data import save_wav
    from arflows.latent import interpolate
    from arflows.latent.audio import crop_or_pad, silence_level, unpad

    if len(encoded.indices) < 2:
        raise ValueError("the interpolation needs at least two test clips; raise num_encoded")
    silence = silence_level(int(flow.num_bins), quantization)
    first, second = torch.randperm(len(encoded.indices), generator=generator)[:2].tolist()
    clips = unpad(encoded.data, encoded.lengths)
    q0 = torch.from_numpy(crop_or_pad(clips[first], length, silence))[None]  # (1, 1, length)
    q1 = torch.from_numpy(crop_or_pad(clips[second], length, silence))[None]
    result = interpolate(flow, q0, q1, num_steps, mode="gaussian", generator=generator)
    files = []
    for step in range(num_steps):
        path = folder / f"interpolation_{step}.wav"
        save_wav(path, result.data[0, step], sample_rate, num_bins=flow.num_bins, quantization=quantization)
        files.append(f"wav/{path.name}")
    return {"indices": [int(encoded.indices[first]), int(encoded.indices[second])], "steps": num_steps,
            "length": length, "endpoints_exact": result.endpoints_exact, "files": files,
            "figure": result.figure(quantization=quantization, sample_rate=sample_rate)}


def _write_report(path: Path, numbers: dict[str, Any], figures: dict[str, Path]) -> None:
    """Write the Markdown report: each figure with the numbers it shows, and links to the WAV files."""
    data = numbers["inspection"]["data"]
    samples = numbers["inspection"]["samples"]
    training = numbers["training"]
    dataset = numbers["dataset"]
    rate = dataset["sample_rate"]
    best_val = training["best_val_bits_per_dim"]
    best_val = "n/a" if best_val is None else f"{best_val:.4f}"
    threads = f"{numbers['torch_threads']} CPU thread{'' if numbers['torch_threads'] == 1 else 's'}"

    def image(name: str) -> str:
        return f"![{name}]({figures[name].name})"

    def links(files: list[str]) -> str:
        return ", ".join(f"[{Path(name).name}]({name})" for name in files)

    def correlation(source: dict[str, Any]) -> str:
        result = source["neighbour_correlations"].get("left")
        if result is None or result["correlation"] is None:
            return "n/a"
        return f"r = {result['correlation']:.4f} (p = {result['p_value']:.2g}, n = {result['num_pairs']})"

    lines = [
        f"# arflows demo: WaveNet as an exact flow on spoken digits ({dataset['spec']})",
        "",
        (
            f"Data: {dataset['max_files']} recordings chosen at random ({dataset['num_train']} training, "
            f"{dataset['num_validation']} validation, {dataset['num_test']} test clips) at {rate} Hz, "
            f"{dataset['quantization']} quantized to K = {dataset['num_bins']} levels. Model: categorical WaveNet "
            f"{numbers['hyperparameters']} ({numbers['num_parameters']:,} parameters, receptive field "
            f"{numbers['receptive_field']} samples = {1000 * numbers['receptive_field'] / rate:.0f} ms), trained on "
            f"random crops of {numbers['segment_length']} samples for {training['step']} steps ({training['seconds']:.0f} s, "
            f"stopped by {training['stop_reason']}) on {numbers['device']} with {threads}."
        ),
        "",
        "## Exact likelihood",
        "",
        "| split | bits/sample |",
        "|---|---|",
        (
            f"| test ({dataset['num_test']} whole clips, {dataset['test_samples']} samples, exact) | "
            f"{numbers['test_bits_per_sample']:.4f} |"
        ),
        f"| best validation during training (whole clips; the checkpoint used here) | {best_val} |",
        f"| uniform model, log2({dataset['num_bins']}) | {math.log2(dataset['num_bins']):.4f} |",
        "",
        image("training_curve"),
        "",
        "## Encoding",
        "",
        (
            f"{numbers['num_encoded']} test clips are encoded whole, each in one network pass: x = (q + u)/K with "
            f"uniform noise u, z = f(x). Decoding the latents of {numbers['num_decoded']} of them "
            f"({numbers['decoded_samples']} samples, one sequential step per sample, "
            f"{numbers['decode_seconds']:.1f} s) returns their quantized audio "
            f"{'exactly' if numbers['decode_exact'] else 'NOT exactly'}: {links(numbers['decoded_files'])}."
        ),
        "",
        image("data_vs_latent"),
        "",
        "## Are the latents uniform?",
        "",
        "Kolmogorov-Smirnov tests against U(0, 1) over all latents:",
        "",
        f"- test clips: {data['ks']['text']}",
        (
            f"- {numbers['num_samples']} model samples of {numbers['sample_length']} samples, re-encoded with "
            f"fresh noise: {samples['ks']['text']}"
        ),
        "",
        f"Verdict: {numbers['inspection']['verdict']}.",
        "",
        (
            "A correct flow maps its own samples to exactly uniform latents, so the second test checks the "
            "implementation; the first measures how well the model fits speech."
        ),
        "",
        image("data_histogram"),
        "",
        image("samples_histogram"),
        "",
        "KS statistic at each step t across clips (data: the steps every test clip has):",
        "",
        image("data_ks_map"),
        "",
        image("samples_ks_map"),
        "",
        (
            "Uniform marginals are necessary but not sufficient: the latents must also be independent. Pearson "
            f"correlation of each latent with the previous step: test clips {correlation(data)}, re-encoded "
            f"samples {correlation(samples)}."
        ),
        "",
        image("correlations"),
        "",
        "## Interpolation",
        "",
        (
            f"Test clips {numbers['interpolation']['indices'][0]} and {numbers['interpolation']['indices'][1]}, cut or "
            f"padded with silence to {numbers['interpolation']['length']} samples, in "
            f"{numbers['interpolation']['steps']} Gaussian steps (y = Φ⁻¹(z) mixed with norm-preserving weights). "
            "The endpoints decode to the two clips "
            f"{'exactly' if numbers['interpolation']['endpoints_exact'] else 'NOT exactly'}: "
            f"{links(numbers['interpolation']['files'])}."
        ),
        "",
        image("interpolation"),
        "",
        "## Samples",
        "",
        (
            f"{numbers['num_samples']} samples of {numbers['sample_length']} samples, decoded from uniform latents "
            f"and re-encoded ({numbers['sample_seconds']:.1f} s): "
            f"{links([f'wav/sample_{number}.wav' for number in range(numbers['num_samples'])])}."
        ),
        "",
        image("samples"),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
