"""The cores a process may use (affinity and cgroup quota, not the machine's count), and how
it ends (exit_now)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from mlflow.tracking import MlflowClient

from hw4.runtime import system


@pytest.fixture
def cpu_max(tmp_path, monkeypatch):
    path = tmp_path / "cpu.max"
    monkeypatch.setattr(system, "CGROUP_CPU_MAX", path)
    return path


def test_usable_cores_follow_the_affinity(cpu_max, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert system.usable_cores() == 3  # no cgroup file: the affinity alone
    cpu_max.write_text("max 100000\n")
    assert system.usable_cores() == 3  # no quota


@pytest.mark.parametrize(("quota", "cores"), [("150000 100000", 2), ("50000 100000", 1), ("800000 100000", 3)])
def test_a_cgroup_quota_caps_the_cores(cpu_max, monkeypatch, quota, cores):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    cpu_max.write_text(quota + "\n")
    assert system.usable_cores() == cores


def test_parallel_sweep_jobs_split_the_usable_cores(monkeypatch):
    from omegaconf import OmegaConf

    from hw4.sweep import job as sweep

    assert sweep.jobs_at_once(-1, system.usable_cores()) == system.usable_cores()
    runtime = pytest.importorskip("hw4.training.runtime")
    if runtime.compile.is_jax():
        pytest.skip("the thread pools split are TensorFlow's: XLA's CPU threads are fixed when JAX starts")
    import tensorflow as tf

    monkeypatch.setattr(system, "usable_cores", lambda: 4)
    seen = {}
    # As in a new process: an earlier run in this one (a worker's in-process sweep) set its pools.
    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 0)
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", lambda n: seen.update(intra=n))
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", lambda n: seen.update(inter=n))
    trainer = OmegaConf.create({"seed": 0, "precision": "float32", "deterministic": False, "threads": None})
    runtime.configure_runtime(trainer, parallel_jobs=2)
    assert seen == {"intra": 2, "inter": 2}


EXIT_SCRIPT = """
import atexit, subprocess, sys, threading, time
from pathlib import Path
from hw4.runtime import system

out = Path(sys.argv[1])
atexit.register(lambda: out.joinpath("atexit").write_text("ran"))
if sys.argv[2] == "thread":  # a non-daemon thread still working: the exit waits for it
    threading.Thread(target=lambda: (time.sleep(0.5), out.joinpath("thread").write_text("done"))).start()
if sys.argv[2] == "child":  # a child still running: the normal exit
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
print("buffered line", end="")  # stdout is a pipe, so block-buffered: lost unless flushed
system.exit_now(3)
"""


@pytest.mark.serial
@pytest.mark.parametrize("running", ["nothing", "thread", "child"])
def test_exit_now_keeps_what_a_normal_exit_keeps(tmp_path, running):
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    command = [sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), running]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 3 and done.stdout == "buffered line", done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    if running == "thread":
        assert (tmp_path / "thread").read_text() == "done"


@pytest.mark.serial
def test_exit_now_sees_what_still_runs():
    already = system.others_running()  # e.g. an MLflow download pool left by earlier tests
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name="worker")
    worker.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert sorted(system.others_running()) == sorted([*already, "worker", f"process {child.pid}"])
    finally:
        release.set()
        worker.join()
        child.kill()
        child.wait()
    assert system.others_running() == already


def test_the_xla_cache_folder_is_per_tensorflow_and_cpu_and_the_users_flag_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(system.XLA_FLAGS_ENV, raising=False)
    monkeypatch.setattr(system, "_applied", None)
    folder = system.use_xla_cache("auto")
    assert folder.parent == tmp_path / "hw4" / "xla" and folder.name.startswith("tf")
    assert os.environ[system.XLA_FLAGS_ENV] == f"{system.XLA_CACHE_FLAG}={folder}"

    monkeypatch.setenv(system.XLA_FLAGS_ENV, f"--xla_other=1 {system.XLA_CACHE_FLAG}=/elsewhere")
    assert system.use_xla_cache("auto") == system.Path("/elsewhere")  # set by the user: kept
    assert os.environ[system.XLA_FLAGS_ENV] == f"--xla_other=1 {system.XLA_CACHE_FLAG}=/elsewhere"

    monkeypatch.setenv(system.XLA_FLAGS_ENV, "--xla_other=1")
    monkeypatch.setattr(system, "_applied", None)
    for off in (None, "null", "false", "None", ""):
        assert system.use_xla_cache(off) is None and os.environ[system.XLA_FLAGS_ENV] == "--xla_other=1"
    (tmp_path / "a-file").write_text("")  # a folder under a file: no one can make it, root included
    assert system.use_xla_cache(str(tmp_path / "a-file" / "cache")) is None  # the compile would fail
    assert os.environ[system.XLA_FLAGS_ENV] == "--xla_other=1"  # and XLA is not pointed at it
    assert system.use_xla_cache("mine", base=tmp_path) == tmp_path / "mine"  # relative: to the launch folder
    assert os.environ[system.XLA_FLAGS_ENV] == f"--xla_other=1 {system.XLA_CACHE_FLAG}={tmp_path / 'mine'}"


@pytest.mark.slow
def test_a_second_run_loads_the_mlps_compiled_epoch_from_the_xla_cache(tiny_data_dir, tracking_uri, tmp_path):
    """Two real hw4-train processes: the first compiles the MLP's epoch with XLA and stores it;
    the second finds it there and writes nothing (TensorFlow would rewrite an entry it compiled)."""
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if k != system.XLA_FLAGS_ENV}
    command = ["hw4-train", "model=mlp", "trainer.epochs=1", "trainer.verbose=0", f"data.dir={tiny_data_dir}",
               f"tracking.uri={tracking_uri}", "tracking.log_model=false", f"trainer.xla_cache={cache}",
               "trainer.jit_compile=true"]  # fmt: skip  # tiny data: too short for auto to choose XLA

    def train() -> dict:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return {path.name: path.stat().st_mtime_ns for path in cache.glob("*")}

    first = train()
    assert first and all(name.startswith("xla_compile_cache") for name in first)
    assert train() == first
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert [run.data.tags["xla"] for run in runs] == ["true", "true"]  # the run records the choice
