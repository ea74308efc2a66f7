"""Tests of multi-process training and evaluation: real torchrun processes with gloo on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arflows import checkpoint as ckpt
from arflows.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

# float64 and no dropout, so that one process and two processes compute the same function. The two runs
# differ only in the order in which per-example gradients are summed.
TRAIN_ARGUMENTS = ["--model", "pixelcnn", "--data", "digits", "--filters", "8", "--blocks", "1",
                   "--dropout", "0", "--precision", "float64", "--batch-size", "32", "--max-steps", "12",
                   "--lr", "3e-3", "--ema-decay", "0.9", "--eval-every", "6", "--checkpoint-every", "5",
                   "--log-every", "4"]


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(*arguments, nproc=2, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's traffic on the loopback interface
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "arflows",
               *map(str, arguments)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    single = root / "single"
    double = root / "double"
    assert main(["-q", "train", "--out", str(single), *TRAIN_ARGUMENTS]) == 0
    result = _torchrun("train", "--out", double, *TRAIN_ARGUMENTS)
    assert result.returncode == 0, result.stderr[-4000:]
    return single, double


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build lacks torch.distributed")
def test_two_processes_match_one(runs):
    single, double = (ckpt.load_checkpoint(path / "last.pt") for path in runs)

    assert double["world_size"] == 2
    assert double["step"] == single["step"] == 12
    assert len(double["rng"]) == 2
    # Summation order differs (two local means averaged by DDP against one mean), so the weights agree
    # to rounding: float64 leaves about 1e-16 per step, amplified a little by Adam's normalisation.
    for key, value in single["model"].items():
        torch.testing.assert_close(double["model"][key], value, rtol=1e-9, atol=1e-11, msg=key)
    for key, value in single["averaged_model"].items():
        torch.testing.assert_close(double["averaged_model"][key].double(), value.double(), rtol=1e-9,
                                   atol=1e-11, msg=key)
    assert double["best_val_bits_per_dim"] == pytest.approx(single["best_val_bits_per_dim"], rel=1e-9)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build lacks torch.distributed")
def test_only_rank_zero_writes(runs):
    single, double = runs
    records = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]

    assert sorted(path.name for path in double.iterdir()) == sorted(path.name for path in single.iterdir())
    assert [record["step"] for record in records] == [record["step"] for record in expected]
    for record, reference in zip(records, expected):
        for key in ("train_bits_per_dim", "val_bits_per_dim"):
            if reference[key] is None:
                assert record[key] is None
            else:
                assert record[key] == pytest.approx(reference[key], rel=1e-9)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build lacks torch.distributed")
def test_distributed_evaluation_on_uneven_split(runs, capsys):
    single, _ = runs
    # The digits train split has 1437 examples: the two shards get 719 and 718, in uneven batches of 50.
    assert main(["evaluate", str(single), "--split", "train", "--json", "--batch-size", "50"]) == 0
    expected = json.loads(capsys.readouterr().out)

    result = _torchrun("evaluate", single, "--split", "train", "--json", "--batch-size", "50")

    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1  # printed by rank 0 only
    report = reports[0]
    assert report["num_examples"] == expected["num_examples"] == 1437
    assert report["num_dims"] == expected["num_dims"]
    assert report["bits_per_dim"] == pytest.approx(expected["bits_per_dim"], rel=1e-12)
