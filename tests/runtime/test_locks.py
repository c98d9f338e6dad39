"""Run locks: held while a live process trains a run, free once it ends or dies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hw4.errors import TrackingError
from hw4.runtime import locks


def test_a_lock_is_held_while_its_holder_lives_and_free_after(tmp_path):
    path = locks.lock_path(tmp_path, "run1")
    assert not locks.is_held(path)  # no file: nobody trains it
    with locks.RunLock(path, "run1"):
        assert locks.is_held(path)
        with pytest.raises(TrackingError, match="being trained by a live process"):
            locks.RunLock(path, "run1").acquire()
    assert not locks.is_held(path) and not path.exists()


def test_a_lock_left_by_a_dead_process_is_free(tmp_path):
    path = locks.lock_path(tmp_path, "run1")
    holder = (
        "import os, sys; from hw4.runtime import locks; "
        f"locks.RunLock({str(path)!r}, 'run1').acquire(); os._exit(0)"  # dies holding it
    )
    subprocess.run([sys.executable, "-c", holder], check=True)
    assert path.exists() and "pid" in path.read_text()  # the file stays behind
    assert not locks.is_held(path)  # the kernel dropped the lock with the process
