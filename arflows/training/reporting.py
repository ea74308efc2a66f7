"""Progress bar and the metrics.jsonl file of a run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from arflows import checkpoint as checkpoints

__all__ = ["MetricsLog", "progress_bar", "truncate_metrics"]

logger = logging.getLogger(__name__)


class MetricsLog:
    """The `metrics.jsonl` file of a run directory, mirrored to TensorBoard when it is installed.

    Each record is one JSON line, flushed at once so that a killed run keeps every line it wrote.

    Args:
        run_dir: The run directory.
        resume_step: For a resumed run, the step of the checkpoint it continues. Lines after it (written
            after that checkpoint) are dropped, so the file never contains a step twice.
    """

    def __init__(self, run_dir: Path, *, resume_step: Optional[int] = None) -> None:
        path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None:
            truncate_metrics(path, resume_step)
        # Kept open for the whole run and closed by close(), so a context manager does not fit.
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.debug("tensorboard is not installed; writing metrics.jsonl only")
        else:
            # NOTE: this branch is not exercised by the tests, which run without tensorboard installed.
            self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step or None)

    def write(self, record: dict) -> None:
        """Append one record: a dictionary with a `step` key and numbers or None as values."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and value is not None:
                    self._writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        """Close the file and the TensorBoard writer."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def progress_bar(enabled: bool, total: Optional[int], initial: int) -> Any:
    """Return a tqdm bar over training steps, starting at `initial`; `enabled` is False off rank 0."""
    from tqdm.auto import tqdm

    # disable=None lets tqdm switch itself off when stderr is not a terminal (logs, CI, subprocesses).
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None if enabled else True,
                desc="training")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines after `step` (written after the checkpoint being resumed) and partial lines."""
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(json.dumps(record))
    checkpoints.atomic_write_bytes(path, "".join(item + "\n" for item in kept).encode("utf-8"))
