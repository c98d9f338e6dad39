"""What this machine lets the process use, and how it ends (no TensorFlow, no MLflow)."""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a scheduler's cpuset),
    capped by a cgroup CPU quota (docker --cpus, Kubernetes limits), rounded up. os.cpu_count()
    counts the machine's cores and ignores both."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 limit to read
        pass
    return max(1, cores)


def others_running() -> list[str]:
    """What a normal exit would wait for: non-daemon threads besides this one, child processes."""
    import psutil

    threads = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    children = [f"process {child.pid}" for child in psutil.Process().children()]
    return threads + children


def exit_now(status: int = 0) -> NoReturn:
    """End the process with `status`, skipping the interpreter's teardown when nothing else runs.

    After a run that loaded TensorFlow, Python's own exit spends 1.7 to 1.9 s finalizing
    modules (its atexit handlers take under 1 ms). Everything of a normal exit that keeps data
    still happens: the atexit handlers (logging flushes and closes its files, MLflow's and
    multiprocessing's handlers, temporary folders' removal) and the flush of stdout and stderr.
    With another thread or a child process still alive (a joblib launcher's workers), the exit
    is the normal one, which waits for them."""
    if others_running():
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced stream: nothing to flush
            pass
    os._exit(status)
