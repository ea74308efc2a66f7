"""Tests of the `arflows` command line: flags, train and evaluate end to end, and user errors."""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arflows import checkpoint as ckpt
from arflows.cli import build_parser, main
from arflows.cli.train import MODEL_FLAGS, model_hyperparameters

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TINY = ["--filters", "8", "--blocks", "1"]
JSON_KEYS = {"bits_per_dim", "nats_per_example", "num_examples", "num_dims", "dataset", "split", "checkpoint"}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _arflows(*arguments, timeout=300):
    """Run `python -m arflows ARGUMENTS` in a subprocess and return the completed process."""
    return subprocess.run([sys.executable, "-m", "arflows", *map(str, arguments)], env=_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _subcommand_parsers():
    parser = build_parser()
    choices = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return choices.choices


def _error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------------------


def test_every_flag_has_help():
    for name, parser in _subcommand_parsers().items():
        for action in parser._actions:
            assert action.help, f"arflows {name} {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("command, flags", [
    ("train", ["--model", "--data", "--out", "--blocks", "--filters", "--components", "--dropout",
               "--batch-size", "--lr", "--lr-decay", "--epochs", "--max-steps", "--max-minutes", "--seed",
               "--device", "--precision", "--ema-decay", "--grad-clip", "--num-workers", "--resume",
               "--eval-every", "--checkpoint-every", "--channels", "--crop", "--resize", "--download",
               "--validation-fraction", "--max-examples", "--segment-length", "--sample-rate", "--mono",
               "--force"]),
    ("evaluate", ["--data", "--split", "--json", "--no-ema", "--weights", "--device", "--batch-size"]),
])
def test_contract_flags_exist(command, flags):
    parser = _subcommand_parsers()[command]
    known = {option for action in parser._actions for option in action.option_strings}

    assert sorted(set(flags) - known) == []


def test_help_shows_examples_and_defaults(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])

    text = capsys.readouterr().out
    assert exited.value.code == 0
    assert "examples:" in text
    assert "default: 0.999995" in text
    assert "default: 0.9995" in text
    assert "130 for SIGINT" in text


