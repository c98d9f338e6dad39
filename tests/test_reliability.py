"""Runs survive kills and bad settings: resume, signals, determinism, store problems."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import console
import pytest
from mlflow.tracking import MlflowClient
from test_tracking import locked

from hw4 import tracking
from hw4.errors import TrackingError

EPOCHS = 30


def train_args(data_dir: Path, uri: str, *overrides: str) -> list[str]:
    return [
        "hw4-train", "model=mlp", f"trainer.epochs={EPOCHS}", "trainer.verbose=0",
        "tracking.log_model=false", f"data.dir={data_dir}", f"tracking.uri={uri}", *overrides,
    ]  # fmt: skip


def client_and_runs(uri: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def only_run(uri: str):
    client, runs = client_and_runs(uri)
    return client, (runs[0] if runs else None)


def wait_until(condition, process: subprocess.Popen, seconds: float = 180) -> None:
    """Return once `condition()` holds, while `process` runs; its stderr in the failure if it ends."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            try:  # a timeout: a worker it left still holds the pipe
                error = (process.communicate(timeout=10)[1] or b"").decode(errors="replace")[-3000:]
            except subprocess.TimeoutExpired:
                error = "(its stderr did not close)"
            raise AssertionError(f"exited {process.returncode} early: {error}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError("the process did not reach the wanted point in time")


def wait_for_runs(process: subprocess.Popen, uri: str, ready) -> None:
    """Return once `ready(client, runs)` holds for the store's runs, while `process` trains."""
    wait_until(lambda: ready(*client_and_runs(uri)), process)


def start_and_wait_for(args: list[str], cwd: Path, uri: str, ready, **popen) -> subprocess.Popen:
    """Start hw4-train and return once `ready(client, runs)` holds for the store's runs."""
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, **popen}
    process = subprocess.Popen(args, cwd=cwd, **popen)
    wait_for_runs(process, uri, ready)
    return process


def wait_until_stopped(process: subprocess.Popen) -> None:
    """Until the kernel shows every thread of the process stopped (state T): a signal is
    delivered asynchronously, and a thread other than the main one may be writing to the store."""

    def states() -> set[str]:
        return {stat.read_text().rsplit(") ", 1)[1][0] for stat in Path(f"/proc/{process.pid}/task").glob("*/stat")}

    deadline = time.monotonic() + 10
    while states() != {"T"}:
        assert time.monotonic() < deadline and process.poll() is None, "the process did not stop"
        time.sleep(0.001)


def stop_outside_a_store_write(process: subprocess.Popen, uri: str) -> None:
    """SIGSTOP the process: alive (its run's lock held) without burning CPU. Stopped inside a
    transaction on the sqlite store, it would hold the store's lock and block every writer for
    the whole test: then it goes on a moment and is stopped again."""
    database = tracking.sqlite_file(uri)
    for _ in range(100):
        process.send_signal(signal.SIGSTOP)
        wait_until_stopped(process)
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=0.05)) as probe:
                probe.execute("BEGIN EXCLUSIVE")  # no reader or writer holds the store
                probe.rollback()
            return
        except sqlite3.OperationalError:  # "database is locked": the stopped process holds it
            process.send_signal(signal.SIGCONT)
            time.sleep(0.02)
    raise AssertionError("the process kept the sqlite store locked")


def logged_epochs(epochs: int):
    """wait_for_runs' condition: MLflow holds `epochs` epochs of the run."""

    def enough(client, runs):
        return bool(runs) and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= epochs

    return enough


def start_and_wait_for_epochs(args: list[str], cwd: Path, uri: str, epochs: int) -> subprocess.Popen:
    """Start hw4-train and return once MLflow holds `epochs` epochs of its run."""
    return start_and_wait_for(args, cwd, uri, logged_epochs(epochs))


def steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


@pytest.mark.serial
@pytest.mark.slow
def test_a_signal_after_the_last_epoch_began_lets_the_run_finish_then_stops(tmp_path, tracking_uri):
    """The run is complete but for its last epoch or its evaluation: it ends FINISHED with its
    test metrics, and the command still exits as stopped by the signal."""
    from conftest import write_dataset

    data_dir = write_dataset(tmp_path / "data", n_dev=3000, n_test=200)  # epochs long enough to catch
    args = [
        "hw4-train", "model=mlp", "trainer.epochs=3", "trainer.verbose=0", "tracking.log_model=false",
        f"data.dir={data_dir}", f"tracking.uri={tracking_uri}",
    ]  # fmt: skip
    process = start_and_wait_for_epochs(args, tmp_path, tracking_uri, epochs=2)
    # Epoch 2's metrics are logged before its checkpoint is written (fsynced: slow on a busy
    # machine), and a signal before the write ends stops the run after epoch 2 (KILLED, seen in
    # CI): wait until the pointer names epoch 2's checkpoint, then a moment, and the last one runs.
    _, run = only_run(tracking_uri)
    pointer = Path(run.data.tags["checkpoint_dir"]) / "LATEST"
    deadline = time.monotonic() + 60
    while not (pointer.is_file() and pointer.read_text().strip() >= "epoch-0001"):  # names sort as epochs
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the last epoch"
        time.sleep(0.005)
    time.sleep(0.05)  # past the stop check after epoch 2's checkpoint
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    client, run = only_run(tracking_uri)
    assert run.info.status == "FINISHED" and "test_categorical_accuracy" in run.data.metrics
    assert steps(client, run.info.run_id, "loss") == [0, 1, 2]


