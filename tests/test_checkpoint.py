"""Tests of arflows.checkpoint: round trips, safe loading, atomic writes under SIGKILL, RNG states."""

import io
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from arflows import checkpoint as ckpt
from arflows.flows import create_flow

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tiny_flow(dtype=torch.float32):
    torch.manual_seed(0)
    return create_flow("pixelcnn", (1, 8, 8), 17, num_filters=8, num_blocks=1).to(dtype)


def _checkpoint_of(flow, averaged=None, **extra):
    state = {
        "format": ckpt.CHECKPOINT_FORMAT,
        "format_version": ckpt.CHECKPOINT_VERSION,
        "flow": flow.config,
        "model": flow.state_dict(),
        "averaged_model": averaged.state_dict() if averaged is not None else None,
        "step": 7,
        "rng": [ckpt.capture_rng_state()],
    }
    state.update(extra)
    return state


def _random_batch(num_examples=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (num_examples, 1, 8, 8), generator=generator)


def _perturbed_average(flow):
    """An AveragedModel whose weights differ from the flow's, as after some training."""
    averaged = AveragedModel(flow, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    averaged.update_parameters(flow)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.1)
    averaged.update_parameters(flow)
    return averaged


# ---------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------


def test_load_flow_reproduces_raw_log_prob(tmp_path):
    flow = _tiny_flow(torch.float64)
    ckpt.save_checkpoint(tmp_path / "last.pt", _checkpoint_of(flow))

    loaded, metadata = ckpt.load_flow(tmp_path / "last.pt", weights="raw")

    q = _random_batch()
    assert torch.equal(loaded.log_prob(q), flow.eval().log_prob(q))
    assert metadata["weights"] == "raw"
    assert metadata["step"] == 7
    assert metadata["flow"] == flow.config
    assert "model" not in metadata
    assert "rng" not in metadata


def test_load_flow_keeps_float64_weights(tmp_path):
    flow = _tiny_flow(torch.float64)
    ckpt.save_checkpoint(tmp_path / "last.pt", _checkpoint_of(flow))

    loaded, _ = ckpt.load_flow(tmp_path / "last.pt", weights="raw")

    assert all(parameter.dtype == torch.float64 for parameter in loaded.parameters())


def test_load_flow_averaged_weights_differ_from_raw(tmp_path):
    flow = _tiny_flow(torch.float64)
    averaged = _perturbed_average(flow)
    ckpt.save_checkpoint(tmp_path / "last.pt", _checkpoint_of(flow, averaged))

    raw, _ = ckpt.load_flow(tmp_path, weights="raw")
    smoothed, metadata = ckpt.load_flow(tmp_path)

    q = _random_batch()
    assert metadata["weights"] == "averaged"
    assert torch.equal(raw.log_prob(q), flow.eval().log_prob(q))
    assert torch.equal(smoothed.log_prob(q), averaged.module.eval().log_prob(q))
    assert not torch.equal(smoothed.log_prob(q), raw.log_prob(q))


def test_load_flow_averaged_missing_raises(tmp_path):
    ckpt.save_checkpoint(tmp_path / "last.pt", _checkpoint_of(_tiny_flow()))

    with pytest.raises(ckpt.CheckpointError, match="ema-decay 0"):
        ckpt.load_flow(tmp_path / "last.pt", weights="averaged")


def test_load_flow_rejects_unknown_weights(tmp_path):
    ckpt.save_checkpoint(tmp_path / "last.pt", _checkpoint_of(_tiny_flow()))

    with pytest.raises(ValueError, match="'averaged' or 'raw'"):
        ckpt.load_flow(tmp_path / "last.pt", weights="ema")


def test_state_dict_from_averaged_strips_prefix():
    flow = _tiny_flow()
    averaged = AveragedModel(flow, multi_avg_fn=get_ema_multi_avg_fn(0.9))

    state = ckpt.state_dict_from_averaged(averaged.state_dict())

    assert sorted(state) == sorted(flow.state_dict())


def test_save_checkpoint_requires_core_keys(tmp_path):
    with pytest.raises(ValueError, match="lacks the keys"):
        ckpt.save_checkpoint(tmp_path / "x.pt", {"format": ckpt.CHECKPOINT_FORMAT})
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------------------------------------------
# Rejected files
# ---------------------------------------------------------------------------------------------------------


def test_load_rejects_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")

    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(path)


def test_load_rejects_truncated_file(tmp_path):
    buffer = io.BytesIO()
    torch.save(_checkpoint_of(_tiny_flow()), buffer)
    path = tmp_path / "last.pt"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load_checkpoint(path)


def test_load_rejects_plain_state_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_tiny_flow().state_dict(), path)

    with pytest.raises(ckpt.CheckpointError, match="not an arflows checkpoint"):
        ckpt.load_checkpoint(path)


def test_load_rejects_arbitrary_objects(tmp_path):
    # A pickled class instance is what weights_only=True exists to refuse: unpickling it could run code.
    path = tmp_path / "object.pt"
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "payload": OrderedDict, "when": time.gmtime()}, path)

    with pytest.raises(ckpt.CheckpointError, match="weights_only=True"):
        ckpt.load_checkpoint(path)


