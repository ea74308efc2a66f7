"""The training loop: Adam with exponential decay, autocast, weight averaging, validation, checkpoints."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from arflows import checkpoint as checkpoints
from arflows.training.checks import check_data_matches_flow, find_validation_split, format_shape
from arflows.training.config import Interval, TrainingConfig
from arflows.training.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_sum,
    init_distributed,
)
from arflows.training.evaluation import autocast_context, evaluate_dataset
from arflows.training.performance import compile_network, fused_adam_supported, retain_freed_memory
from arflows.training.reporting import MetricsLog, progress_bar
from arflows.training.results import ConfigurationError, NonFiniteLossError, TrainingSummary
from arflows.training.sampling import EpochBatchSampler
from arflows.training.signals import SignalCatcher

__all__ = ["ADAM_BETAS", "RUN_FILES", "train"]

logger = logging.getLogger(__name__)

# Adam moment decays of PixelCNN++ (Salimans et al. 2017): a short first-moment memory and a long second.
ADAM_BETAS = (0.95, 0.9995)

# Files a run directory receives; `--force` deletes exactly these before a fresh run.
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt")

class _LogLikelihood(nn.Module):
    """Wrapper whose `forward(q)` returns `flow.log_prob(q)`.

    DistributedDataParallel synchronises gradients only for computations that run through its own
    `forward`, so the loss must come from a module call and not from the `log_prob` method.
    """

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(q)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _process_seed(seed: int, rank: int) -> int:
    # Distinct, reproducible streams per process for dropout and data augmentation.
    return int(np.random.SeedSequence([seed, rank, 1]).generate_state(1)[0])


class _TrainingRun:
    """State and steps of one training invocation; `train` is the public entry point."""

    def __init__(self, config: TrainingConfig, context: DistributedContext, resume: bool) -> None:
        self.config = config
        self.context = context
        self.resume = resume
        self.device = context.device
        self.run_dir = Path(config.out)
        self.eval_interval = Interval.parse(config.eval_every)
        self.checkpoint_interval = Interval.parse(config.checkpoint_every)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_val: Optional[float] = None
        self.last_val: Optional[float] = None
        self.last_val_step: Optional[int] = None
        self.elapsed_before = 0.0
        self._rng_to_restore: Optional[dict] = None

        self._start_time = time.monotonic()
        self._last_eval_time = self._start_time
        self._last_checkpoint_time = self._start_time
        self._iterator: Optional[Any] = None
        self._metrics: Optional[MetricsLog] = None

    # ----------------------------------------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Load data and build everything; raise ConfigurationError before any file is written."""
        config, context = self.config, self.context
        if config.batch_size % context.world_size:
            raise ConfigurationError(f"--batch-size {config.batch_size} is the global batch and must be "
                                     f"divisible by the number of processes ({context.world_size})")
        self.local_batch_size = config.batch_size // context.world_size

        checkpoint = None
        if self.resume:
            try:
                checkpoint = checkpoints.load_checkpoint(self.run_dir, prefer="last")
            except checkpoints.CheckpointError as error:
                raise ConfigurationError(f"cannot resume: {error}") from error

        if self.device.type == "cpu":
            # Each step frees and reallocates the same activations; reusing them saves page faults.
            retain_freed_memory()

        _seed_all(config.seed)
        self._load_data()
        self._build_flow(checkpoint)
        self._build_optimisation()

        if checkpoint is not None:
            self._restore(checkpoint)
        if config.compile:
            self._compile()

    def _load_data(self) -> None:
        from arflows.data import load_dataset

        config = self.config
        try:
            self.dataset = load_dataset(config.data, **config.data_options)
            split_options = {}
            if config.segment_length is not None:
                split_options["segment_length"] = config.segment_length
            self.train_set = self.dataset.split("train", **split_options)
            self.val_split = find_validation_split(self.dataset.split_names)
            self.val_set = self.dataset.split(self.val_split) if self.val_split else None
            if self.val_set is not None and len(self.val_set) == 0:
                # An empty split (validation_fraction=0) is treated as none, because evaluating it fails.
                self.val_set = None
        except (ValueError, TypeError, OSError) as error:
            # OSError covers missing or unreadable files and failed downloads (DownloadError).
            raise ConfigurationError(f"cannot load dataset {config.data!r}: {error}") from error

        self.sampler = EpochBatchSampler(self.train_set, self.local_batch_size, rank=self.context.rank,
                                         world_size=self.context.world_size, seed=config.seed)
        if self.sampler.batches_per_epoch == 0:
            raise ConfigurationError(f"the training split of {config.data!r} has {len(self.train_set)} "
                                     f"examples, fewer than one batch of {config.batch_size}; lower "
                                     "--batch-size")
        if self.val_set is None:
            logger.warning("dataset %s has no validation examples (splits: %s); best.pt will not be written",
                           config.data, ", ".join(self.dataset.split_names))

        # The loader gets its own generator: DataLoader otherwise draws worker seeds from the global
        # torch generator, and evaluation points would then shift the dropout stream.
        self._loader_generator = torch.Generator().manual_seed(_process_seed(config.seed, self.context.rank))
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=config.num_workers,
                                 pin_memory=self.device.type == "cuda", generator=self._loader_generator,
                                 persistent_workers=config.num_workers > 0)

    def _build_flow(self, checkpoint: Optional[dict]) -> None:
        from arflows.flows import create_flow, flow_from_config

        config = self.config
        # Initial weights are drawn in float32 whatever the caller's default dtype, so that a seed gives
        # the same run in any process. float64 runs then convert the float32 draws.
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            if checkpoint is not None:
                self.flow = flow_from_config(checkpoint["flow"])
            else:
                self.flow = create_flow(config.model, self._flow_data_shape(), self.dataset.num_bins,
                                        **config.hyperparameters)
            check_data_matches_flow(self.flow.config, self.dataset.num_bins, self.dataset.data_shape,
                                    f"dataset {self.dataset.name!r}")
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"cannot build the {config.model} flow: {error}") from error
        finally:
            torch.set_default_dtype(previous_dtype)

        dtype = torch.float64 if config.precision == "float64" else torch.float32
        self.flow.to(device=self.device, dtype=dtype)
        self.model: nn.Module = _LogLikelihood(self.flow)
        if self.context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=device_ids)

        num_parameters = sum(parameter.numel() for parameter in self.flow.parameters())
        logger.info("%s flow with %s parameters for %s data with K=%d", config.model,
                    f"{num_parameters:,}", format_shape(tuple(self.dataset.data_shape)), self.dataset.num_bins)
        self._log_receptive_field()

    @property
    def receptive_field(self) -> Optional[int]:
        """Past samples that the network reads at each step (WaveNet), None for image networks."""
        value = getattr(self.flow.net, "receptive_field", None)
        return None if value is None else int(value)

    def _log_receptive_field(self) -> None:
        receptive_field = self.receptive_field
        if receptive_field is None:
            return
        sample_rate = getattr(self.dataset, "sample_rate", None)
        duration = f" ({1000.0 * receptive_field / sample_rate:.1f} ms at {sample_rate} Hz)" if sample_rate else ""
        logger.info("receptive field: %d samples%s", receptive_field, duration)
        segment_length = self.config.segment_length
        if segment_length is not None and segment_length < receptive_field:
            # Allowed, because the network zero-pads before the first sample, but the weights that read
            # further back than the crop then never see data during training.
            logger.warning("--segment-length %d is shorter than the receptive field (%d samples): training "
                           "crops never fill the network's context", segment_length, receptive_field)

    def _flow_data_shape(self) -> tuple[int, ...]:
        # Audio datasets have shape (1, None) because clips differ in length; the flow's default length
        # is then the training segment length.
        shape = tuple(self.dataset.data_shape)
        if None not in shape:
            return shape
        if self.config.segment_length is None:
            raise ValueError(f"dataset {self.config.data!r} contains audio clips of varying length; pass "
                             "--segment-length (samples per training crop)")
        return tuple(self.config.segment_length if size is None else size for size in shape)

    def _build_optimisation(self) -> None:
        config = self.config
        # The fused kernel gives the same update up to rounding, in one pass per tensor.
        fused = fused_adam_supported(self.flow.parameters()) or None
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=config.lr, betas=ADAM_BETAS, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=config.lr_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.averaged: Optional[AveragedModel] = None
        if config.ema_decay > 0:
            self.averaged = AveragedModel(self.flow, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                                          use_buffers=True)

    def _compile(self) -> None:
        """Compile the network of the trained flow and of its averaged copy, each checked by one call.

        This runs after the averaged copy exists: a deep copy of a compiled module would keep calling the
        original's forward. The trial step uses a batch of zeros under a forked random state, calls the
        flow without the DistributedDataParallel wrapper (whose gradient hooks are idle before its first
        forward pass) and discards its gradients.
        """
        q = torch.zeros((self.local_batch_size, *self.flow.data_shape), dtype=torch.long, device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []

        def training_trial() -> None:
            with torch.random.fork_rng(devices=devices), autocast_context(self.device, self.config.precision):
                self.flow.log_prob(q).sum().backward()
            self.optimizer.zero_grad(set_to_none=True)

        compile_network(self.flow.net, training_trial)
        if self.averaged is not None:
            averaged = self.averaged.module

            @torch.no_grad()
            def evaluation_trial() -> None:
                averaged.eval()
                try:
                    with autocast_context(self.device, self.config.precision):
                        averaged.log_prob(q)
                finally:
                    averaged.train()

            compile_network(averaged.net, evaluation_trial)

    def _restore(self, checkpoint: dict) -> None:
        """Load weights, optimizer, schedule, averages, position and generators from a checkpoint."""
        self.flow.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler.is_enabled() and checkpoint.get("grad_scaler"):
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        if self.averaged is not None:
            if checkpoint.get("averaged_model") is None:
                raise ConfigurationError(f"{checkpoint['path']} has no averaged weights (trained with "
                                         "--ema-decay 0) but this run averages them")
            self.averaged.load_state_dict(checkpoint["averaged_model"])

        self.step = int(checkpoint["step"])
        self.epoch = int(checkpoint["epoch"])
        self.batch_in_epoch = int(checkpoint["batch_in_epoch"])
        self.best_val = checkpoint.get("best_val_bits_per_dim")
        self.last_val = checkpoint.get("val_bits_per_dim")
        self.last_val_step = checkpoint.get("val_step")
        self.elapsed_before = float(checkpoint.get("elapsed_seconds", 0.0))

        states = checkpoint.get("rng") or []
        if len(states) == self.context.world_size:
            self._rng_to_restore = states[self.context.rank]
        else:
            logger.warning("checkpoint was written by %d processes and this run has %d: random streams "
                           "(dropout) restart from the seed, so results will differ from an "
                           "uninterrupted run", len(states), self.context.world_size)
        logger.info("resumed %s at step %d (epoch %d, batch %d of the epoch)", checkpoint["path"], self.step,
                    self.epoch, self.batch_in_epoch)

    # ----------------------------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------------------------

    def _open_outputs(self) -> None:
        if not self.context.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_stale_temporary_files(self.run_dir)
        checkpoints.atomic_write_json(self.run_dir / "config.json", self._resolved_config())

        self._metrics = MetricsLog(self.run_dir, resume_step=self.step if self.resume else None)

    def _close_outputs(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def _resolved_config(self) -> dict:
        return {
            "training": self.config.to_dict(),
            "flow": self.flow.config,
            "receptive_field": self.receptive_field,
            "dataset": self._dataset_description(),
            "world_size": self.context.world_size,
            "local_batch_size": self.local_batch_size,
            "batches_per_epoch": self.sampler.batches_per_epoch,
            "validation_split": self.val_split,
            "arflows_version": _arflows_version(),
            "torch_version": str(torch.__version__),
        }

    def _dataset_description(self) -> dict:
        description = {
            "name": self.dataset.name,
            "spec": self.dataset.spec,
            "num_bins": int(self.dataset.num_bins),
            "data_shape": [None if size is None else int(size) for size in self.dataset.data_shape],
            "options": dict(self.config.data_options),
            "segment_length": self.config.segment_length,
            "num_train_examples": len(self.train_set),
        }
        # Audio commands (decode, sample, interpolate) write WAV files at this rate with this quantization.
        sample_rate = getattr(self.dataset, "sample_rate", None)
        if sample_rate is not None:
            description["sample_rate"] = int(sample_rate)
            description["quantization"] = self.dataset.quantization
        return description

    def _write_metrics(self, record: dict) -> None:
        # Only rank 0 opens the log; the other processes skip the write.
        if self._metrics is not None:
            self._metrics.write(record)

    def _checkpoint_state(self) -> dict:
        # Every process contributes its generator state, so that a resumed job with the same number of
        # processes continues every random stream. This is a collective call, made on all ranks.
        rng_states = all_gather_objects(checkpoints.capture_rng_state(), self.context)
        return {
            "format": checkpoints.CHECKPOINT_FORMAT,
            "format_version": checkpoints.CHECKPOINT_VERSION,
            "arflows_version": _arflows_version(),
            "torch_version": str(torch.__version__),
            "flow": self.flow.config,
            "receptive_field": self.receptive_field,
            "dataset": self._dataset_description(),
            "config": self.config.to_dict(),
            "model": self.flow.state_dict(),
            "averaged_model": self.averaged.state_dict() if self.averaged is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batches_per_epoch": self.sampler.batches_per_epoch,
            "best_val_bits_per_dim": self.best_val,
            "val_bits_per_dim": self.last_val,
            "val_step": self.last_val_step,
            "rng": rng_states,
            "world_size": self.context.world_size,
            "elapsed_seconds": self._elapsed(),
        }

    def _save(self, name: str) -> None:
        state = self._checkpoint_state()
        if self.context.is_main:
            checkpoints.save_checkpoint(self.run_dir / name, state)
            logger.info("saved %s at step %d", self.run_dir / name, self.step)
        self._last_checkpoint_time = time.monotonic()

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._start_time

    # ----------------------------------------------------------------------------------------------------
    # Steps
    # ----------------------------------------------------------------------------------------------------

    def _next_batch(self) -> torch.Tensor:
        if self._iterator is None:
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            self._iterator = iter(self.loader)
        q, _ = next(self._iterator)
        return q.to(self.device, non_blocking=True)

    def _forward_backward(self, q: torch.Tensor) -> torch.Tensor:
        """Return the batch's bits/dim, −Σ log P(q) / (B·D·ln 2), after backpropagating it."""
        num_dims = q[0].numel()
        with autocast_context(self.device, self.config.precision):
            log_prob = self.model(q)  # (B,) nats
        loss = -log_prob.mean() / (num_dims * math.log(2.0))
        self.scaler.scale(loss).backward()
        return loss.detach()

    def _synchronise(self, loss: torch.Tensor, signal_number: Optional[int]) -> dict:
        """Average the loss over processes and agree on signals and on time-based decisions.

        Wall-clock decisions (minute intervals, --max-minutes) are taken by rank 0 alone and shared,
        because process clocks differ slightly and every rank must make the same choice.
        """
        now = time.monotonic()
        main = self.context.is_main
        eval_interval, checkpoint_interval = self.eval_interval, self.checkpoint_interval
        flags = [
            float(signal_number is not None),
            float(main and eval_interval.unit == "minutes"
                  and now - self._last_eval_time >= 60 * eval_interval.value),
            float(main and checkpoint_interval.unit == "minutes"
                  and now - self._last_checkpoint_time >= 60 * checkpoint_interval.value),
            float(main and self.config.max_minutes is not None
                  and now - self._start_time >= 60 * self.config.max_minutes),
        ]
        values = torch.tensor([loss.item(), *flags], dtype=torch.float64)
        values = all_reduce_sum(values, self.context)
        return {
            "loss": values[0].item() / self.context.world_size,
            "signal": values[1].item() > 0,
            "eval_time": values[2].item() > 0,
            "checkpoint_time": values[3].item() > 0,
            "time_up": values[4].item() > 0,
        }

    def _optimizer_step(self) -> None:
        if self.config.grad_clip is not None:
            # Gradients must be unscaled before their norm is compared with the limit.
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.flow)

    def _validate(self) -> None:
        """Measure exact validation bits/dim with the averaged weights (raw when averaging is off)."""
        if self.val_set is None:
            return
        flow = self.averaged.module if self.averaged is not None else self.flow
        result = evaluate_dataset(flow, self.val_set,
                                  batch_size=self.config.eval_batch_size or self.local_batch_size,
                                  device=self.device, precision=self.config.precision,
                                  num_workers=self.config.num_workers, context=self.context)
        self.last_val = result.bits_per_dim
        self.last_val_step = self.step
        self._last_eval_time = time.monotonic()
        improved = self.best_val is None or result.bits_per_dim < self.best_val
        unit = "bits/sample" if getattr(self.dataset, "sample_rate", None) is not None else "bits/dim"
        logger.info("step %d: validation %.5f %s over %d examples (%s weights)%s", self.step,
                    result.bits_per_dim, unit, result.num_examples,
                    "averaged" if self.averaged is not None else "raw", ", new best" if improved else "")
        self._write_metrics(self._metrics_record(val_bits_per_dim=result.bits_per_dim))
        if improved:
            self.best_val = result.bits_per_dim
            self._save("best.pt")

    def _metrics_record(self, **values: Any) -> dict:
        fraction = self.batch_in_epoch / self.sampler.batches_per_epoch
        record = {
            "step": self.step,
            "epoch": round(self.epoch + fraction, 6),
            "train_bits_per_dim": None,
            "val_bits_per_dim": None,
            "lr": self.scheduler.get_last_lr()[0],
            "examples_per_second": None,
            "elapsed_seconds": round(self._elapsed(), 3),
        }
        record.update(values)
        return record

    # ----------------------------------------------------------------------------------------------------
    # Loop
    # ----------------------------------------------------------------------------------------------------

    def _finished_reason(self, flags: Optional[dict]) -> Optional[str]:
        config = self.config
        if config.max_steps is not None and self.step >= config.max_steps:
            return "max_steps"
        if config.stop_epochs is not None and self.epoch >= config.stop_epochs:
            return "epochs"
        if flags is not None and flags["time_up"]:
            return "max_minutes"
        return None

    def _total_steps(self) -> Optional[int]:
        candidates = []
        if self.config.max_steps is not None:
            candidates.append(self.config.max_steps)
        if self.config.stop_epochs is not None:
            candidates.append(self.config.stop_epochs * self.sampler.batches_per_epoch)
        return min(candidates) if candidates else None

    def run(self) -> TrainingSummary:
        """Train until a stop condition or a signal; return where training stopped."""
        reason = self._finished_reason(None)
        if reason is not None:
            logger.info("the run already reached its stop condition (%s) at step %d; nothing to do",
                        reason, self.step)
            return self._summary("already_done")

        self._open_outputs()
        try:
            with SignalCatcher() as catcher:
                return self._loop(catcher)
        finally:
            self._close_outputs()

    def _loop(self, catcher: SignalCatcher) -> TrainingSummary:
        config = self.config
        progress = progress_bar(self.context.is_main, self._total_steps(), self.step)

        # Generators are restored last, so the random stream at the first step equals the one an
        # uninterrupted run had at this step. A fresh run starts each process from its own seed.
        if self._rng_to_restore is not None:
            checkpoints.restore_rng_state(self._rng_to_restore)
        else:
            _seed_all(_process_seed(config.seed, self.context.rank))

        self.flow.train()
        window_losses: list[float] = []
        window_seconds = 0.0
        reason: Optional[str] = None
        try:
            while reason is None:
                step_start = time.perf_counter()

                # 1. Fetch the next batch of this process's shard of the epoch.
                q = self._next_batch()

                # 2. Forward and backward pass; DDP averages the gradients across processes here.
                loss = self._forward_backward(q)

                # 3. Agree across processes on the loss, signals and clock-based decisions.
                flags = self._synchronise(loss, catcher.signal_number)
                if not math.isfinite(flags["loss"]):
                    last = self.run_dir / "last.pt"
                    raise NonFiniteLossError(self.step + 1, flags["loss"], last if last.exists() else None,
                                             config.precision)

                # 4. Update the weights, the learning rate and the averaged weights.
                self._optimizer_step()
                self.step += 1
                self.batch_in_epoch += 1
                window_losses.append(flags["loss"])
                window_seconds += time.perf_counter() - step_start

                # 5. Start a new epoch once this one's batches are used up.
                epoch_ended = self.batch_in_epoch == self.sampler.batches_per_epoch
                if epoch_ended:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self._iterator = None

                # 6. Report training metrics.
                throughput = config.batch_size / max(time.perf_counter() - step_start, 1e-9)
                progress.update(1)
                progress.set_postfix(bpd=f"{flags['loss']:.4f}", ex_s=f"{throughput:.0f}", refresh=False)
                if self.step % config.log_every == 0 or epoch_ended:
                    self._write_metrics(self._metrics_record(
                        train_bits_per_dim=sum(window_losses) / len(window_losses),
                        examples_per_second=len(window_losses) * config.batch_size / max(window_seconds, 1e-9)))
                    window_losses, window_seconds = [], 0.0

                # 7. Validate, keep the best weights, and write last.pt when due.
                reason = self._finished_reason(flags)
                if flags["signal"]:
                    reason = "signal"
                if reason is None and _due(self.eval_interval, self.step, epoch_ended, flags["eval_time"]):
                    self._validate()
                if reason is None and _due(self.checkpoint_interval, self.step, epoch_ended,
                                           flags["checkpoint_time"]):
                    self._save("last.pt")
        finally:
            progress.close()

        # The final weights are validated (unless that just happened) and saved. After a signal only the
        # save runs, so that the process stops quickly.
        if self.last_val_step != self.step and reason != "signal":
            self._validate()
        self._save("last.pt")
        signal_number = catcher.signal_number
        if reason == "signal" and signal_number is None:
            # Another process received the signal; report SIGTERM, the signal schedulers send.
            signal_number = int(signal.SIGTERM)
        logger.info("stopped at step %d (epoch %d): %s", self.step, self.epoch, reason)
        return self._summary(reason, signal_number)

    def _summary(self, reason: str, signal_number: Optional[int] = None) -> TrainingSummary:
        return TrainingSummary(run_dir=self.run_dir, step=self.step, epoch=self.epoch,
                               best_val_bits_per_dim=self.best_val, last_val_bits_per_dim=self.last_val,
                               stop_reason=reason, signal_number=signal_number)


def _due(interval: Interval, step: int, epoch_ended: bool, time_flag: bool) -> bool:
    if interval.unit == "steps":
        return step % int(interval.value) == 0
    if interval.unit == "epoch":
        return epoch_ended
    return time_flag


def _arflows_version() -> str:
    import arflows

    return getattr(arflows, "__version__", "unknown")


def train(config: TrainingConfig, *, resume: bool = False,
          context: Optional[DistributedContext] = None) -> TrainingSummary:
    """Train a flow as `config` describes, writing the run directory `config.out`.

    Under `torchrun` every process calls this function. It joins the process group (gloo on CPU, NCCL on
    CUDA) and trains with DistributedDataParallel, and only rank 0 writes files.

    Args:
        config: The resolved configuration.
        resume: Continue from `config.out/last.pt`, restoring weights, optimizer, learning-rate schedule,
            averaged weights, step, position in the epoch and random generators.
        context: A distributed context; None reads it from the environment (`init_distributed`).

    Returns:
        Where training stopped. After SIGINT or SIGTERM it returns normally with
        `stop_reason="signal"`, having saved `last.pt`.

    Raises:
        ConfigurationError: For invalid data, model settings or resume state, before training starts.
        NonFiniteLossError: If the loss becomes NaN or infinite; checkpoints on disk stay as they were.
    """
    owns_group = context is None and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if context is None:
        try:
            context = init_distributed(config.device)
        except ValueError as error:
            raise ConfigurationError(str(error)) from error
    try:
        run = _TrainingRun(config, context, resume)
        run.setup()
        return run.run()
    finally:
        if owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
