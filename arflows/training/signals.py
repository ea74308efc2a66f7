"""SIGINT and SIGTERM handling that lets the training loop save a checkpoint before it stops."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

__all__ = ["SignalCatcher"]

logger = logging.getLogger(__name__)


class SignalCatcher:
    """Record SIGINT and SIGTERM so the loop can save a checkpoint after the current step.

    The first signal only sets `signal_number`; the previous handlers come back at once, so a second
    signal interrupts immediately (KeyboardInterrupt for SIGINT, termination for SIGTERM).
    """

    def __init__(self) -> None:
        self.signal_number: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalCatcher:
        # Python delivers signals to the main thread only; elsewhere the loop runs without the handlers.
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.signal_number = number
        self._restore()
        logger.warning("received %s: saving a checkpoint after the current step (send it again to stop "
                       "at once)", signal.Signals(number).name)

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __exit__(self, *exc_info: object) -> None:
        self._restore()
