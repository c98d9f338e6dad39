"""Ctrl-C and SIGTERM during a run: stop at a safe point, never in the middle of a store write.

`RunSignals` is entered for one run and restores the previous handlers when the run ends, so a
reused joblib or Ray worker gets its own SIGTERM back. While it is active, a first SIGINT or
SIGTERM is only recorded: training stops after the current epoch (its checkpoint and metrics
whole), and anywhere else the run goes on to its next safe point. A second signal interrupts
at once (KeyboardInterrupt), for a user who does not want to wait.

No TensorFlow here.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

log = logging.getLogger(__name__)
HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunSignals:
    """See the module docstring. `received` is the first signal's number, or None."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        self.received = signum
        log.warning("signal %d: stopping at the next safe point (again to stop at once)", signum)

    def check(self) -> None:
        """Stop here (KeyboardInterrupt) if a signal came."""
        if self.received is not None:
            raise KeyboardInterrupt(f"signal {self.received}")

    def __enter__(self) -> "RunSignals":
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
