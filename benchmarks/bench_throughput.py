"""Measure training-step and exact-evaluation throughput of the image flows and write a markdown table."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["CONFIGS", "MODELS", "VARIANTS", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR_DIR = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg" / "train"
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "RESULTS_throughput.md"

MODELS = ("pixelcnn", "gated_pixelcnn", "pixelcnn_pp")

# Network sizes. "small" is 1 block (per stage), 32 filters and 10 mixture components. "paper" is the
# PixelCNN++ CIFAR-10 network of Salimans et al. (2017): 5 blocks per stage, 160 filters, 10 components,
# dropout 0.5. PixelCNN and gated PixelCNN get 15 layers of 128 filters (an input layer and 14 blocks), a
# size chosen here, the same as in bench_generation.py. PixelCNN++ keeps dropout 0.5 in both sizes.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        "pixelcnn": {"num_filters": 32, "num_blocks": 1},
        "gated_pixelcnn": {"num_filters": 32, "num_blocks": 1},
        "pixelcnn_pp": {"num_filters": 32, "num_blocks": 1, "num_components": 10, "dropout": 0.5},
    },
    "paper": {
        "pixelcnn": {"num_filters": 128, "num_blocks": 14},
        "gated_pixelcnn": {"num_filters": 128, "num_blocks": 14},
        "pixelcnn_pp": {"num_filters": 160, "num_blocks": 5, "num_components": 10, "dropout": 0.5},
    },
}

# baseline: the arflows package found under --baseline, with the C library's default allocator settings.
# eager-default-malloc: this tree without arflows.training.performance.retain_freed_memory.
# eager: this tree as `arflows train` runs it on the CPU (freed memory retained, fused Adam).
# channels-last: eager with the network and its input in channels-last memory format.
# compile: eager with the network compiled by torch.compile (Module.compile).
VARIANTS = ("baseline", "eager-default-malloc", "eager", "channels-last", "compile")

DATA_SHAPE = (3, 32, 32)
NUM_BINS = 256


# -------------------------------------------------------------------------------------------------------
# Worker: one model, configuration, variant and mode per process
# -------------------------------------------------------------------------------------------------------


def _load_batch(batch_size: int, source: str):
    """Return a batch of CIFAR-10 images as long bins (B, 3, 32, 32), real JPEGs when available."""
    import numpy as np
    import torch

    if source == "real" and CIFAR_DIR.is_dir():
        from PIL import Image

        # The first files of each class in turn, so the batch mixes classes.
        classes = sorted(path for path in CIFAR_DIR.iterdir() if path.is_dir())
        files = [sorted(folder.glob("*.jpg"))[: batch_size] for folder in classes]
        chosen = [files[i % len(files)][i // len(files)] for i in range(batch_size)]
        images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in chosen])  # (B, H, W, 3)
        return torch.from_numpy(images).permute(0, 3, 1, 2).long().contiguous(), "CIFAR-10 JPEGs"

    generator = torch.Generator().manual_seed(0)
    return torch.randint(NUM_BINS, (batch_size, *DATA_SHAPE), generator=generator), "uniform random bins"


def _peak_rss_bytes() -> int:
    import resource

    # ru_maxrss is in kibibytes on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one mode ("train" or "eval") of one model in this process and return the measurements."""
    import torch

    variant, mode = spec["variant"], spec["mode"]
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])

    if variant != "baseline" and variant != "eager-default-malloc" and device.type == "cpu":
        from arflows.training.performance import retain_freed_memory

        retain_freed_memory()

    import arflows
    from arflows.flows import create_flow

    torch.manual_seed(0)
    hyperparameters = CONFIGS[spec["config"]][spec["model"]]
    flow = create_flow(spec["model"], DATA_SHAPE, NUM_BINS, **hyperparameters).to(device)
    q, data_name = _load_batch(spec["batch_size"], spec["data"])
    q = q.to(device)
    if variant == "channels-last":
        flow.to(memory_format=torch.channels_last)
    if variant == "compile":
        flow.net.compile()

    parameters = list(flow.parameters())
    try:
        from arflows.training.performance import fused_adam_supported

        fused = fused_adam_supported(parameters) or None
    except ImportError:
        # The baseline tree predates fused Adam in the training loop.
        fused = None
    optimizer = torch.optim.Adam(parameters, lr=1e-4, betas=(0.95, 0.9995), fused=fused)
    num_dims = math.prod(DATA_SHAPE)

    def train_step() -> float:
        loss = -flow.log_prob(q).mean() / (num_dims * math.log(2.0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    @torch.no_grad()
    def evaluate() -> float:
        return flow.bits_per_dim(q).item()

    if mode == "train":
        flow.train()
        step = train_step
    else:
        flow.eval()
        step = evaluate

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Warm-up calls compile (with --variants compile), fill caches and let the allocator settle.
    rss_before = _current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    warmup_start = time.perf_counter()
    bits = float("nan")
    for _ in range(spec["warmup"]):
        bits = step()
    synchronize()
    warmup_seconds = time.perf_counter() - warmup_start

    wall, cpu = [], []
    for _ in range(spec["repeats"]):
        synchronize()
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        bits = step()
        synchronize()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)

    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device) - allocated_before
        memory_kind = "CUDA max_memory_allocated increase"
    else:
        peak_bytes = _peak_rss_bytes() - (rss_before or 0) if rss_before is not None else _peak_rss_bytes()
        memory_kind = "peak RSS increase" if rss_before is not None else "peak RSS"

    return {
        **spec,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "warmup_seconds": warmup_seconds,
        "peak_bytes": peak_bytes,
        "memory_kind": memory_kind,
        "bits_per_dim": bits,
        "data_name": data_name,
        "torch_version": torch.__version__,
        "arflows_path": str(Path(arflows.__file__).resolve().parent),
        "num_parameters": sum(parameter.numel() for parameter in parameters),
    }