def test_model_flags_cover_every_network_option():
    keywords = {keyword for keyword, _, _ in MODEL_FLAGS.values()}
    for model in ("pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "wavenet"):
        assert set(model_hyperparameters(model)) <= keywords, model


def test_boolean_flags_have_negations():
    parser = _subcommand_parsers()["train"]

    assert parser.parse_args(["--out", "x", "--mono"]).mono is True
    assert parser.parse_args(["--out", "x", "--no-mono"]).mono is False
    assert parser.parse_args(["--out", "x"]).mono is None


def test_size_flags_parse_pairs():
    parser = _subcommand_parsers()["train"]

    assert parser.parse_args(["--out", "x", "--crop", "24x20"]).crop == (24, 20)
    assert parser.parse_args(["--out", "x", "--resize", "16"]).resize == 16


# ---------------------------------------------------------------------------------------------------------
# Train and evaluate on digits (never skipped)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "digits"
    result = _arflows("train", "--model", "pixelcnn", "--data", "digits", "--out", run_dir, *TINY,
                      "--batch-size", "32", "--max-steps", "40", "--lr", "3e-3", "--ema-decay", "0.9",
                      "--eval-every", "20", "--log-every", "10")
    assert result.returncode == 0, result.stderr
    return run_dir


def test_train_end_to_end_files(digits_run):
    names = sorted(path.name for path in digits_run.iterdir())
    config = json.loads((digits_run / "config.json").read_text())

    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt"} <= set(names)
    assert config["training"]["model"] == "pixelcnn"
    assert config["training"]["hyperparameters"] == {"num_filters": 8, "num_blocks": 1}
    assert config["training"]["lr"] == 3e-3
    assert config["training"]["lr_decay"] == 0.999995
    assert ckpt.load_checkpoint(digits_run / "last.pt")["step"] == 40


def test_evaluate_json_subprocess(digits_run):
    result = _arflows("evaluate", digits_run, "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert JSON_KEYS <= set(report)
    assert report["dataset"] == "digits"
    assert report["split"] == "test"
    assert report["checkpoint"] == str(digits_run / "best.pt")
    assert report["weights"] == "averaged"
    assert report["num_examples"] == 180
    assert report["num_dims"] == 180 * 64
    assert math.isfinite(report["bits_per_dim"])
    assert report["bits_per_dim"] < math.log2(17)
    assert report["nats_per_example"] == pytest.approx(report["bits_per_dim"] * 64 * math.log(2))


def test_evaluate_text_names_dataset_split_checkpoint(digits_run, capsys):
    status = main(["evaluate", str(digits_run / "last.pt"), "--split", "validation", "--no-ema"])

    out = capsys.readouterr().out
    assert status == 0
    assert "digits" in out
    assert "validation split" in out
    assert str(digits_run / "last.pt") in out
    assert "raw weights" in out
    assert "bits/dim" in out


def test_evaluate_matches_direct_sum(digits_run, capsys):
    from arflows.data import load_dataset

    status = main(["evaluate", str(digits_run), "--json", "--precision", "float64", "--batch-size", "7"])
    report = json.loads(capsys.readouterr().out)

    flow, _ = ckpt.load_flow(digits_run, weights="averaged")
    flow.double()
    split = load_dataset("digits").split("test")
    import torch

    q = torch.stack([split[index][0] for index in range(len(split))])
    nll = -flow.log_prob(q).sum().item()
    assert status == 0
    assert report["bits_per_dim"] == pytest.approx(nll / (q[0].numel() * len(q) * math.log(2)), rel=1e-12)


def test_evaluate_shape_mismatch_is_usage_error(digits_run, capsys):
    status = main(["evaluate", str(digits_run), "--crop", "6"])

    line = _error_line(capsys)
    assert status == 2
    assert line.startswith("arflows evaluate: error:")
    assert "1×6×6 instead of 1×8×8" in line


def test_evaluate_bins_mismatch_is_usage_error(digits_run, tmp_path, capsys):
    from PIL import Image

    for index in range(12):
        pixels = np.random.default_rng(index).integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{index}.png")

    status = main(["evaluate", str(digits_run), "--data", f"folder:{tmp_path}", "--channels", "1"])

    line = _error_line(capsys)
    assert status == 2
    assert "K=256 bins instead of K=17" in line


def test_evaluate_missing_averaged_weights(tmp_path, capsys):
    run_dir = tmp_path / "raw"
    assert main(["-q", "train", "--model", "pixelcnn", "--data", "digits", "--out", str(run_dir), *TINY,
                 "--max-steps", "2", "--ema-decay", "0"]) == 0
    capsys.readouterr()

    assert main(["evaluate", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "raw"
    assert main(["evaluate", str(run_dir), "--weights", "averaged"]) == 2
    assert "ema-decay 0" in _error_line(capsys)


def test_evaluate_rejects_non_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello")

    assert main(["evaluate", str(tmp_path / "notes.pt")]) == 2
    assert "not a readable checkpoint" in _error_line(capsys)


# ---------------------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------------------


def test_train_refuses_existing_run_then_force(tmp_path, capsys):
    run_dir = tmp_path / "run"
    arguments = ["-q", "train", "--model", "pixelcnn", "--data", "digits", "--out", str(run_dir), *TINY,
                 "--max-steps", "2"]
    assert main(arguments) == 0

    assert main(arguments) == 2
    line = _error_line(capsys)
    assert "already contains a run" in line
    assert "--resume" in line

    assert main([*arguments, "--force", "--seed", "3"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["training"]["seed"] == 3


def test_train_refuses_foreign_nonempty_dir(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")

    status = main(["train", "--model", "pixelcnn", "--data", "digits", "--out", str(tmp_path), *TINY])

    assert status == 2
    assert "not empty (notes.txt)" in _error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_rejects_changed_settings(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["-q", "train", "--model", "pixelcnn", "--data", "digits", "--out", str(run_dir), *TINY,
                 "--max-steps", "2"]) == 0

    assert main(["train", "--out", str(run_dir), "--resume", "--lr", "0.5"]) == 2
    assert "cannot resume with lr=0.5" in _error_line(capsys)
    assert main(["train", "--out", str(run_dir), "--resume", "--filters", "16"]) == 2
    assert "num_filters=16" in _error_line(capsys)
    assert main(["-q", "train", "--out", str(run_dir), "--resume", "--max-steps", "4"]) == 0
    assert ckpt.load_checkpoint(run_dir / "last.pt")["step"] == 4


@pytest.mark.parametrize("arguments, message", [
    (["--model", "pixelcnn", "--data", "nosuch"], "unknown dataset kind 'nosuch'"),
    (["--model", "pixelcnn", "--data", "digits", "--stages", "2"], "--stages does not apply to pixelcnn"),
    (["--data", "digits"], "--model and --data are required"),
    (["--model", "pixelcnn", "--data", "digits", "--lr-decay", "2"], "lr_decay must be in (0, 1]"),
    (["--model", "pixelcnn", "--data", "digits", "--filters", "1"], "num_filters must be at least 2"),
    (["--model", "pixelcnn", "--data", "digits", "--resize", "4"], "resize=4 is not supported for digits"),
    (["--model", "wavenet", "--data", "digits"], "wavenet data_shape must be (1, T)"),
])
def test_train_user_errors(tmp_path, capsys, arguments, message):
    run_dir = tmp_path / "run"

    status = main(["train", "--out", str(run_dir), *arguments])

    line = _error_line(capsys)
    assert status == 2
    assert line.startswith("arflows train: error:")
    assert message in line
    assert not (run_dir / "last.pt").exists()


def test_user_error_subprocess_has_no_traceback(tmp_path):
    result = _arflows("train", "--model", "pixelcnn", "--data", f"folder:{tmp_path / 'absent'}",
                      "--channels", "1", "--out", tmp_path / "run")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("arflows train: error: cannot load dataset")


def test_nonfinite_loss_exit_status(tmp_path, caplog):
    status = main(["train", "--model", "pixelcnn", "--data", "digits", "--out", str(tmp_path / "run"), *TINY,
                   "--lr", "1e30", "--checkpoint-every", "1", "--max-steps", "20"])

    assert status == 1
    assert "training loss is nan at step 2" in caplog.text


# ---------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------


REAL_DATA = [
    pytest.param("mnist", SHARED_DATA / "mnist", ["--max-examples", "400"], 256, id="mnist"),
    pytest.param("folder", SHARED_DATA / "cifar10-jpg" / "train", ["--channels", "3", "--max-examples", "300"],
                 256, id="cifar10-jpg"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind, path, data_flags, num_bins", REAL_DATA)
def test_end_to_end_on_real_images(tmp_path, kind, path, data_flags, num_bins):
    if not path.exists():
        pytest.skip(f"real data {path} is absent (the repository's ../shared/data is not checked out)")
    run_dir = tmp_path / "run"
    spec = f"{kind}:{path}"

    trained = _arflows("train", "--model", "pixelcnn", "--data", spec, *data_flags, "--out", run_dir, *TINY,
                       "--batch-size", "16", "--max-steps", "15", "--lr", "1e-2", "--ema-decay", "0",
                       "--eval-every", "100000")
    assert trained.returncode == 0, trained.stderr

    evaluated = _arflows("evaluate", run_dir, "--json", "--batch-size", "50")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["dataset"] == spec
    assert report["num_examples"] > 0
    assert math.isfinite(report["bits_per_dim"])
    assert 0 < report["bits_per_dim"] < math.log2(num_bins)
