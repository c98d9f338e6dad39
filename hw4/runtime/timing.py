"""Where a run's wall time goes: each step of hw4-train timed as it runs.

A run logs its timings as `time_<step>_s` metrics and a `timing.json` artifact, so the cost of
imports, the store, the data, figures or model logging is visible in every run, not only in a
benchmark. The first run in a process also counts the process's start (the interpreter, Hydra,
composing the config) as `startup`; a sweep's later jobs in the same process have none.

Steps run one after another on the main thread, so they add up to the run's wall time (the rest
is `other`). Work done on a background thread (figures) is reported apart, as `background`:
only the main thread's wait for it (`wait_background`) is on the run's critical path.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")
ARTIFACT = "timing.json"
PREFIX = "time_"
_first_in_process = True
_first_lock = threading.Lock()


def process_start() -> Optional[float]:
    """When this process started, in seconds since the epoch (None if unknown).

    On Linux, from the process's age: /proc/uptime less its start tick in /proc/self/stat, both
    counted from boot. psutil adds the start tick to the boot time in /proc/stat, which is in
    whole seconds, so its answer is up to a second early (0.66 s on the project's machine)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows): psutil's estimate
        pass
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil missing or unreadable: no startup time, nothing else lost
        return None


def metric_name(step: str) -> str:
    return f"{PREFIX}{step}_s"


def first_in_process() -> bool:
    """True the first time it is called in a process (a sweep's first job), False after."""
    global _first_in_process
    with _first_lock:
        first, _first_in_process = _first_in_process, False
    return first


class Timings:
    """Seconds per step of one run; see the module docstring. With `since_process_start`, the
    total starts at the process's start, and the time before this object is the `startup` step."""

    def __init__(self, since_process_start: bool = False) -> None:
        self.started = time.time()
        self.steps: dict[str, float] = {}
        self.background: dict[str, float] = {}
        start = process_start() if since_process_start else None
        if start is not None and start <= self.started:
            self.steps["startup"] = self.started - start
            self.started = start

    @contextmanager
    def step(self, name: str, background: bool = False) -> Iterator[None]:
        """Time the block as step `name` (added up when a step runs more than once)."""
        into = self.background if background else self.steps
        start = time.perf_counter()
        try:
            yield
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - start

    def call(self, name: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)`, timed as step `name`."""
        with self.step(name):
            return function(*args, **kwargs)

    def total(self) -> float:
        return time.time() - self.started

    def report(self) -> dict[str, Any]:
        total = self.total()
        return {
            "total_s": round(total, 3),
            "steps_s": {name: round(s, 3) for name, s in self.steps.items()},
            "other_s": round(total - sum(self.steps.values()), 3),
            "background_s": {name: round(s, 3) for name, s in self.background.items()},
        }


def as_metrics(report: dict[str, Any]) -> dict[str, float]:
    """A `Timings.report()` as MLflow metrics: time_<step>_s, time_<step>_background_s,
    time_other_s, time_total_s."""
    metrics = {metric_name(name): s for name, s in report["steps_s"].items()}
    metrics.update({metric_name(f"{name}_background"): s for name, s in report["background_s"].items()})
    metrics[metric_name("other")] = report["other_s"]
    metrics[metric_name("total")] = report["total_s"]
    return metrics
