"""Benchmark cached decoding against the naive loop and against one parallel encode, for every network."""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from arflows import create_flow
from arflows.generation import fast_decode
from arflows.generation.common import reference_decode

# Image configurations. "small": 1 block per stage (or 1 block), 32 filters, 10 mixture components.
# "paper": PixelCNN++ as published for CIFAR-10 (5 blocks per stage, 160 filters, 10 components). For
# PixelCNN and gated PixelCNN it is 15 layers of 128 filters: the input layer and 14 blocks.
IMAGE_CONFIGS = {
    "small": {
        "pixelcnn": {"num_filters": 32, "num_blocks": 1},
        "gated_pixelcnn": {"num_filters": 32, "num_blocks": 1},
        "pixelcnn_pp": {"num_filters": 32, "num_blocks": 1, "num_components": 10, "dropout": 0.0},
    },
    "paper": {
        "pixelcnn": {"num_filters": 128, "num_blocks": 14},
        "gated_pixelcnn": {"num_filters": 128, "num_blocks": 14},
        "pixelcnn_pp": {"num_filters": 160, "num_blocks": 5, "num_components": 10, "dropout": 0.0},
    },
}
IMAGE_CASES = [((3, 32, 32), 16), ((3, 32, 32), 1), ((1, 28, 28), 1)]

# WaveNet: "small" is one cycle of 10 layers with 32 channels, "standard" the usual 2 cycles of 10 layers
# with 64 residual, 64 gated and 128 skip channels (the defaults of arflows.nets.WaveNet).
WAVENET_CONFIGS = {
    "small": {
        "residual_channels": 32,
        "dilation_channels": 32,
        "skip_channels": 32,
        "num_layers": 10,
        "num_cycles": 1,
    },
    "standard": {
        "residual_channels": 64,
        "dilation_channels": 64,
        "skip_channels": 128,
        "num_layers": 10,
        "num_cycles": 2,
    },
}
SAMPLE_RATE = 8000


