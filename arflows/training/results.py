"""Outcomes of a training call: its summary and the errors that stop it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["ConfigurationError", "NonFiniteLossError", "TrainingSummary"]


class ConfigurationError(ValueError):
    """Invalid user input found before training starts: dataset, model settings or a resumed run."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops without overwriting its checkpoints.

    Attributes:
        step: The 1-based step whose loss was not finite.
        loss: The loss value (bits/dim, averaged over processes).
        checkpoint: The last checkpoint on disk, which contains the state before the failure, or None.
    """

    def __init__(self, step: int, loss: float, checkpoint: Optional[Path], precision: str = "float32") -> None:
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
        remedy = "lower --lr or set --grad-clip"
        if precision in ("bf16", "fp16"):
            remedy += ", or train with --precision float32"
        super().__init__(f"training loss is {loss} at step {step}; stopped without saving, {where}. "
                         f"To avoid it, {remedy}")
        self.step = step
        self.loss = loss
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class TrainingSummary:
    """Final state of a call to `train`: step, epoch, validation results and the reason it stopped.

    Attributes:
        run_dir: The run directory.
        step: Optimizer steps taken in total, including those of resumed runs.
        epoch: Completed epochs.
        best_val_bits_per_dim: Best validation bits/dim seen, or None without a validation split.
        last_val_bits_per_dim: Validation bits/dim of the final weights, or None.
        stop_reason: `"epochs"`, `"max_steps"`, `"max_minutes"`, `"signal"` or `"already_done"`.
        signal_number: The signal that stopped training (SIGINT or SIGTERM), else None.
    """

    run_dir: Path
    step: int
    epoch: int
    best_val_bits_per_dim: Optional[float]
    last_val_bits_per_dim: Optional[float]
    stop_reason: str
    signal_number: Optional[int] = None