@pytest.mark.slow
def test_resume_refuses_bad_targets(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    """In this process: the refusal's exit status and one line are the console's mapping of
    every Hw4Error, which test_a_deleted_experiment_is_a_clear_error runs."""
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "hw4", None)
    with tracking.start_run(client, experiment_id, "done") as finished:
        finished.log_params({"trainer.epochs": EPOCHS})
    with pytest.raises(KeyboardInterrupt):
        with tracking.start_run(client, experiment_id, "killed") as interrupted:
            interrupted.log_params({"trainer.epochs": 5})
            raise KeyboardInterrupt
    for run_id, message in [
        ("0" * 32, "no such run"),
        (finished.run_id, "the run already finished"),
        (interrupted.run_id, r"settings differ from the run's: trainer.epochs=30 \(run has 5\)"),
    ]:
        with pytest.raises(TrackingError, match=message):
            resume = train_args(tiny_data_dir, tracking_uri, f"trainer.resume={run_id}")
            console.hw4_train(resume, cwd=tmp_path, monkeypatch=monkeypatch)


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly(tiny_data_dir, tracking_uri, tmp_path, monkeypatch, capfd):
    """In this process; capfd reads file descriptor 2, where TensorFlow's C++ runtime writes."""
    console.hw4_train([
        "hw4-train", "-m", "tracking.run_name=first,second", f"hydra.sweep.dir={tmp_path / 'm'}",
        *train_args(tiny_data_dir, tracking_uri, "trainer.deterministic=true", "trainer.epochs=3")[1:],
    ], cwd=tmp_path, monkeypatch=monkeypatch)  # fmt: skip
    assert "NodeDef mentions attribute" not in capfd.readouterr().err  # TensorFlow's spurious error line
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("hw4")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    for metric in ("loss", "val_loss", "val_categorical_accuracy"):
        first, second = (
            [m.value for m in sorted(client.get_metric_history(runs[n].info.run_id, metric), key=lambda m: m.step)]
            for n in ("first", "second")
        )
        assert len(first) == 3 and first == second, metric


class FlakyClient:
    """Fails the first `failures` log_batch calls, like a briefly locked sqlite file."""

    def __init__(self, failures: int):
        self.failures, self.batches = failures, []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.failures:
            self.failures -= 1
            raise locked()  # what MLflow's SQL store raises for a locked sqlite file
        self.batches.append(list(metrics))


