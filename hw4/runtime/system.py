"""What this machine lets the process use, and how it ends (no TensorFlow, no MLflow)."""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import logging
import math
import os
import platform
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn, Optional

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
XLA_FLAGS_ENV = "TF_XLA_FLAGS"
XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"
AUTO = "auto"
OFF = ("", "none", "null", "false", "off")  # trainer.xla_cache values that mean no cache
log = logging.getLogger(__name__)


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


def cpu_signature() -> str:
    """A short hash of this CPU's model and instruction-set flags and of XLA's compile options
    (XLA_FLAGS): XLA compiles for the host's instructions, so a cache folder shared by other
    machines (a home on NFS) or other options must not mix their programs."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    except OSError:  # not Linux
        wanted = []
    text = "\n".join(wanted) or f"{platform.machine()} {platform.processor()}"
    text += "\n" + os.environ.get("XLA_FLAGS", "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def xla_cache_dir(setting: Optional[str], base: Optional[Path] = None) -> Optional[Path]:
    """trainer.xla_cache as a folder: "auto" is hw4/xla/<TensorFlow version>-<CPU> under
    $XDG_CACHE_HOME (or ~/.cache); a path is used as given (relative: to `base`); null is none."""
    if setting is None or str(setting).strip().lower() in OFF:
        return None
    if str(setting) != AUTO:
        folder = Path(setting).expanduser()
        return folder if folder.is_absolute() or base is None else base / folder
    try:
        version = importlib.metadata.version("tensorflow")
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except (importlib.metadata.PackageNotFoundError, RuntimeError, KeyError):  # no home: no cache
        return None
    return root / "hw4" / "xla" / f"tf{version}-{cpu_signature()}"


def writable(folder: Path) -> bool:
    """Whether files can be made in `folder` (made if missing): TensorFlow fails the compile
    itself when it cannot write a cache entry, so a read-only or full cache must not be set."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hw4-probe-"):
            return True
    except OSError:
        return False


_applied: Optional[str] = None  # the flag this process put into TF_XLA_FLAGS (not the user's)


def use_xla_cache(setting: Optional[str], base: Optional[Path] = None) -> Optional[Path]:
    """Point XLA's persistent compilation cache at trainer.xla_cache's folder, so that a later
    process compiling the same program (the MLP's epoch: same model, batch and data shapes; the
    learning rate is a variable, so a sweep's rates share it) loads it instead of compiling it
    again. TensorFlow reads TF_XLA_FLAGS once per process, when it first sets up its devices:
    call this before anything runs a TensorFlow op; a later job of the same process keeps the
    first one's folder. A cache flag the user put in TF_XLA_FLAGS wins. A folder that cannot be
    written is skipped with a warning. Returns the folder in use."""
    global _applied
    flags = os.environ.get(XLA_FLAGS_ENV, "")
    for flag in flags.split():
        if flag.startswith(XLA_CACHE_FLAG + "="):
            return Path(flag.split("=", 1)[1])  # the user's, or this process's first job's
    folder = xla_cache_dir(setting, base)
    if folder is None or _applied is not None:  # off, or TensorFlow already read the flags
        return None
    if not writable(folder):
        log.warning("trainer.xla_cache: cannot write to %s; XLA's compile cache is off", folder)
        return None
    _applied = f"{XLA_CACHE_FLAG}={folder}"
    os.environ[XLA_FLAGS_ENV] = f"{flags} {_applied}".strip()
    return folder


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
