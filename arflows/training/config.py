"""The resolved configuration of a training run and the step/minute/epoch intervals it uses."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["PRECISIONS", "Interval", "TrainingConfig"]

PRECISIONS = ("float32", "float64", "bf16", "fp16")


@dataclass(frozen=True)
class Interval:
    """How often something happens during training: every N steps, every N minutes, or every epoch.

    The text forms are `"500"` (steps), `"10min"` or `"10m"` (minutes of wall time since the run, or the
    resumed run, started) and `"epoch"` (at the end of each epoch).
    """

    unit: str
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.unit not in ("steps", "minutes", "epoch"):
            raise ValueError(f"interval unit must be 'steps', 'minutes' or 'epoch', got {self.unit!r}")
        if not (self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"interval must be a positive finite number, got {self.value!r}")
        if self.unit == "steps" and self.value != int(self.value):
            raise ValueError(f"a step interval must be a whole number of steps, got {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> Interval:
        """Parse `"500"`, `"2.5min"`, `"2.5m"` or `"epoch"` into an Interval."""
        cleaned = str(text).strip().lower()
        if cleaned == "epoch":
            return cls("epoch")
        match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(m|min|mins|minutes?)?", cleaned)
        if match is None:
            raise ValueError(f"invalid interval {text!r}; expected a number of steps such as '500', "
                             "minutes such as '10min', or 'epoch'")
        number = float(match.group(1))
        if match.group(2) is None:
            return cls("steps", number)
        return cls("minutes", number)

    def __str__(self) -> str:
        if self.unit == "epoch":
            return "epoch"
        if self.unit == "steps":
            return str(int(self.value))
        return f"{self.value:g}min"


@dataclass
class TrainingConfig:
    """Everything a training run needs; `config.json` in the run directory stores it as a dictionary.

    Attributes:
        model: Network family passed to `create_flow` (`pixelcnn`, `gated_pixelcnn`, `pixelcnn_pp`,
            `wavenet`).
        data: Dataset spec passed to `load_dataset` (for example `mnist`, `digits`, `folder:PATH`).
        out: Run directory for `config.json`, `metrics.jsonl`, `last.pt` and `best.pt`.
        hyperparameters: Keyword arguments of `create_flow` beyond model, shape and K.
        data_options: Keyword arguments of `load_dataset` beyond the spec.
        segment_length: Length in samples of the training crops of audio datasets; None for images.
        batch_size: Global batch size in examples, split evenly across distributed processes.
        eval_batch_size: Per-process batch size of validation; None uses `batch_size`.
        lr: Initial Adam learning rate.
        lr_decay: Per-step multiplicative decay, so step s uses `lr * lr_decay**s`.
        epochs, max_steps, max_minutes: Stop conditions; training stops at the first one reached. With
            none set, training runs for 10 epochs. `max_minutes` counts wall time of this invocation.
        seed: Seeds weight initialisation, data order (`seed + epoch`) and dropout.
        device: `auto`, `cpu`, `cuda` or an explicit device such as `cuda:1`.
        precision: `float32`, `float64` (for exactness checks), or mixed precision `bf16`/`fp16`
            through `torch.autocast`.
        ema_decay: Decay of the Polyak (exponential moving) average of the weights; 0 disables it.
        grad_clip: Maximum global gradient norm; None disables clipping.
        num_workers: DataLoader worker processes per training process.
        eval_every, checkpoint_every, log_every: Intervals of validation, of writing `last.pt` and of
            metrics lines (`log_every` in steps).
        compile: Run the network through `torch.compile` (training and validation copies), or eagerly
            if compilation fails. Off by default, because on a 2-core CPU it compiled for minutes and
            PixelCNN++ training was slower than eager.
    """

    model: str
    data: str
    out: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    segment_length: Optional[int] = None
    batch_size: int = 64
    eval_batch_size: Optional[int] = None
    lr: float = 1e-3
    lr_decay: float = 0.999995
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    precision: str = "float32"
    ema_decay: float = 0.9995
    grad_clip: Optional[float] = None
    num_workers: int = 0
    eval_every: str = "epoch"
    checkpoint_every: str = "10min"
    log_every: int = 50
    compile: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting outside its valid range."""
        _check_positive_int("batch_size", self.batch_size)
        if self.eval_batch_size is not None:
            _check_positive_int("eval_batch_size", self.eval_batch_size)
        if self.segment_length is not None:
            _check_positive_int("segment_length", self.segment_length)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if self.epochs is not None:
            _check_positive_int("epochs", self.epochs)
        if self.max_steps is not None:
            _check_positive_int("max_steps", self.max_steps)
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive (or None to disable), got {self.grad_clip!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        _check_positive_int("log_every", self.log_every)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        Interval.parse(self.eval_every)
        Interval.parse(self.checkpoint_every)

    @property
    def stop_epochs(self) -> Optional[int]:
        """Number of epochs to train; 10 when no stop condition is set at all."""
        if self.epochs is None and self.max_steps is None and self.max_minutes is None:
            return 10
        return self.epochs

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Build a configuration from `to_dict` output, rejecting unknown keys."""
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; expected a subset of {sorted(known)}")
        return cls(**values)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