def test_a_transient_logging_failure_is_retried(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    client = FlakyClient(failures=2)
    tracking.RunLogger(client, "run").log_metrics({"loss": 0.5}, step=3)
    ((metric,),) = client.batches
    assert (metric.key, metric.value, metric.step) == ("loss", 0.5, 3)


@pytest.mark.parametrize(
    "uri, message",
    [
        ("http://127.0.0.1:9", "tracking store http://127.0.0.1:9 cannot be used"),
        ("mlruns", "tracking.uri 'mlruns' is not a tracking URI"),
        ("sqlite:///{file}/mlflow.db", "tracking store folder .* cannot be created"),
    ],
)
def test_store_problems_stop_before_data_loading(uri, message, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = subprocess.run(
        ["hw4-train", f"tracking.uri={uri.format(file=blocker)}", f"data.dir={tmp_path / 'no-data'}"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert re.search(message, result.stderr), result.stderr
    assert "data folder not found" not in result.stderr  # the store is checked first
    assert "Traceback" not in result.stderr


def test_a_deleted_experiment_is_a_clear_error(tracking_uri, tmp_path):
    client = tracking.connect(tracking_uri)
    client.delete_experiment(tracking.get_or_create_experiment(client, "gone", None))
    result = subprocess.run(
        ["hw4-train", f"tracking.uri={tracking_uri}", "tracking.experiment=gone"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and "MLflow experiment 'gone' is deleted" in result.stderr


@pytest.mark.serial
@pytest.mark.slow
def test_a_run_killed_before_its_first_epoch_resumes_from_the_start(tiny_data_dir, tracking_uri, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "hw4", None)
    with pytest.raises(KeyboardInterrupt):
        with tracking.start_run(client, experiment_id, "early") as run:
            run.log_params({"trainer.epochs": 3})
            raise KeyboardInterrupt  # no epoch ended: no checkpoint, no metrics
    (tmp_path / "mlruns" / "checkpoints" / run.run_id).mkdir(parents=True)  # an empty folder
    resume = train_args(tiny_data_dir, tracking_uri, "trainer.epochs=3", f"trainer.resume={run.run_id}")
    assert "ended before its first epoch" in console.hw4_train(resume, cwd=tmp_path, monkeypatch=monkeypatch).stdout
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FINISHED" and finished.data.params["model.name"] == "mlp"
    assert steps(client, run.run_id, "val_loss") == [0, 1, 2]


@pytest.mark.serial
@pytest.mark.slow
def test_a_run_still_being_trained_cannot_be_resumed_and_sigterm_ends_it_killed(
    tmp_path, tracking_uri, tiny_data_dir, monkeypatch
):
    """One launch for two claims. While a process trains a run, a resume is refused: the process
    is stopped (SIGSTOP) once it logged an epoch (alive, holding its run's lock, burning no CPU)
    and the refused resume runs in this process. Then, continued, a SIGTERM ends the single run
    KILLED with its epochs kept, exit 143 (Ctrl-C: tests/sweep/test_sweep.py sends it to a whole
    process group, and tests/test_training.py covers both signals in-process)."""
    # Far more epochs than it trains: stopped after its first, ended by the signal.
    args = train_args(tiny_data_dir, tracking_uri, "trainer.epochs=5000")
    process = start_and_wait_for_epochs(args, tmp_path, tracking_uri, epochs=1)
    try:
        stop_outside_a_store_write(process, tracking_uri)
        client, run = only_run(tracking_uri)
        at_stop = len(steps(client, run.info.run_id, "loss"))
        live = f"run {run.info.run_id} is being trained by a live process (pid {process.pid} "
        with pytest.raises(TrackingError, match=re.escape(live)):
            console.hw4_train([*args, f"trainer.resume={run.info.run_id}"], cwd=tmp_path, monkeypatch=monkeypatch)
        assert process.poll() is None  # the first process lives on, its run untouched
        client, run = only_run(tracking_uri)
        assert run.info.status == "RUNNING"

        process.send_signal(signal.SIGCONT)
        wait_for_runs(process, tracking_uri, logged_epochs(max(2, at_stop + 1)))  # it trains on after the refusal
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()  # a no-op once it has ended
        process.wait()
    client, run = only_run(tracking_uri)
    assert run.info.status == "KILLED"
    assert len(steps(client, run.info.run_id, "loss")) >= 2  # the epochs done so far are kept


@pytest.mark.serial
@pytest.mark.slow
def test_a_killed_and_resumed_run_repeats_the_uninterrupted_one(tmp_path, tracking_uri, monkeypatch):
    """trainer.deterministic=true: SIGKILL after epoch 2, resume, and the validation loss of
    every epoch equals that of the same run left alone (batch order included). With a warmed-up
    step schedule and augmented batches (issue 25): the schedule goes on at the optimizer's step,
    and the shifts and flips of each (seed, epoch) are drawn again alike."""
    from conftest import write_dataset

    data_dir = write_dataset(tmp_path / "data", n_dev=3000, n_test=200)
    epochs = 8
    args = train_args(
        data_dir, tracking_uri, f"trainer.epochs={epochs}", "trainer.deterministic=true", "prep=augment",
        "schedule=step", "schedule.warmup_epochs=1", "schedule.every=2",
    )  # fmt: skip
    process = start_and_wait_for_epochs(args, tmp_path, tracking_uri, epochs=3)
    process.send_signal(signal.SIGKILL)  # the one real fault: a process of its own
    process.wait()
    client, run = only_run(tracking_uri)
    assert run.info.status == "RUNNING"  # nothing can end a run on SIGKILL: resume does
    assert 3 <= len(steps(client, run.info.run_id, "loss")) < epochs  # killed before the end
    # The resume, and then the same run left alone into its own experiment, in this process.
    resumed = console.hw4_train([*args, f"trainer.resume={run.info.run_id}"], cwd=tmp_path, monkeypatch=monkeypatch)
    console.hw4_train([*args, "tracking.experiment=alone"], cwd=tmp_path, monkeypatch=monkeypatch)

    def val_loss(run_id):
        return [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)]

    (uninterrupted,) = client.search_runs([client.get_experiment_by_name("alone").experiment_id])
    assert len(val_loss(run.info.run_id)) == epochs
    assert val_loss(run.info.run_id) == val_loss(uninterrupted.info.run_id)
    # The same MLflow run continued: one value per epoch and metric, no gap, no repeat.
    assert "resuming run" in resumed.stdout
    client, finished = only_run(tracking_uri)
    assert finished.info.run_id == run.info.run_id and finished.info.status == "FINISHED"
    for metric in ("loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy", "learning_rate"):
        assert steps(client, run.info.run_id, metric) == list(range(epochs)), metric

    def rates(run_id):
        return [m.value for m in sorted(client.get_metric_history(run_id, "learning_rate"), key=lambda m: m.step)]

    # The schedule ran, and went on after the resume as it did alone: a ramp, the peak, halvings.
    assert rates(run.info.run_id) == rates(uninterrupted.info.run_id)
    assert rates(run.info.run_id)[1:] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4])
    summary = json.loads(
        Path(client.download_artifacts(run.info.run_id, "data_summary.json", str(tmp_path))).read_text()
    )
    assert summary["preparation"]["name"] == "augment"
    assert "test_categorical_accuracy" in finished.data.metrics
    assert not Path(finished.data.tags["checkpoint_dir"]).exists()  # removed once finished
