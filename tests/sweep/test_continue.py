"""Continue and resume paths that must not lose work (issue 21, section 1).

The launches that receive the fault run for real (hw4-train, with real signals; a live one is
SIGSTOPped); the continues and resumes after them run in this process through hw4.api, with the
same overrides. The launcher-side mechanisms that a fault reaches only by chance (a store error
while continuing, a signal while the summary is written) are driven in-process against a real
sqlite store.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import console
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from test_reliability import stop_outside_a_store_write, wait_until

from hw4 import names, tracking
from hw4.errors import DataError, TrackingError
from hw4.runtime.signals import Stopped, exit_status
from hw4.sweep import callback as sweep


def hw4_train(*args: str) -> list[str]:
    """The command line; `-m` first, as Hydra's parser wants it."""
    flags = [a for a in args if a.startswith("-")]
    return ["hw4-train", *flags, "trainer.verbose=0", "tracking.log_model=false", *(a for a in args if a not in flags)]


def stop_once_training(process: subprocess.Popen, uri: str) -> None:
    """Wait for the process's first epoch, then SIGSTOP it: alive (its run's lock held, its run
    RUNNING) without burning the CPU the rest of the test needs."""

    def an_epoch_logged() -> bool:
        runs = [r for r in experiment_runs(uri) if r.data.tags.get(names.SWEEP_ROLE) != "parent"]
        return any(epochs_logged(uri, r.info.run_id) >= 1 for r in runs)

    wait_until(an_epoch_logged, process)
    stop_outside_a_store_write(process, uri)


def experiment_runs(uri: str, experiment: str = "hw4") -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def children(uri: str) -> tuple[object, list]:
    runs = experiment_runs(uri)
    (parent,) = [r for r in runs if r.data.tags.get(names.SWEEP_ROLE) == "parent"]
    return parent, [r for r in runs if r is not parent]


def epochs_logged(uri: str, run_id: str) -> int:
    return len(MlflowClient(uri).get_metric_history(run_id, names.LOSS))