# -------------------------------------------------------------------------------------------------------
# Parent: schedule workers, pool their timings, write the table
# -------------------------------------------------------------------------------------------------------


def _launch(spec: dict[str, Any], baseline: Path | None, timeout: float) -> dict[str, Any]:
    """Run one worker in a fresh process, so each variant starts with a clean allocator and peak memory."""
    env = dict(os.environ)
    source_root = baseline if spec["variant"] == "baseline" else REPO_ROOT
    env["PYTHONPATH"] = os.pathsep.join([str(source_root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                                   cwd=str(source_root), check=False)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {**spec, "error": f"worker exited with status {completed.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def _combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the timed calls of the rounds of one measurement."""
    good = [result for result in results if "error" not in result]
    if not good:
        return results[0]
    combined = dict(good[0])
    combined["wall_seconds"] = [value for result in good for value in result["wall_seconds"]]
    combined["cpu_seconds"] = [value for result in good for value in result["cpu_seconds"]]
    combined["peak_bytes"] = max(result["peak_bytes"] for result in good)
    combined["warmup_seconds"] = statistics.median(result["warmup_seconds"] for result in good)
    return combined


def _throughput(result: dict[str, Any], key: str) -> float | None:
    if "error" in result:
        return None
    return result["batch_size"] / statistics.median(result[key])


def _format_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _format_ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return ""
    return f"{value / reference:.2f}×"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{_cpu_name()}, {os.cpu_count()} logical cores"


def render_table(measurements: dict[tuple, dict[str, dict[str, Any]]], variants: list[str]) -> list[str]:
    """Format one row per model, configuration and variant, with ratios to the first variant measured."""
    header = ("| model | config | variant | train img/s | train ratio | eval img/s | eval ratio | "
              "train img/CPU-s | eval img/CPU-s | train peak MiB | eval peak MiB |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (model, config), by_variant in measurements.items():
        reference = next((by_variant[v] for v in variants if v in by_variant), None)
        for variant in variants:
            if variant not in by_variant:
                continue
            train, evaluation = by_variant[variant]["train"], by_variant[variant]["eval"]
            cells = [model, config, variant]
            for result, reference_result in ((train, reference["train"]), (evaluation, reference["eval"])):
                rate = _throughput(result, "wall_seconds")
                cells.append(_format_rate(rate))
                cells.append(_format_ratio(rate, _throughput(reference_result, "wall_seconds")))
            cells.append(_format_rate(_throughput(train, "cpu_seconds")))
            cells.append(_format_rate(_throughput(evaluation, "cpu_seconds")))
            for result in (train, evaluation):
                cells.append("—" if "error" in result else f"{result['peak_bytes'] / 2**20:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _notes(measurements: dict[tuple, dict[str, dict[str, Any]]]) -> list[str]:
    notes = []
    for (model, config), by_variant in measurements.items():
        for variant, modes in by_variant.items():
            for mode, result in modes.items():
                if "error" in result:
                    notes.append(f"- {model} {config} {variant} {mode} failed: {result['error']}")
                elif variant == "compile":
                    notes.append(f"- {model} {config} compile {mode}: warm-up (compilation) "
                                 f"{result['warmup_seconds']:.0f} s")
    return notes


def write_results(path: Path, args: argparse.Namespace, measurements, variants: list[str],
                  load_before: tuple, load_after: tuple, elapsed: float) -> None:
    """Write the results page: machine, versions, command, date, load and the table."""
    import torch

    sample = next((result for by_variant in measurements.values() for modes in by_variant.values()
                   for result in modes.values() if "error" not in result), {})
    repeats_text = ", ".join(f"{config}: {args.repeats or _default_repeats(config, args.quick)} timed calls "
                             f"× {args.rounds} round(s) after {_default_warmup(config)} warm-up"
                             for config in args.configs)
    heading = f"## {args.title}" if args.append else "# Training and evaluation throughput"
    lines = [
        heading,
        "",
        f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- Machine: {_device_name(args.device)}; {platform.platform()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {args.threads} torch thread(s)",
        f"- Command: `python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`",
        (f"- Data: batch of {args.batch_size} images of 3×32×32 with K = {NUM_BINS} "
         f"({sample.get('data_name', 'n/a')})"),
        (f"- Calls: {repeats_text}. Rates are the batch size over the median call time. The img/CPU-s "
         "columns divide by the process CPU time instead of wall time, which other load affects less."),
        (f"- Load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load_before)} before and "
         f"{', '.join(f'{v:.2f}' for v in load_after)} after. The run took {elapsed / 60:.1f} min."),
        "- Train is forward, backward and an Adam step. Eval is exact bits/dim under `torch.no_grad`, eval mode.",
        f"- Memory: {sample.get('memory_kind', 'n/a')} over the warm-up and timed calls of each process.",
        "",
    ]
    lines += render_table(measurements, variants)
    notes = _notes(measurements)
    if notes:
        lines += ["", *notes]
    lines.append("")
    if args.append and path.exists():
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + "\n".join(lines))
    else:
        path.write_text("\n".join(lines))


def _default_repeats(config: str, quick: bool) -> int:
    if quick:
        return 3
    return 2 if config == "paper" else 7


def _default_warmup(config: str) -> int:
    return 1 if config == "paper" else 2


def _parse_list(text: str, choices: tuple[str, ...], name: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = [value for value in values if value not in choices]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"invalid {name} {unknown or text!r}; expected a comma-separated "
                                         f"subset of {', '.join(choices)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the benchmark."""
    parser = argparse.ArgumentParser(
        description="Measure training-step and exact-evaluation throughput (images per second) and peak "
                    "memory of PixelCNN, gated PixelCNN and PixelCNN++ on 3×32×32 images, and write a "
                    "markdown table.")
    parser.add_argument("--quick", action="store_true",
                        help="only the small configuration with 3 timed calls per measurement")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--models", type=lambda text: _parse_list(text, MODELS, "models"), default=list(MODELS),
                        help=f"comma-separated models (default: {','.join(MODELS)})")
    parser.add_argument("--configs", type=lambda text: _parse_list(text, tuple(CONFIGS), "configs"),
                        default=None, help="comma-separated configurations: small, paper (default: both, or "
                                           "small with --quick)")
    parser.add_argument("--variants", type=lambda text: _parse_list(text, VARIANTS, "variants"), default=None,
                        help="comma-separated variants: baseline (needs --baseline), eager-default-malloc, "
                             "eager, channels-last, compile (default: eager, plus baseline with --baseline)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="directory that contains an older arflows package to compare against, for "
                             "example from `git archive COMMIT arflows | tar -x -C DIR`")

    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement and round (default: 7 small, 2 paper, 3 with --quick)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every measurement this many times, alternating the variants, and pool "
                             "the timed calls (default: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default: 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--data", choices=("real", "random"), default="real",
                        help="real: CIFAR-10 JPEGs from the shared data folder beside the repository when "
                             "present, else random bins")

    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds after which one measurement process is stopped (default: 3600)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"markdown file to write (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")
    parser.add_argument("--append", action="store_true",
                        help="append the results as a section to --output instead of replacing the file")
    parser.add_argument("--title", default="Results", help="section heading with --append (default: Results)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the table; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.configs is None:
        args.configs = ["small"] if args.quick else list(CONFIGS)
    if args.variants is None:
        args.variants = (["baseline"] if args.baseline is not None else []) + ["eager"]
    if "baseline" in args.variants and (args.baseline is None or not (args.baseline / "arflows").is_dir()):
        parser.error("the baseline variant needs --baseline DIR with an arflows package inside DIR")
    for name in ("repeats", "rounds", "threads", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")

    load_before = os.getloadavg()
    start = time.perf_counter()
    measurements: dict[tuple, dict[str, dict[str, Any]]] = {}
    for config in args.configs:
        for model in args.models:
            by_variant: dict[str, dict[str, list]] = {variant: {"train": [], "eval": []}
                                                     for variant in args.variants}
            for round_index in range(args.rounds):
                # Alternate the order of the variants between rounds, so that slow drifts in the machine's
                # load affect all of them alike.
                order = args.variants if round_index % 2 == 0 else list(reversed(args.variants))
                for mode in ("train", "eval"):
                    for variant in order:
                        spec = {"model": model, "config": config, "variant": variant, "mode": mode,
                                "device": args.device, "threads": args.threads, "batch_size": args.batch_size,
                                "repeats": args.repeats or _default_repeats(config, args.quick),
                                "warmup": _default_warmup(config), "data": args.data}
                        result = _launch(spec, args.baseline, args.timeout)
                        by_variant[variant][mode].append(result)
                        rate = _throughput(result, "wall_seconds")
                        status = result.get("error") or f"{_format_rate(rate)} img/s"
                        print(f"{config:5s} {model:14s} {variant:20s} {mode:5s} {status}", flush=True)
            measurements[(model, config)] = {variant: {mode: _combine(results) for mode, results in modes.items()}
                                             for variant, modes in by_variant.items()}

    load_after = os.getloadavg()
    write_results(args.output, args, measurements, args.variants, load_before, load_after,
                  time.perf_counter() - start)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