def median_time(function: Callable[[], object], repeats: int) -> float:
    """Return the median wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def encode(flow, q: torch.Tensor) -> None:
    flow.encode(q)


@torch.no_grad()
def reference_pass(flow, z: torch.Tensor, q: torch.Tensor) -> None:
    with flow._deterministic():
        reference_decode(flow, z, q)


@torch.no_grad()
def naive_step_time(flow, z: torch.Tensor, num_steps: int) -> float:
    """Time ``num_steps`` steps of the naive loop of AutoregressiveFlow.decode and return seconds per step.

    Every step of the naive loop runs the network on the whole canvas and the inverse transform on the
    whole tensor, so its cost does not depend on the step. The loop body here is the one of decode.
    """
    q = torch.zeros(z.shape, dtype=torch.long)
    u = torch.zeros_like(z)
    steps = list(itertools.islice(flow._decode_steps(tuple(z.shape)), num_steps))
    with flow._deterministic():
        start = time.perf_counter()
        for index in steps:
            params = flow.parameters_of(q)
            step_q, step_u = flow.transform.decode(z, params)
            q[index] = step_q[index]
            u[index] = step_u[index]
        elapsed = time.perf_counter() - start
    return elapsed / len(steps)


def measure_naive(flow, z: torch.Tensor, budget: float, probe_steps: int, repeats: int) -> tuple[float, str]:
    """Return the naive decode time in seconds and how it was obtained (measured or extrapolated)."""
    num_steps = sum(1 for _ in flow._decode_steps(tuple(z.shape)))
    per_step = naive_step_time(flow, z, min(probe_steps, num_steps))
    if per_step * num_steps <= budget:
        runs = repeats if per_step * num_steps * repeats <= budget else 1
        return median_time(functools.partial(flow.decode, z, naive=True), runs), f"measured, median of {runs}"
    return per_step * num_steps, f"{probe_steps} of {num_steps} steps, extrapolated"


def measure_fast(flow, z: torch.Tensor, repeats: int) -> tuple[float, dict[str, int]]:
    """Return the median time of flow.decode(z) on the fast path and its repair counts."""
    stats: dict[str, int] = {}

    @torch.no_grad()
    def run() -> None:
        with flow._deterministic():
            fast_decode(flow, z, stats)

    return median_time(run, repeats), dict(stats)


def image_rows(args) -> list[dict[str, object]]:
    rows = []
    for config_name in args.configs:
        for model in args.models:
            if model == "wavenet":
                continue
            for data_shape, batch in IMAGE_CASES:
                torch.manual_seed(0)
                flow = create_flow(model, data_shape, 256, **IMAGE_CONFIGS[config_name][model]).eval()
                q = torch.randint(256, (batch, *data_shape), generator=torch.Generator().manual_seed(1))
                z = torch.rand(batch, *data_shape, generator=torch.Generator().manual_seed(2))
                repeats = 1 if config_name == "paper" and batch > 1 else args.repeats

                encode_time = median_time(functools.partial(encode, flow, q), repeats)
                fast, stats = measure_fast(flow, z, repeats)
                verify = median_time(functools.partial(reference_pass, flow, z, q), repeats)
                probe = args.paper_probe_steps if config_name == "paper" else args.probe_steps
                naive, how = measure_naive(flow, z, args.naive_budget, probe, repeats)
                row = {
                    "config": config_name,
                    "model": model,
                    "shape": "×".join(map(str, data_shape)),
                    "batch": batch,
                    "encode": encode_time,
                    "fast": fast,
                    "verify": verify,
                    "naive": naive,
                    "naive_how": how,
                    "repairs": stats["repairs"],
                }
                rows.append(row)
                print(format_image_row(row), flush=True)
    return rows


def wavenet_rows(args) -> list[dict[str, object]]:
    rows = []
    if "wavenet" not in args.models:
        return rows
    length = args.wavenet_length
    for config_name, hyperparameters in WAVENET_CONFIGS.items():
        for batch in (1, 16):
            torch.manual_seed(0)
            flow = create_flow("wavenet", (1, length), 256, **hyperparameters).eval()
            q = torch.randint(256, (batch, 1, length), generator=torch.Generator().manual_seed(1))
            z = torch.rand(batch, 1, length, generator=torch.Generator().manual_seed(2))
            encode_time = median_time(functools.partial(encode, flow, q), args.repeats)
            fast, stats = measure_fast(flow, z, 1)
            naive, how = measure_naive(flow, z, args.naive_budget, args.paper_probe_steps, 1)
            row = {
                "config": config_name,
                "batch": batch,
                "length": length,
                "receptive_field": flow.net.receptive_field,
                "encode": encode_time,
                "fast": fast,
                "naive": naive,
                "naive_how": how,
                "repairs": stats["repairs"],
            }
            rows.append(row)
            print(format_wavenet_row(row), flush=True)
    return rows


IMAGE_HEADER = (
    "| config | model | shape | batch | encode ms/img | cached ms/img | of which verification | "
    "naive ms/img | naive timing | naive / cached | cached / encode | repairs |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_image_row(row) -> str:
    batch = row["batch"]
    encode_time, fast, verify, naive = (
        1000 * row[key] / batch for key in ("encode", "fast", "verify", "naive")
    )
    return (
        f"| {row['config']} | {row['model']} | {row['shape']} | {batch} | {encode_time:.1f} | {fast:.1f} | "
        f"{verify:.1f} | {naive:.0f} | {row['naive_how']} | {naive / fast:.0f}× | "
        f"{fast / encode_time:.1f}× | {row['repairs']} |"
    )


WAVENET_HEADER = (
    "| config | batch | T | receptive field | encode ms (batch) | cached s (batch) | "
    "samples/s (all streams) | real-time factor | naive s | naive timing | naive / cached | repairs |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_wavenet_row(row) -> str:
    samples = row["batch"] * row["length"]
    duration = row["length"] / SAMPLE_RATE
    return (
        f"| {row['config']} | {row['batch']} | {row['length']} | {row['receptive_field']} | "
        f"{1000 * row['encode']:.0f} | {row['fast']:.2f} | {samples / row['fast']:.0f} | "
        f"{row['fast'] / duration:.2f} | {row['naive']:.0f} | {row['naive_how']} | "
        f"{row['naive'] / row['fast']:.0f}× | {row['repairs']} |"
    )


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PREAMBLE = """\
# Cached generation versus the naive loop