def test_load_rejects_newer_format_version(tmp_path):
    state = _checkpoint_of(_tiny_flow(), format_version=ckpt.CHECKPOINT_VERSION + 1)
    ckpt.save_checkpoint(tmp_path / "last.pt", state)

    with pytest.raises(ckpt.CheckpointError, match="upgrade arflows"):
        ckpt.load_checkpoint(tmp_path / "last.pt")


def test_load_rejects_missing_path(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "absent.pt")


def test_load_rejects_empty_run_dir(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="neither best.pt nor last.pt"):
        ckpt.load_checkpoint(tmp_path)


def test_pickle_module_error_is_wrapped(tmp_path):
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"format": ckpt.CHECKPOINT_FORMAT}))

    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------
# Paths and atomic writes
# ---------------------------------------------------------------------------------------------------------


def test_resolve_prefers_best_then_last(tmp_path):
    flow = _tiny_flow()
    ckpt.save_checkpoint(tmp_path / "last.pt", _checkpoint_of(flow))
    assert ckpt.resolve_checkpoint_path(tmp_path) == tmp_path / "last.pt"

    ckpt.save_checkpoint(tmp_path / "best.pt", _checkpoint_of(flow))
    assert ckpt.resolve_checkpoint_path(tmp_path) == tmp_path / "best.pt"
    assert ckpt.resolve_checkpoint_path(tmp_path, prefer="last") == tmp_path / "last.pt"
    assert ckpt.resolve_checkpoint_path(tmp_path / "last.pt", prefer="best") == tmp_path / "last.pt"


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    ckpt.atomic_write_json(target, {"a": 1})
    ckpt.atomic_write_json(target, {"a": 2})

    assert target.read_text().strip().endswith("}")
    assert '"a": 2' in target.read_text()
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_failed_save_keeps_old_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    state = _checkpoint_of(_tiny_flow(), extra=lambda: None)  # a lambda cannot be pickled

    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        ckpt.save_checkpoint(target, state)

    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_failed_write_removes_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        ckpt.atomic_write_bytes(target, "text instead of bytes")

    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_remove_stale_temporary_files(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".other.tmp").write_bytes(b"keep")

    removed = ckpt.remove_stale_temporary_files(tmp_path)

    assert removed == 1
    assert sorted(os.listdir(tmp_path)) == [".other.tmp"]


# ---------------------------------------------------------------------------------------------------------
# Random number generators
# ---------------------------------------------------------------------------------------------------------


def _draws():
    return (random.random(), random.gauss(0, 1), float(np.random.standard_normal()),
            np.random.randint(1 << 30), torch.rand(3).tolist())


def test_rng_state_round_trip_through_file(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's generator
    np.random.standard_normal()  # and one in NumPy's legacy generator

    state = ckpt.capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = _draws()

    _draws()
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))

    assert _draws() == expected


# ---------------------------------------------------------------------------------------------------------
# A checkpoint on disk is always loadable, even when its writer is killed
# ---------------------------------------------------------------------------------------------------------


def _train_command(run_dir, *extra):
    return [sys.executable, "-m", "arflows", "-q", "train", "--model", "pixelcnn", "--data", "digits",
            "--out", str(run_dir), "--filters", "8", "--blocks", "1", "--batch-size", "16",
            "--checkpoint-every", "1", "--eval-every", "100000", "--max-steps", "100000", *extra]


def _subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _wait_for(path, process, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training exited early with {process.returncode}: "
                                 f"{process.stderr.read().decode()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def test_last_checkpoint_survives_sigkill(tmp_path):
    run_dir = tmp_path / "run"
    chooser = random.Random(2024)
    steps = []
    for round_index in range(3):
        extra = ("--resume",) if round_index else ()
        process = subprocess.Popen(_train_command(run_dir, *extra), env=_subprocess_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for(run_dir / "last.pt", process)
            if round_index:
                # Wait for the resumed run to overwrite last.pt at least once.
                previous = steps[-1]
                deadline = time.monotonic() + 60
                while ckpt.load_checkpoint(run_dir / "last.pt")["step"] <= previous:
                    assert time.monotonic() < deadline, "the resumed run wrote no checkpoint"
                    time.sleep(0.05)

            # Readers running while last.pt is replaced every step always see a complete file.
            stop_at = time.monotonic() + chooser.uniform(0.2, 1.5)
            while time.monotonic() < stop_at:
                ckpt.load_checkpoint(run_dir / "last.pt")
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
            process.stderr.close()

        assert process.returncode == -signal.SIGKILL
        flow, metadata = ckpt.load_flow(run_dir / "last.pt", weights="raw")
        assert torch.isfinite(flow.log_prob(_random_batch())).all()
        steps.append(metadata["step"])

    assert steps[0] >= 1
    assert steps[1] > steps[0]
    assert steps[2] > steps[1]
    stale = [name for name in os.listdir(run_dir) if name.endswith(".tmp")]
    assert len(stale) <= 1