@pytest.mark.serial
@pytest.mark.slow
def test_a_mistyped_continue_supersedes_no_killed_job_and_the_next_continue_resumes_it(
    tmp_path, tracking_uri, monkeypatch
):
    """Finding 1.1: a stopped sweep continued with a mistyped data.dir (bookkeeping, so the
    job keys match) fails its job; the KILLED run keeps its checkpoint and is not superseded;
    the continue after that resumes it in the same run and the failed attempt drops out."""
    from conftest import write_dataset

    data_dir = write_dataset(tmp_path / "data", n_dev=3000, n_test=200)
    folder = tmp_path / "multirun"
    args = hw4_train("-m", "model=mlp", "trainer.epochs=12", f"tracking.uri={tracking_uri}",
                     f"hydra.sweep.dir={folder}", "optimizer.lr=1e-3")  # fmt: skip
    process = subprocess.Popen(
        [*args, f"data.dir={data_dir}"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    def two_epochs() -> bool:
        runs = [r for r in experiment_runs(tracking_uri) if r.data.tags.get(names.SWEEP_ROLE) != "parent"]
        return bool(runs) and epochs_logged(tracking_uri, runs[0].info.run_id) >= 2

    wait_until(two_epochs, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 128 + signal.SIGTERM
    _, (killed,) = children(tracking_uri)
    assert killed.info.status == "KILLED"
    checkpoint = Path(killed.data.tags["checkpoint_dir"])
    assert checkpoint.is_dir()

    # The continues in this process (only the killed launch needs one of its own).
    with pytest.raises(DataError, match="data folder not found"):
        console.hw4_train([*args, f"data.dir={tmp_path / 'dtaa'}"], cwd=tmp_path, monkeypatch=monkeypatch)
    client = MlflowClient(tracking_uri)
    assert names.SUPERSEDED_BY not in client.get_run(killed.info.run_id).data.tags
    assert checkpoint.is_dir()  # nothing removed it: the next continue resumes from it
    _, runs = children(tracking_uri)
    (stub,) = [r for r in runs if r.info.status == "FAILED"]
    assert "data folder not found" in stub.data.tags["error"]

    printed = console.hw4_train([*args, f"data.dir={data_dir}"], cwd=tmp_path, monkeypatch=monkeypatch).stdout
    assert f"resuming run {killed.info.run_id}" in printed
    parent, runs = children(tracking_uri)
    by_id = {r.info.run_id: r for r in runs}
    assert by_id[killed.info.run_id].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(killed.info.run_id, names.LOSS)) == list(range(12))
    assert (
        by_id[stub.info.run_id].data.tags[names.SUPERSEDED_BY] == killed.info.run_id
    )  # the FAILED attempt is replaced
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (1, 0)


@pytest.mark.serial
@pytest.mark.slow
def test_a_continue_while_the_job_still_trains_leaves_the_live_run_alone(tmp_path, tracking_uri, tiny_data_dir,
                                                                         monkeypatch):  # fmt: skip
    """Finding 1.1: the lock refuses to resume a run a live process trains; that run is not
    superseded and stays in the sweep's record. The live process is stopped (SIGSTOP) once it
    trains: alive, its lock held; the continue runs in this process."""
    args = hw4_train("-m", "model=mlp", "trainer.epochs=5000", f"data.dir={tiny_data_dir}",
                     f"tracking.uri={tracking_uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}", "optimizer.lr=1e-3")  # fmt: skip
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stop_once_training(first, tracking_uri)
        with pytest.raises(TrackingError, match=rf"is being trained by a live process \(pid {first.pid} "):
            console.hw4_train(args, cwd=tmp_path, monkeypatch=monkeypatch)
        _, runs = children(tracking_uri)
        (live,) = [r for r in runs if r.info.status == "RUNNING"]
        assert names.SUPERSEDED_BY not in live.data.tags
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


@pytest.mark.serial
@pytest.mark.slow
def test_a_run_killed_during_its_first_epoch_resumes_with_the_printed_hint(tmp_path, tracking_uri, monkeypatch):
    """Finding 1.2: SIGKILL a real hw4-train (LeNet) after its params were logged and before its
    first epoch ended; the hint it printed resumes it (in this process) from the start in the same run."""
    from conftest import write_dataset

    data_dir = write_dataset(tmp_path / "data", n_dev=4000, n_test=200)
    args = hw4_train("model=lenet", "trainer.epochs=2", f"data.dir={data_dir}", f"tracking.uri={tracking_uri}")
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        process = subprocess.Popen(args, cwd=tmp_path, stdout=stdout, stderr=subprocess.DEVNULL)

        def params_logged_no_epoch() -> bool:
            runs = experiment_runs(tracking_uri)
            return (
                bool(runs)
                and "model.name" in runs[0].data.params
                and epochs_logged(tracking_uri, runs[0].info.run_id) == 0
            )

        wait_until(params_logged_no_epoch, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    (run,) = experiment_runs(tracking_uri)
    assert run.info.status == "RUNNING" and epochs_logged(tracking_uri, run.info.run_id) == 0
    hint = re.search(r"trainer\.resume=(\w+)", out.read_text())
    assert hint and hint.group(1) == run.info.run_id
    resumed = console.hw4_train([*args, hint.group(0)], cwd=tmp_path, monkeypatch=monkeypatch).stdout
    assert "ended before its first epoch: training it from the start" in resumed
    (finished,) = experiment_runs(tracking_uri)
    assert finished.info.run_id == run.info.run_id and finished.info.status == "FINISHED"
    assert finished.data.params["trainer.resume"] == "None"  # the first attempt's, kept
    assert sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run.info.run_id, names.VAL_LOSS)) == [
        0,
        1,
    ]


@pytest.mark.slow
def test_a_run_that_finished_after_the_first_check_is_not_reopened(tmp_path, tracking_uri, tiny_data_dir):
    """Finding 1.3: trainer.resume is checked before the data and TensorFlow load; a run that
    finishes meanwhile must not be reopened once the lock is held."""
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "hw4", None)
    run = tracking.create_run(client, experiment_id, "elsewhere", {})  # RUNNING, its process gone
    client.log_batch(run.info.run_id, params=[__import__("mlflow").entities.Param("trainer.epochs", "2")])
    client.log_metric(run.info.run_id, names.LOSS, 1.0, step=0)
    process = subprocess.Popen(
        hw4_train("model=mlp", "trainer.epochs=2", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
                  f"trainer.resume={run.info.run_id}"),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def importing_tensorflow() -> bool:  # past the first check, before the lock
        try:
            return "libtensorflow" in Path(f"/proc/{process.pid}/maps").read_text()
        except OSError:
            return False

    wait_until(importing_tensorflow, process)
    client.set_terminated(run.info.run_id, "FINISHED")  # its own process finished it meanwhile
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1 and "the run already finished" in err
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_store_error_while_continuing_does_not_fork_the_sweep(tmp_path, tracking_uri, monkeypatch):
    """Finding 1.4: only the store's "does not exist" starts a new parent."""
    from mlflow.exceptions import MlflowException

    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "hw4", None)
    parent = tracking.create_run(client, experiment_id, "sweep", {names.SWEEP_ROLE: "parent"})
    earlier = sweep.SweepContext(tracking_uri, experiment_id, parent.info.run_id, "s")
    callback = sweep.MlflowSweepCallback()
    callback._uri = tracking_uri
    monkeypatch.setattr(tracking.POLICY, "budget_s", 0.5)

    def blinking(self, run_id):
        raise MlflowException("connection reset", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(MlflowClient, "get_run", blinking)
    with pytest.raises(TrackingError, match="cannot continue sweep s: reading its parent run"):
        callback._reopen(earlier)
    monkeypatch.undo()
    callback._uri = tracking_uri
    assert callback._reopen(earlier) is earlier  # the store answers again: the same parent
    gone = sweep.SweepContext(tracking_uri, experiment_id, "0" * 32, "s")
    assert callback._reopen(gone) is None  # only "does not exist" means a new parent


def finishing_callback(uri: str, tmp_path: Path) -> tuple[sweep.MlflowSweepCallback, str, MlflowClient]:
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "hw4", None)
    parent = tracking.create_run(client, experiment_id, "sweep", {names.SWEEP_ROLE: "parent"})
    callback = sweep.MlflowSweepCallback()
    callback.context = sweep.SweepContext(uri, experiment_id, parent.info.run_id, "s")
    callback._uri, callback._folder, callback._completed = uri, tmp_path, True
    return callback, parent.info.run_id, client