Times are medians of repeated runs in float32, for uniform random latents and a randomly initialized
network. *cached* is `flow.decode(z)`: the cached decoder, its verification pass (one parallel network
pass and inverse transform that make the result bit-identical to the naive loop, timed alone in *of which
verification*) and any repairs (the *repairs* column). *naive* is `flow.decode(z, naive=True)`, one full
network pass per step. Where a full naive run would exceed the time budget, a fixed number of its steps is
timed and multiplied by the number of steps. Every naive step does the same work, so this extrapolation
only adds timing noise. *encode* is `flow.encode(q)` under `torch.no_grad`, one parallel pass, the floor
that decoding approaches. K = 256 everywhere.

Configurations: *small* has 1 block per stage (PixelCNN++) or 1 block, 32 filters and 10 mixture
components. *paper* is PixelCNN++ as published for CIFAR-10 (5 blocks per stage, 3 stages, 160 filters,
10 components) and, for PixelCNN and gated PixelCNN, 15 layers of 128 filters (the input layer and 14
blocks). WaveNet *small* is 1 cycle of 10 layers with 32 channels, *standard* 2 cycles of 10 layers with
64 residual, 64 gated and 128 skip channels. Its real-time factor is the generation time over the audio
duration of each of the batch's streams at 8 kHz (below 1 is faster than real time).
"""


def section(threads: int, machine: str, start_load: float, image, audio) -> list[str]:
    lines = [
        f"## {threads} torch thread{'s' if threads > 1 else ''}",
        "",
        f"{machine}. Finished {time.strftime('%Y-%m-%d %H:%M %Z')}. Load average (1 minute) {start_load:.1f} "
        f"at the start, {load_average():.1f} at the end.",
        "",
        "### Images",
        "",
        IMAGE_HEADER,
        *[format_image_row(row) for row in image],
    ]
    if audio:
        lines += [
            "",
            f"### WaveNet at {SAMPLE_RATE} Hz",
            "",
            WAVENET_HEADER,
            *[format_wavenet_row(row) for row in audio],
        ]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[2], help="torch intra-op thread counts to run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per median (default 3)")
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "wavenet"],
        choices=["pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "wavenet"],
    )
    parser.add_argument("--naive-budget", type=float, default=150.0, help="seconds a full naive run may take")
    parser.add_argument("--probe-steps", type=int, default=64, help="naive steps timed before deciding")
    parser.add_argument(
        "--paper-probe-steps", type=int, default=4, help="naive steps timed at the paper sizes"
    )
    parser.add_argument("--wavenet-length", type=int, default=8000, help="samples per WaveNet stream")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS_generation.md"))
    args = parser.parse_args(argv)

    lines = [PREAMBLE, f"Command: `{' '.join(['python', *sys.argv])}`", ""]
    for threads in args.threads:
        torch.set_num_threads(threads)
        machine = (
            f"{os.cpu_count()} CPU cores ({cpu_name()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}"
        )
        start_load = load_average()
        print(machine, flush=True)
        print(IMAGE_HEADER, flush=True)
        image = image_rows(args)
        print(WAVENET_HEADER, flush=True)
        audio = wavenet_rows(args)
        lines += section(threads, machine, start_load, image, audio)
        args.output.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
