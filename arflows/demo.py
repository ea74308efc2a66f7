"""`arflows demo`: train a small flow on scikit-learn's digits and report every latent-space tool on it."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_MINUTES",
    "DEMO_HYPERPARAMETERS",
    "DEMO_MODEL",
    "DemoResult",
    "run_demo",
    "training_curve_figure",
]

logger = logging.getLogger(__name__)

# The digits ship inside scikit-learn, so the demo needs no download: 1,797 images of 8×8, K = 17.
DEMO_DATA = "digits"

# A gated PixelCNN (no blind spot) of 5 blocks with 32 filters and dropout 0.3: 115k parameters. Measured
# with these training settings for 4 minutes on a 2-core machine shared with other jobs, one torch thread
# (about 2,000 steps): 1.713 test bits/dim at the best validation checkpoint, still improving. Without
# dropout the same network reached 1.729 and validation rose again after 1,700 steps. 48 filters with
# dropout 0.4 reached 1.701 but overfitted after 1,200 steps. In 1-minute runs with similar settings and
# no dropout, a 48-filter gated PixelCNN (1.78), a PixelCNN (1.85) and a two-stage PixelCNN++ (1.82) did
# worse than this network (1.73).
DEMO_MODEL = "gated_pixelcnn"
DEMO_HYPERPARAMETERS = {"num_filters": 32, "num_blocks": 5, "dropout": 0.3}

DEFAULT_MINUTES = 4.0

# Optimisation for short runs: a larger step than the PixelCNN++ default, decaying by e^-1 every 5,000
# steps, and a short weight average that tracks the fast-moving weights.
TRAINING_SETTINGS = {
    "batch_size": 32,
    "lr": 2e-3,
    "lr_decay": 0.9998,
    "ema_decay": 0.995,
    "eval_every": "0.5min",
    "checkpoint_every": "10min",
    "log_every": 25,
}

# Files and folders of DIR that the demo writes. --force removes exactly these first.
DEMO_OUTPUTS = ("run", "report.md", "summary.json", "latents.npz", "training_curve.png", "data_vs_latent.png",
                "data_histogram.png", "data_ks_map.png", "samples_histogram.png", "samples_ks_map.png",
                "correlations.png", "interpolation_gaussian.png", "interpolation_linear.png", "samples.png")

PathLike = Union[str, os.PathLike]


@dataclass
class DemoResult:
    """Paths and numbers written by :func:`run_demo`.

    Attributes:
        out: The output folder.
        report: The Markdown report, which shows every figure with its numbers.
        numbers: The report's numbers (also in ``summary.json``).
        figures: Figure name -> PNG file.
    """

    out: Path
    report: Path
    numbers: dict[str, Any]
    figures: dict[str, Path]


def _prepare_output(out: Path, force: bool, outputs: tuple[str, ...] = DEMO_OUTPUTS) -> None:
    """Create ``out``, or with ``force`` delete the files and folders named in ``outputs`` from it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a directory")
    existing = sorted(item.name for item in out.iterdir()) if out.is_dir() else []
    if existing and not force:
        raise ValueError(f"--out {out} is not empty ({', '.join(existing[:5])}); pass --force to replace the "
                         "demo's files in it")
    for name in existing:
        if name in outputs:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_curve_figure(records: list[dict[str, Any]], *, test_bits_per_dim: float | None = None,
                          unit: str = "bits/dim") -> Figure:
    """Plot training and validation bits/dim (``unit`` names it, bits/sample for audio) against the step."""
    figure = Figure(figsize=(6.0, 3.5), dpi=100)
    axes = figure.subplots()
    for key, label in (("train_bits_per_dim", "training batches (raw weights)"),
                       ("val_bits_per_dim", "validation (averaged weights)")):
        points = [(record["step"], record[key]) for record in records if record.get(key) is not None]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    if test_bits_per_dim is not None:
        axes.axhline(test_bits_per_dim, color="black", linestyle="--", linewidth=1.0,
                     label=f"test, best validation checkpoint: {test_bits_per_dim:.3f}")
    axes.set_xlabel("step")
    axes.set_ylabel(unit)
    axes.set_title("exact negative log-likelihood during training", fontsize=9)
    axes.legend(fontsize=7)
    figure.subplots_adjust(bottom=0.15)
    return figure


