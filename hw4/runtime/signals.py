"""Ctrl-C and SIGTERM during a run or a sweep: stop at a safe point, never in the middle of a
store write.

`RunSignals` is entered for one run (or, in a sweep's launcher, for the whole sweep) and
restores the previous handlers when it ends, so a reused joblib or Ray worker gets its own
SIGTERM back. While it is active, a first SIGINT or SIGTERM is only recorded: training stops
after the current epoch (its checkpoint and metrics whole), and anywhere else the run goes on to
its next safe point. A second signal interrupts at once (KeyboardInterrupt), for a user who does
not want to wait.

In a sweep, the first signal also writes the sweep's stop file (`stop_file`): every job of the
sweep, in this process or in a worker process, reads it. A running job stops after its epoch as
if signalled itself, and a job not yet started does not start. So a SIGTERM to the launcher alone
(what `timeout`, schedulers and container stops send) stops its workers too.

No TensorFlow here.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)
HANDLED = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The run or sweep stopped on a signal; `signum` says which (0: another job's)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def exit_status(stop: KeyboardInterrupt) -> int:
    """The exit status of a process ended by the signal that stopped it, as a shell reports one
    (128 + its number); a plain KeyboardInterrupt is a Ctrl-C. The console scripts' one place."""
    return 128 + (getattr(stop, "signum", 0) or signal.SIGINT)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name if signum else "a signal to the sweep"


class RunSignals:
    """See the module docstring. `received` is the first signal's number, or None."""

    def __init__(self, stop_file: Optional[Path] = None) -> None:
        self.received: Optional[int] = None
        self.stop_file = stop_file
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise Stopped(signum, f"{signal_name(signum)} again: stopped at once")
        self.received = signum
        if self.stop_file is not None:
            request_stop(self.stop_file, signum)
        log.warning("%s: stopping at the next safe point (again to stop at once)", signal_name(signum))

    @property
    def stop_requested(self) -> bool:
        """A signal came to this process, or (in a sweep) to the launcher or another job."""
        return self.received is not None or (self.stop_file is not None and self.stop_file.exists())

    def signum(self) -> int:
        """The signal that stopped the run: this process's, else the one the stop file names."""
        if self.received is not None:
            return self.received
        return stop_signal(self.stop_file) if self.stop_file is not None else 0

    def check(self) -> None:
        """Stop here (Stopped, a KeyboardInterrupt) if a stop was asked for."""
        if self.stop_requested:
            signum = self.signum()
            raise Stopped(signum, f"{signal_name(signum)}: stopped")

    def __enter__(self) -> "RunSignals":
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def request_stop(stop_file: Path, signum: int) -> None:
    """Ask every job of a sweep to stop (see the module docstring)."""
    try:
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.write_text(f"{signum}\n")
    except OSError:  # the sweep still stops in this process
        log.exception("could not write the sweep's stop file %s", stop_file)


def stop_signal(stop_file: Path) -> int:
    """The signal number a stop file records (0 if unreadable)."""
    try:
        return int(stop_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
