"""Tests of arflows.training: intervals, batches, exact evaluation, the loop, resume, signals, NaN stops."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from arflows import checkpoint as ckpt
from arflows.flows import create_flow
from arflows.training import (
    ConfigurationError,
    DistributedContext,
    EpochBatchSampler,
    Interval,
    NonFiniteLossError,
    TrainingConfig,
    collate_by_shape,
    evaluate_dataset,
    shard_indices,
    train,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FSDD = REPO_ROOT.parent / "shared" / "data" / "fsdd" / "train"

# A pixelcnn small enough that a step on an 8×8 digits batch takes milliseconds.
TINY_MODEL = {"num_filters": 8, "num_blocks": 1}


def _config(tmp_path, name="run", **overrides):
    values = {"model": "pixelcnn", "data": "digits", "out": str(tmp_path / name),
              "hyperparameters": dict(TINY_MODEL), "batch_size": 64, "eval_every": "1000",
              "checkpoint_every": "1000", "log_every": 5}
    values.update(overrides)
    return TrainingConfig(**values)


def _read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, unit, value", [
    ("500", "steps", 500),
    ("10min", "minutes", 10),
    ("2.5m", "minutes", 2.5),
    ("epoch", "epoch", 1),
    (" Epoch ", "epoch", 1),
])
def test_interval_parse(text, unit, value):
    interval = Interval.parse(text)

    assert interval.unit == unit
    assert interval.value == value
    assert Interval.parse(str(interval)) == interval


@pytest.mark.parametrize("text", ["", "0", "ten", "5h", "-3", "1.5"])
def test_interval_parse_rejects(text):
    with pytest.raises(ValueError):
        Interval.parse(text)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("lr", -1.0, "lr must be"),
    ("lr_decay", 1.5, r"lr_decay must be in \(0, 1\]"),
    ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
    ("precision", "float16", "precision must be one of"),
    ("grad_clip", 0.0, "grad_clip must be positive"),
    ("eval_every", "sometimes", "invalid interval"),
    ("max_steps", 0, "max_steps must be a positive integer"),
])
def test_config_rejects_out_of_range(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **{field: value})


def test_config_defaults_to_ten_epochs(tmp_path):
    assert _config(tmp_path).stop_epochs == 10
    assert _config(tmp_path, max_steps=5).stop_epochs is None


def test_config_round_trips_through_dict(tmp_path):
    config = _config(tmp_path, grad_clip=1.0)

    assert TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainingConfig.from_dict({**config.to_dict(), "momentum": 0.9})


# ---------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------


def _epoch_batches(sampler, epoch, start=0):
    sampler.set_position(epoch, start)
    return list(sampler)


def test_sampler_ranks_partition_global_batches():
    items = list(range(103))
    single = EpochBatchSampler(items, 8, seed=5)
    ranks = [EpochBatchSampler(items, 4, rank=rank, world_size=2, seed=5) for rank in range(2)]

    for epoch in range(3):
        global_batches = _epoch_batches(single, epoch)
        local = [_epoch_batches(sampler, epoch) for sampler in ranks]
        assert len(local[0]) == len(local[1]) == len(global_batches) == 103 // 8
        for index, batch in enumerate(global_batches):
            assert sorted(local[0][index] + local[1][index]) == sorted(batch)


def test_sampler_resumes_mid_epoch():
    sampler = EpochBatchSampler(range(50), 7, seed=1)
    full = _epoch_batches(sampler, 4)

    assert _epoch_batches(sampler, 4, start=3) == full[3:]
    assert len(sampler) == len(full) - 3
    assert _epoch_batches(sampler, 4, start=len(full)) == []


def test_sampler_order_depends_on_seed_and_epoch():
    first = EpochBatchSampler(range(50), 5, seed=1)
    again = EpochBatchSampler(range(50), 5, seed=1)
    other_seed = EpochBatchSampler(range(50), 5, seed=2)

    assert _epoch_batches(first, 0) == _epoch_batches(again, 0)
    assert _epoch_batches(first, 0) != _epoch_batches(first, 1)
    assert _epoch_batches(first, 0) != _epoch_batches(other_seed, 0)


def test_sampler_rejects_position_past_epoch():
    sampler = EpochBatchSampler(range(10), 3)

    with pytest.raises(ValueError, match=r"start_batch must be in \[0, 3\]"):
        sampler.set_position(0, 4)


def test_shard_indices_partition_without_padding():
    for world_size in (1, 2, 3, 7):
        shards = [list(shard_indices(10, DistributedContext(rank=rank, world_size=world_size)))
                  for rank in range(world_size)]
        assert sorted(index for shard in shards for index in shard) == list(range(10))


def test_collate_by_shape_groups_lengths():
    batch = [(torch.zeros(1, 5, dtype=torch.long), 0), (torch.ones(1, 3, dtype=torch.long), 1),
             (torch.full((1, 5), 2), 2)]

    groups = collate_by_shape(batch)

    assert [tuple(group.shape) for group in groups] == [(2, 1, 5), (1, 1, 3)]
    assert groups[0][1, 0, 0].item() == 2


# ---------------------------------------------------------------------------------------------------------
# Exact evaluation
# ---------------------------------------------------------------------------------------------------------


def _image_flow():
    torch.manual_seed(0)
    return create_flow("pixelcnn", (1, 8, 8), 17, **TINY_MODEL).double().eval()


def test_evaluate_sums_exact_log_likelihood():
    flow = _image_flow()
    q = torch.randint(0, 17, (13, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(13, dtype=torch.long)

    result = evaluate_dataset(flow, TensorDataset(q, labels), batch_size=4)

    expected_nll = -flow.log_prob(q).sum().item()
    assert result.num_examples == 13
    assert result.num_dims == 13 * 64
    assert result.dims_per_example == 64
    assert result.nll_nats == pytest.approx(expected_nll, rel=1e-12)
    assert result.bits_per_dim == pytest.approx(expected_nll / (13 * 64 * math.log(2)), rel=1e-12)
    assert result.nats_per_example == pytest.approx(expected_nll / 13, rel=1e-12)


def test_evaluate_independent_of_batch_size():
    flow = _image_flow()
    q = torch.randint(0, 17, (11, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    dataset = TensorDataset(q, torch.zeros(11, dtype=torch.long))

    results = [evaluate_dataset(flow, dataset, batch_size=size).nll_nats for size in (1, 3, 11, 64)]

    assert max(results) - min(results) < 1e-9 * abs(results[0])


def test_evaluate_variable_length_audio_weights_by_length():
    torch.manual_seed(0)
    flow = create_flow("wavenet", (1, 16), 32, residual_channels=4, dilation_channels=4, skip_channels=4,
                       num_layers=3, num_cycles=1).double().eval()
    generator = torch.Generator().manual_seed(2)
    clips = [torch.randint(0, 32, (1, length), generator=generator) for length in (9, 30, 9, 17)]
    dataset = [(clip, 0) for clip in clips]

    result = evaluate_dataset(flow, dataset, batch_size=3)

    nll = -sum(flow.log_prob(clip.unsqueeze(0)).item() for clip in clips)
    assert result.num_dims == 9 + 30 + 9 + 17
    assert result.dims_per_example is None
    assert result.nll_nats == pytest.approx(nll, rel=1e-12)
    # The split's bits/dim weights each clip by its length, unlike a mean of per-clip bits/dim.
    assert result.bits_per_dim == pytest.approx(nll / (65 * math.log(2)), rel=1e-12)


def test_evaluate_restores_training_mode():
    flow = _image_flow().train()
    q = torch.randint(0, 17, (2, 1, 8, 8))

    evaluate_dataset(flow, TensorDataset(q, torch.zeros(2)), batch_size=2)

    assert flow.training


def test_evaluate_leaves_global_generator_alone():
    flow = _image_flow()
    dataset = TensorDataset(torch.randint(0, 17, (3, 1, 8, 8)), torch.zeros(3))
    torch.manual_seed(11)
    expected = torch.rand(2)

    torch.manual_seed(11)
    evaluate_dataset(flow, dataset, batch_size=2)

    assert torch.equal(torch.rand(2), expected)


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def test_train_writes_run_directory(tmp_path):
    config = _config(tmp_path, max_steps=12, eval_every="5", checkpoint_every="10")

    summary = train(config)

    run_dir = tmp_path / "run"
    assert summary.step == 12
    assert summary.stop_reason == "max_steps"
    assert sorted(path.name for path in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt",
                                                               "metrics.jsonl"]

    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["training"] == config.to_dict()
    assert stored["flow"]["model"] == "pixelcnn"
    assert stored["dataset"]["num_bins"] == 17
    assert stored["dataset"]["data_shape"] == [1, 8, 8]

    records = _read_metrics(run_dir)
    train_records = [record for record in records if record["train_bits_per_dim"] is not None]
    val_records = [record for record in records if record["val_bits_per_dim"] is not None]
    assert [record["step"] for record in train_records] == [5, 10]
    assert [record["step"] for record in val_records] == [5, 10, 12]
    assert set(records[0]) == {"step", "epoch", "train_bits_per_dim", "val_bits_per_dim", "lr",
                               "examples_per_second", "elapsed_seconds"}
    assert all(math.isfinite(record["train_bits_per_dim"]) for record in train_records)
    assert train_records[0]["examples_per_second"] > 0
    assert train_records[1]["lr"] == pytest.approx(1e-3 * 0.999995**10)

    last = ckpt.load_checkpoint(run_dir / "last.pt")
    best = ckpt.load_checkpoint(run_dir / "best.pt")
    assert last["step"] == 12
    assert best["best_val_bits_per_dim"] == min(record["val_bits_per_dim"] for record in val_records)
    assert best["val_bits_per_dim"] == best["best_val_bits_per_dim"]
    assert last["optimizer"]["param_groups"][0]["betas"] == (0.95, 0.9995)


def test_train_validation_matches_evaluate(tmp_path):
    config = _config(tmp_path, max_steps=6, ema_decay=0.5)

    summary = train(config)

    from arflows.data import load_dataset

    flow, _ = ckpt.load_flow(tmp_path / "run" / "last.pt", weights="averaged")
    result = evaluate_dataset(flow, load_dataset("digits").split("validation"), batch_size=50)
    assert summary.last_val_bits_per_dim == pytest.approx(result.bits_per_dim, rel=1e-6)


def test_resume_matches_uninterrupted_run(tmp_path):
    # float64 and dropout: resuming must restore weights, Adam moments, the learning-rate schedule, the
    # averaged weights, the position inside an epoch and the dropout generator. The CPU kernels are
    # deterministic, so the two runs agree bit for bit; any missed piece of state shows up as a difference.
    common = {"precision": "float64", "hyperparameters": {**TINY_MODEL, "dropout": 0.3}, "eval_every": "7"}
    train(_config(tmp_path, "straight", max_steps=30, **common))
    train(_config(tmp_path, "resumed", max_steps=13, **common))
    summary = train(_config(tmp_path, "resumed", max_steps=30, **common), resume=True)

    straight = ckpt.load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = ckpt.load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert summary.step == 30
    assert resumed["epoch"] == straight["epoch"] == 1  # 22 batches of 64 per epoch: crosses an epoch
    assert resumed["batch_in_epoch"] == straight["batch_in_epoch"]
    for key, value in straight["model"].items():
        assert value.dtype == torch.float64
        assert torch.equal(resumed["model"][key], value), key
    for key, value in straight["averaged_model"].items():
        assert torch.equal(resumed["averaged_model"][key], value), key
    assert resumed["lr_scheduler"] == straight["lr_scheduler"]
    assert resumed["best_val_bits_per_dim"] == straight["best_val_bits_per_dim"]

    steps = [record["step"] for record in _read_metrics(tmp_path / "resumed")
             if record["train_bits_per_dim"] is not None]
    assert steps == sorted(set(steps))


def test_fp16_resume_restores_grad_scaler(tmp_path):
    train(_config(tmp_path, max_steps=2, precision="fp16"))
    first = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")

    summary = train(_config(tmp_path, max_steps=4, precision="fp16"), resume=True)

    assert summary.step == 4
    assert first["grad_scaler"]["scale"] > 0
    assert ckpt.load_checkpoint(tmp_path / "run" / "last.pt")["grad_scaler"]["_growth_tracker"] == 4


def test_max_minutes_stops_and_validates(tmp_path):
    config = _config(tmp_path, max_minutes=0.002, eval_every="0.0005min")

    summary = train(config)

    records = _read_metrics(tmp_path / "run")
    assert summary.stop_reason == "max_minutes"
    assert 1 <= summary.step < 1000
    assert any(record["val_bits_per_dim"] is not None for record in records)
    assert ckpt.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == summary.step


def test_resume_of_finished_run_does_nothing(tmp_path):
    train(_config(tmp_path, max_steps=3))
    before = (tmp_path / "run" / "last.pt").read_bytes()

    summary = train(_config(tmp_path, max_steps=3), resume=True)

    assert summary.stop_reason == "already_done"
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot resume"):
        train(_config(tmp_path, max_steps=3), resume=True)


def test_nonfinite_loss_keeps_last_good_checkpoint(tmp_path):
    # Adam moves every weight by about lr in its first step, so lr = 1e30 overflows float32 at once.
    config = _config(tmp_path, max_steps=50, lr=1e30, checkpoint_every="1")

    with pytest.raises(NonFiniteLossError, match="at step 2") as caught:
        train(config)

    assert caught.value.step == 2
    assert caught.value.checkpoint == tmp_path / "run" / "last.pt"
    flow, metadata = ckpt.load_flow(tmp_path / "run" / "last.pt", weights="raw")
    assert metadata["step"] == 1
    assert all(torch.isfinite(parameter).all() for parameter in flow.parameters())


def test_dataset_error_raised_before_files(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot load dataset"):
        train(_config(tmp_path, data="folder:" + str(tmp_path / "absent"), max_steps=1))

    assert not (tmp_path / "run").exists()


def test_batch_larger_than_split_raises(tmp_path):
    with pytest.raises(ConfigurationError, match="fewer than one batch"):
        train(_config(tmp_path, batch_size=4096, max_steps=1))


@pytest.mark.slow
@pytest.mark.skipif(not FSDD.is_dir(), reason=f"real audio {FSDD} is absent (outside a full checkout)")
def test_train_wavenet_on_real_speech(tmp_path):
    hyperparameters = {"residual_channels": 8, "dilation_channels": 8, "skip_channels": 8, "num_layers": 4,
                       "num_cycles": 1}
    config = _config(tmp_path, model="wavenet", data=f"wav:{FSDD}", hyperparameters=hyperparameters,
                     data_options={"max_examples": 24, "validation_fraction": 0.2}, segment_length=256,
                     batch_size=4, max_steps=10, lr=1e-2, ema_decay=0.0)

    summary = train(config)

    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["flow"]["data_shape"] == [1, 256]
    assert stored["dataset"]["data_shape"] == [1, None]
    # Validation runs on whole clips of varying length, each far longer than the training crops.
    assert math.isfinite(summary.last_val_bits_per_dim)
    assert summary.last_val_bits_per_dim < math.log2(256)


# ---------------------------------------------------------------------------------------------------------
# Signals (real subprocesses, real signals)
# ---------------------------------------------------------------------------------------------------------


def _subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("signal_number, exit_status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_exits(tmp_path, signal_number, exit_status):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "arflows", "train", "--model", "pixelcnn", "--data", "digits",
               "--out", str(run_dir), "--filters", "8", "--blocks", "1", "--batch-size", "16",
               "--log-every", "1", "--eval-every", "100000", "--checkpoint-every", "100000",
               "--max-steps", "100000"]
    process = subprocess.Popen(command, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 90
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "training did not start within 90 s"
            time.sleep(0.05)
        logged_step = json.loads(metrics.read_text().splitlines()[-1])["step"]
        assert not (run_dir / "last.pt").exists()

        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()

    text = stderr.decode()
    assert process.returncode == exit_status, text
    assert signal.Signals(signal_number).name in text
    assert "Traceback" not in text
    metadata = ckpt.load_checkpoint(run_dir / "last.pt")
    assert metadata["step"] >= logged_step
    assert metadata["step"] < 100000