def _format_p(ks: dict[str, Any]) -> str:
    return ks["text"]


def _write_report(path: Path, numbers: dict[str, Any], figures: dict[str, Path]) -> None:
    """Write the Markdown report: each figure with the numbers it shows."""
    data = numbers["inspection"]["data"]
    samples = numbers["inspection"]["samples"]
    training = numbers["training"]
    correlations = {
        source: numbers["inspection"][source]["neighbour_correlations"] for source in ("data", "samples")
    }

    threads = f"{numbers['torch_threads']} CPU thread{'' if numbers['torch_threads'] == 1 else 's'}"
    best_val = training["best_val_bits_per_dim"]
    best_val = "n/a" if best_val is None else f"{best_val:.4f}"

    def image(name: str) -> str:
        return f"![{name}]({figures[name].name})"

    def correlation_rows() -> list[str]:
        rows = ["| direction | data r (p) | re-encoded samples r (p) |", "|---|---|---|"]
        for direction in correlations["data"]:
            cells = []
            for source in ("data", "samples"):
                result = correlations[source].get(direction)
                if result is None or result["correlation"] is None:
                    cells.append("n/a")
                else:
                    cells.append(f"{result['correlation']:.4f} ({result['p_value']:.2g}, n = {result['num_pairs']})")
            rows.append(f"| {direction.replace('_', ' ')} | {cells[0]} | {cells[1]} |")
        return rows

    lines = [
        f"# arflows demo: {numbers['model']} as an exact flow on scikit-learn's digits",
        "",
        (
            f"Data: {numbers['dataset']['num_train']} training, {numbers['dataset']['num_validation']} validation and "
            f"{numbers['dataset']['num_test']} test images of 8×8 pixels with K = 17 grey levels. Model: "
            f"{numbers['model']} {numbers['hyperparameters']} ({numbers['num_parameters']:,} parameters), trained for "
            f"{training['step']} steps ({training['epochs']} epochs, {training['seconds']:.0f} s, stopped by "
            f"{training['stop_reason']}) on {numbers['device']} with {threads}."
        ),
        "",
        "## Exact likelihood",
        "",
        "| split | bits/dim |",
        "|---|---|",
        f"| test ({numbers['dataset']['num_test']} images, exact) | {numbers['test_bits_per_dim']:.4f} |",
        f"| best validation during training (the checkpoint used here) | {best_val} |",
        f"| uniform model, log2(17) | {math.log2(17):.4f} |",
        "",
        image("training_curve"),
        "",
        "## Encoding",
        "",
        (
            f"Each test image q is dequantized with uniform noise, x = (q + u)/K, and mapped to z = f(x) in one "
            f"network pass. Decoding {numbers['num_decoded']} of the test latents returns their test images "
            f"{'exactly' if numbers['decode_exact'] else 'NOT exactly'} ({numbers['decode_seconds']:.1f} s, "
            "sequential)."
        ),
        "",
        image("data_vs_latent"),
        "",
        "## Are the latents uniform?",
        "",
        "Kolmogorov-Smirnov tests against U(0, 1) over all latent sub-pixels:",
        "",
        f"- test data: {_format_p(data['ks'])}",
        f"- {numbers['num_samples']} model samples, re-encoded with fresh noise: {_format_p(samples['ks'])}",
        "",
        f"Verdict: {numbers['inspection']['verdict']}.",
        "",
        (
            "A correct flow maps its own samples to exactly uniform latents, so the second test checks the "
            "implementation; the first measures how well the model fits the digits."
        ),
        "",
        image("data_histogram"),
        "",
        image("samples_histogram"),
        "",
        (
            f"KS statistic per pixel across the test images (mean {data['ks_map']['mean_statistic']:.3f}, max "
            f"{data['ks_map']['max_statistic']:.3f}; {100 * data['ks_map']['fraction_p_below_0.01']:.0f}% of pixels "
            "have p < 0.01) and across the re-encoded samples (mean "
            f"{samples['ks_map']['mean_statistic']:.3f}; {100 * samples['ks_map']['fraction_p_below_0.01']:.0f}% "
            "with p < 0.01):"
        ),
        "",
        image("data_ks_map"),
        "",
        image("samples_ks_map"),
        "",
        (
            "Uniform marginals are necessary but not sufficient: the latents must also be independent. Pearson "
            "correlation of each latent with its neighbour:"
        ),
        "",
        *correlation_rows(),
        "",
        image("correlations"),
        "",
        "## Interpolation",
        "",
        (
            f"{numbers['interpolation']['pairs']} pairs of test images, {numbers['interpolation']['steps']} steps. "
            "Gaussian mode mixes y = Φ⁻¹(z) with norm-preserving weights and maps back with Φ; linear mode mixes z. "
            "The endpoints decode to the original images "
            f"{'exactly' if numbers['interpolation']['endpoints_exact'] else 'NOT exactly'}."
        ),
        "",
        image("interpolation_gaussian"),
        "",
        image("interpolation_linear"),
        "",
        "## Samples",
        "",
        f"{numbers['num_samples']} samples, decoded from uniform latents ({numbers['sample_seconds']:.1f} s).",
        "",
        image("samples"),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def run_demo(
    out: PathLike = "demo",
    *,
    minutes: float = DEFAULT_MINUTES,
    max_steps: int | None = None,
    force: bool = False,
    seed: int = 0,
    device: str = "cpu",
    num_samples: int = 64,
    num_pairs: int = 4,
    num_steps: int = 8,
    num_decoded: int | None = None,
) -> DemoResult:
    """Train a gated PixelCNN on the digits, evaluate it exactly, run every latent tool and write a report.

    Args:
        out: Output folder: ``run/`` (the training run), ``report.md``, ``summary.json``, ``latents.npz``
            and the figures.
        minutes: Training time limit in minutes of wall time.
        max_steps: Optional limit on optimizer steps; training stops at the first limit reached.
        force: Replace the demo's files in a non-empty ``out``.
        seed: Seed of training, noise, samples and the interpolation pairs.
        device: Where to train and run the flow.
        num_samples: Samples drawn (shown and re-encoded for the uniformity check).
        num_pairs: Interpolation pairs.
        num_steps: Images per interpolation, endpoints included.
        num_decoded: Test latents decoded back to check exactness (a sequential decode); None decodes all.

    Returns:
        Where the report and figures are, and the numbers they show.

    Raises:
        ValueError: If ``out`` is not empty without ``force``, or an argument is out of range.
    """
    from arflows.checkpoint import load_flow
    from arflows.data import load_dataset
    from arflows.latent import (
        decode_latents,
        encode_split,
        inspect_latents,
        interpolate,
        sample_grid_figure,
        save_figure,
        save_latents,
    )
    from arflows.training import TrainingConfig, evaluate_dataset, train

    if not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    for name, value in (("num_samples", num_samples), ("num_pairs", num_pairs), ("num_decoded", num_decoded)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (both endpoints), got {num_steps}")
    out = Path(out)
    _prepare_output(out, force)

    # Training.
    config = TrainingConfig(model=DEMO_MODEL, data=DEMO_DATA, out=str(out / "run"),
                            hyperparameters=dict(DEMO_HYPERPARAMETERS), max_minutes=minutes, max_steps=max_steps,
                            seed=seed, device=device, **TRAINING_SETTINGS)
    started = time.monotonic()
    summary = train(config)
    training_seconds = time.monotonic() - started
    logger.info("trained %d steps in %.0f s", summary.step, training_seconds)

    flow, metadata = load_flow(out / "run", weights="averaged", map_location=device)
    dataset = load_dataset(DEMO_DATA)
    test_bits = evaluate_dataset(flow, dataset.split("test")).bits_per_dim
    generator = torch.Generator().manual_seed(seed)
    figures: dict[str, Path] = {}

    def save(name: str, figure: Figure) -> None:
        figures[name] = out / f"{name}.png"
        save_figure(figure, figures[name])

    save("training_curve", training_curve_figure(_read_metrics(out / "run" / "metrics.jsonl"),
                                                 test_bits_per_dim=test_bits))

    # Encoding, and decoding back as a check of exactness.
    encoded = encode_split(flow, dataset, "test", generator=generator)
    save_latents(out / "latents.npz", encoded.latents, encoded.indices, encoded.labels, flow=flow,
                 info={"checkpoint": str(metadata["path"]), "weights": metadata["weights"], "dataset":
                       {"spec": DEMO_DATA, "options": {}}, "split": "test", "noise": "uniform", "seed": seed})
    save("data_vs_latent", encoded.figure(title="test digits and their latents"))
    started = time.monotonic()
    num_decoded = len(encoded.data) if num_decoded is None else min(num_decoded, len(encoded.data))
    decoded = decode_latents(flow, torch.from_numpy(encoded.latents[:num_decoded]))
    decode_seconds = time.monotonic() - started
    decode_exact = bool(np.array_equal(decoded.numpy(), encoded.data[:num_decoded]))

    # Uniformity of data latents and of re-encoded samples. The samples also fill the sample grid.
    started = time.monotonic()
    inspection = inspect_latents(flow, encoded.latents, num_samples=num_samples, generator=generator)
    sample_seconds = time.monotonic() - started
    for name, figure in inspection.figures().items():
        save(name, figure)
    save("samples", sample_grid_figure(inspection.samples, dataset.num_bins,
                                       title=f"{num_samples} samples from the flow"))

    # Interpolations between random pairs of test images, in both modes.
    chosen = torch.randperm(len(encoded.data), generator=generator)[: 2 * num_pairs]
    q = torch.from_numpy(encoded.data[chosen.numpy()])
    endpoints_exact = True
    for mode in ("gaussian", "linear"):
        result = interpolate(flow, q[:num_pairs], q[num_pairs:], num_steps, mode=mode, generator=generator)
        endpoints_exact = endpoints_exact and result.endpoints_exact
        save(f"interpolation_{mode}", result.figure())

    numbers = {
        "model": DEMO_MODEL,
        "hyperparameters": dict(DEMO_HYPERPARAMETERS),
        "num_parameters": int(sum(parameter.numel() for parameter in flow.parameters())),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "dataset": {"spec": DEMO_DATA, "num_train": dataset.num_examples("train"),
                    "num_validation": dataset.num_examples("validation"), "num_test": dataset.num_examples("test")},
        "training": {"step": summary.step, "epochs": summary.epoch, "seconds": training_seconds,
                     "stop_reason": summary.stop_reason, "best_val_bits_per_dim": summary.best_val_bits_per_dim,
                     "checkpoint": str(metadata["path"])},
        "test_bits_per_dim": test_bits,
        "encoded_test_bits_per_dim": encoded.bits_per_dim,
        "num_decoded": num_decoded,
        "decode_exact": decode_exact,
        "decode_seconds": decode_seconds,
        "num_samples": num_samples,
        "sample_seconds": sample_seconds,
        "inspection": inspection.summary,
        "interpolation": {"pairs": num_pairs, "steps": num_steps, "endpoints_exact": endpoints_exact},
        "figures": {name: path.name for name, path in figures.items()},
    }
    (out / "summary.json").write_text(json.dumps(numbers, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    report = out / "report.md"
    _write_report(report, numbers, figures)
    logger.info("demo report written to %s", report)
    return DemoResult(out=out, report=report, numbers=numbers, figures=figures)
