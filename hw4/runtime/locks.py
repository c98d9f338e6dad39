"""Which process trains a run: an flock on `<checkpoint_dir>/<run id>.lock`.

No TensorFlow here: a sweep's launcher reads the locks too, to tell a run whose process died
(left RUNNING) from one still being trained.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Optional

from hw4.errors import TrackingError


def lock_path(checkpoint_root: Path, run_id: str) -> Path:
    return Path(checkpoint_root) / f"{run_id}.lock"


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock at `path` (a dead one cannot)."""
    try:
        handle = open(path, "r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class RunLock:
    """An exclusive lock on one run's checkpoint, held while a process trains the run.

    flock: the kernel releases it when its process dies, however it dies, so a run left RUNNING
    by a killed process can be resumed, and one still being trained cannot (two writers on one
    run and one checkpoint folder). It guards one machine's disk: jobs on other machines do not
    see each other's locks.
    """

    def __init__(self, path: Path, run_id: str):
        self.path = Path(path)
        self.run_id = run_id
        self._file: Optional[IO[str]] = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TrackingError(
                f"run {self.run_id} is being trained by a live process ({holder}); "
                "wait for it or stop it before resuming"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        self._file = handle

    def release(self, *, keep_file: bool = False) -> None:
        """Drop the lock. `keep_file`: the run is left RUNNING, and its lock file, free now, tells a
        later process that its holder is gone (`is_held` is false)."""
        if self._file is not None:
            if not keep_file:
                self.path.unlink(missing_ok=True)
            self._file.close()  # closing drops the lock
            self._file = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