def test_the_parent_ends_even_when_its_summary_cannot_be_written(tmp_path, tracking_uri, monkeypatch):
    """Finding 1.5: a server error while the summary is written left the parent RUNNING."""
    callback, parent_id, client = finishing_callback(tracking_uri, tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("internal server error")

    monkeypatch.setattr(sweep, "summarize", broken)
    callback._finish()
    assert client.get_run(parent_id).info.status == "FAILED"
    assert callback._finished


def test_a_signal_while_the_summary_is_written_waits_for_the_parent_to_end(tmp_path, tracking_uri, monkeypatch):
    """Finding 1.5: a follow-up SIGTERM during the summary's writes cut them, leaving the parent
    RUNNING; now it is held until the parent has ended, then the process exits as stopped."""
    callback, parent_id, client = finishing_callback(tracking_uri, tmp_path)
    summarize = sweep.summarize

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return summarize(*args, **kwargs)

    monkeypatch.setattr(sweep, "summarize", signalled)
    monkeypatch.setattr(sweep.MlflowSweepCallback, "launched", callback)
    callback._finish()
    assert client.get_run(parent_id).info.status in ("FINISHED", "FAILED")  # ended, with its summary
    assert "jobs_finished" in client.get_run(parent_id).data.metrics
    assert callback.exit_signal == signal.SIGTERM  # and the command then exits 143
    with pytest.raises(Stopped) as stopped:
        sweep.raise_if_stopped()
    assert exit_status(stopped.value) == 128 + signal.SIGTERM


def test_a_job_that_fails_after_reopening_its_run_gets_no_stub(tmp_path, tracking_uri):
    """Finding 1.1: a resumed run keeps its first start time; the job finds it by its launch."""
    from hydra.core.utils import JobReturn, JobStatus

    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "hw4", None)
    parent = tracking.create_run(client, experiment_id, "sweep", {names.SWEEP_ROLE: "parent"}).info.run_id
    context = sweep.SweepContext(
        tracking_uri, experiment_id, parent, "s", launched_at=int(time.time() * 1000) + 60_000, launch_id="now"
    )
    resumed = tracking.create_run(
        client, experiment_id, "job-0",
        {names.PARENT_RUN: parent, names.JOB_NUM: 0, names.LAUNCH_ID: "now", names.PLAN_KEY: "p"},
    )  # fmt: skip
    client.set_terminated(resumed.info.run_id, "FAILED")  # diverged after it resumed
    config = OmegaConf.create(
        {"hydra": {"job": {"num": 0}, "runtime": {"cwd": str(tmp_path)}}, "tracking": {"uri": tracking_uri}}
    )
    failed = JobReturn(overrides=["optimizer.lr=1e6"], status=JobStatus.FAILED, _return_value=ValueError("nan"))
    sweep.record_failed_job(config, failed, context)
    runs = client.search_runs([experiment_id], filter_string=names.children_filter(parent))
    assert [r.info.run_id for r in runs] == [resumed.info.run_id]  # its real FAILED run, no stub over it


def test_the_finish_command_is_quoted_as_a_shell_needs():
    """Finding 1.7."""
    config = OmegaConf.create(
        {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN", "hydra/launcher=joblib"],
                                 "task": ["model=glob(*)", "tracking.run_name=my run", "tracking.uri=postgresql://a:pw@db/m"]}}}
    )  # fmt: skip
    command = sweep.continue_command(config, Path("/tmp/sweep dir"))
    assert shlex.split(command) == [
        "hw4-train", "-m", "hydra/launcher=joblib", "model=glob(*)", "tracking.run_name=my run",
        "tracking.uri=postgresql://a:***@db/m", "hydra.sweep.dir=/tmp/sweep dir",
    ]  # fmt: skip


def test_runs_of_a_dead_worker_are_ended_when_a_sweep_ends_without_a_stop(tmp_path, tracking_uri):
    """Finding 1.5: an OOM-killed joblib worker (TerminatedWorkerError) left its run RUNNING,
    because dead workers' runs were ended only for stopped sweeps."""
    from hw4.runtime import locks

    callback, parent_id, client = finishing_callback(tracking_uri, tmp_path)
    callback._completed = False  # joblib raised: Hydra never called on_multirun_end
    child = tracking.create_run(client, callback.context.experiment_id, "job-0", {names.PARENT_RUN: parent_id})
    callback._lock_root = tmp_path / "checkpoints"
    lock = locks.lock_path(callback._lock_root, child.info.run_id)
    lock.parent.mkdir(parents=True)
    lock.write_text("pid 1 on this machine")  # its process is gone; nobody holds the lock
    callback._finish()
    assert client.get_run(child.info.run_id).info.status == "KILLED"
    assert client.get_run(parent_id).info.status != "RUNNING"
