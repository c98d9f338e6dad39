"""Sweeps: one MLflow parent per sweep, jobs as children, summaries, parallel jobs, failures.

What a sweep records is checked on sweeps run in this process through hw4.api.sweep (Hydra's
sweeper, launcher and hw4's callback, as `hw4-train -m` runs them); exit statuses and signals,
through the real `hw4-train -m`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import console
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from hw4 import api, names
from hw4.config import CONFIG_DIR, register_configs
from hw4.errors import DataError, TrainingDiverged
from hw4.names import JOB_NUM as JOB_TAG
from hw4.names import SWEEP_ID as SWEEP_ID_TAG

pytestmark = pytest.mark.slow
EPOCH_METRICS = ("loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy")


def sweep(tmp_path: Path, data_dir: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    """A multirun of the MLP with debug=fast: 2 quiet epochs, no model logged."""
    command = ["hw4-train", "-m", "model=mlp", "debug=fast", f"data.dir={data_dir}", f"tracking.uri={uri}"]
    command += [f"hydra.sweep.dir={tmp_path / 'multirun'}", *overrides]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)


def sweep_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *overrides: str) -> None:
    """`hw4-train -m OVERRIDES` launched from `tmp_path`, in this process (hw4.api.sweep): a
    failed job's error is raised once every job has run and the parent has ended."""
    monkeypatch.chdir(tmp_path)
    api.sweep([*overrides, f"hydra.sweep.dir={tmp_path / 'multirun'}"])


def fast_sweep_in_process(monkeypatch, tmp_path: Path, data_dir: Path, uri: str, *overrides: str) -> None:
    """`sweep`'s multirun (the MLP with debug=fast), in this process."""
    sweep_in_process(monkeypatch, tmp_path, "model=mlp", "debug=fast", f"data.dir={data_dir}", f"tracking.uri={uri}",
                     *overrides)  # fmt: skip


def parent_and_children(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r is not parent]
    return client, parent, children


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_three_job_sweep_nests_under_one_parent(launcher, tiny_data_dir, tracking_uri, tmp_path, monkeypatch, capfd):
    grid = ["optimizer.lr=1e-3,3e-3,1e-2", "trainer.verbose=1"]
    command = ["hw4-train", "-m", "model=mlp", "debug=fast", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}", *grid, *launcher]  # fmt: skip
    printed = console.hw4_train(command, cwd=tmp_path, monkeypatch=monkeypatch).stdout
    printed += capfd.readouterr().out  # and the workers', from file descriptor 1
    epoch_lines = [line for line in printed.splitlines() if re.match(r"\s*\d+/\d+ ", line)]
    if launcher:  # parallel jobs: one plain line per epoch each, no progress bars to interleave
        assert len(epoch_lines) == 3 * 2 and "━" not in printed
    else:
        assert "━" in printed  # one job at a time keeps Keras' progress bar
    client, parent, children = parent_and_children(tracking_uri)

    assert len(children) == 3
    sweep_id = parent.data.tags[SWEEP_ID_TAG]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags[SWEEP_ID_TAG] == sweep_id
        assert child.info.status == "FINISHED"
    assert sorted(float(c.data.params["optimizer.lr"]) for c in children) == [1e-3, 3e-3, 1e-2]
    assert sorted(c.data.tags[JOB_TAG] for c in children) == ["0", "1", "2"]

    for child in children:  # best-epoch metrics, from the run's own history
        history = [
            m.value
            for m in sorted(
                client.get_metric_history(child.info.run_id, "val_categorical_accuracy"), key=lambda m: m.step
            )
        ]
        assert child.data.metrics["best_val_categorical_accuracy"] == max(history)
        assert child.data.metrics["best_epoch"] == history.index(max(history))
    best = max(children, key=lambda c: (c.data.metrics["best_val_categorical_accuracy"], -c.info.start_time))
    summary = parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert (summary["jobs_finished"], summary["jobs_failed"]) == (3, 0)
    assert (summary["jobs_planned"], summary["jobs_not_run"]) == (3, 0)
    assert "stopped_by" not in parent.data.tags
    assert summary["best_lr"] == float(best.data.params["optimizer.lr"])
    assert summary["best_val_categorical_accuracy"] == best.data.metrics["best_val_categorical_accuracy"]
    assert summary["best_test_categorical_accuracy"] == best.data.metrics["test_categorical_accuracy"]
    assert parent.data.tags["best_run_id"] == best.info.run_id

    definition = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "sweep.json", str(tmp_path))).read_text()
    )
    assert "optimizer.lr=1e-3,3e-3,1e-2" in definition["overrides"]
    if launcher:  # two parallel jobs on this machine's cores: each gets its share of threads
        expected = str(max(1, (os.cpu_count() or 1) // 2))
        assert {c.data.tags["tf_threads"] for c in children} == {expected}


@pytest.mark.slow
def test_a_second_joblib_sweep_from_another_folder_reads_and_records_in_that_folder(tiny_data_dir, _migrated_store,
                                                                                   tmp_path, monkeypatch):  # fmt: skip
    """Two sweeps in one process (a notebook), each launched from its own folder with the default
    relative store; the second reads `data.dir=data`, relative to its folder. Hydra's joblib
    launcher reused the first sweep's workers, whose working folder Hydra took as the second's
    launch folder: its jobs looked for the data in the first folder and failed (and an Optuna
    search's trials used a study there) (hw4.sweep._hydra.without_idle_joblib_workers)."""
    # One job each: the pool's idle worker started in the first folder too (two jobs: four workers importing TF).
    grid = ["model=mlp", "debug=fast", "trainer.epochs=1", "optimizer.lr=1e-3", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2"]  # fmt: skip
    shutil.copytree(tiny_data_dir, tmp_path / "second" / "data")  # only there
    stores = {}
    for folder, data in (("first", tiny_data_dir), ("second", "data")):
        (tmp_path / folder / "mlruns").mkdir(parents=True)
        shutil.copy(_migrated_store, tmp_path / folder / "mlruns" / "mlflow.db")  # the default, relative
        stores[folder] = f"sqlite:///{tmp_path / folder / 'mlruns' / 'mlflow.db'}"
        sweep_in_process(monkeypatch, tmp_path / folder, *grid, f"data.dir={data}")
        _, parent, children = parent_and_children(stores[folder])  # one parent each, its own children
        assert [(c.info.status, c.data.tags[names.PARENT_RUN]) for c in children] == [("FINISHED", parent.info.run_id)]
    assert len(parent_and_children(stores["first"])[2]) == 1  # nothing of the second sweep's


def test_parallel_writers_keep_every_run_and_a_diverging_job_fails(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    lrs = "1e-3,1e-2,3e-2,1e6"  # SGD at 1e6 turns the loss into NaN
    with pytest.raises(TrainingDiverged, match="loss became nan"):  # Hydra raises it once the sweep is done
        fast_sweep_in_process(
            monkeypatch, tmp_path, tiny_data_dir, tracking_uri, "optimizer=sgd", f"optimizer.lr={lrs}",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        )  # fmt: skip
    client, parent, children = parent_and_children(tracking_uri)

    assert len(children) == 4
    finished = [c for c in children if c.info.status == "FINISHED"]
    (failed,) = [c for c in children if c.info.status == "FAILED"]
    assert len(finished) == 3
    for child in finished:
        for name in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, name)]
            assert sorted(steps) == [0, 1], (child.info.run_name, name)
    assert float(failed.data.params["optimizer.lr"]) == 1e6
    assert "TrainingDiverged: loss became nan" in failed.data.tags["error"]
    assert not Path(failed.data.tags["checkpoint_dir"]).exists()  # NaN weights: nothing to resume
    assert parent.info.status == "FINISHED"
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (3, 1)


def test_a_job_failing_before_training_still_gets_a_failed_child(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    # The exit status and the error on stderr: test_a_sweep_whose_every_job_failed_ends_its_parent_failed.
    with pytest.raises(DataError, match="data.limit=100000 is larger than the development set"):
        fast_sweep_in_process(monkeypatch, tmp_path, tiny_data_dir, tracking_uri, "data.limit=200,100000")
    _, parent, children = parent_and_children(tracking_uri)
    by_status = {c.info.status: c for c in children}
    assert set(by_status) == {"FINISHED", "FAILED"}
    failed = by_status["FAILED"]
    assert "larger than the development set" in failed.data.tags["error"]
    assert failed.data.params["data.limit"] == "100000"  # the job's config, for the record
    assert failed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (1, 1)


def test_optuna_search_nests_its_trials(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    pytest.importorskip("optuna", reason="the optuna extra is not installed")
    sweep_in_process(
        monkeypatch, tmp_path, "hparams_search=optuna_lr", "hydra.sweeper.n_trials=2", "debug=fast", "trainer.epochs=1",
        f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
    )  # fmt: skip
    _, parent, children = parent_and_children(tracking_uri)
    assert len(children) == 2 and parent.data.metrics["jobs_finished"] == 2
    for child in children:
        assert 1e-4 <= float(child.data.params["optimizer.lr"]) <= 3e-2


def test_a_failed_trial_is_told_fail_and_the_search_goes_on(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    """Issue 21, section 5: the plugin's max_failure_rate=0.0 aborted the search at the first
    failed trial; hw4's preset lets the others run (conf/hparams_search/optuna_lr.yaml)."""
    pytest.importorskip("optuna", reason="the optuna extra is not installed")
    sweep_in_process(  # returns: the failed trial does not end the search
        monkeypatch, tmp_path, "hparams_search=optuna_lr", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=1",
        "data.limit=choice(200,100000)",  # 100000 is refused: that trial fails
        "trainer.epochs=1", "trainer.verbose=0", "tracking.log_model=false",
        f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
    )  # fmt: skip
    _, parent, children = parent_and_children(tracking_uri)
    statuses = sorted(c.info.status for c in children)
    assert len(children) == 4 and "FAILED" in statuses and "FINISHED" in statuses
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs_failed"] == statuses.count("FAILED")


@pytest.mark.serial
def test_ctrl_c_stops_an_optuna_search_as_it_stops_a_grid(tmp_path, tracking_uri, monkeypatch):
    """Issue 21, section 5: exit 130, the running trial's run KILLED with its checkpoint, no
    further trial, the parent KILLED, no RUNNING run and no process left."""
    import psutil

    optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
    from conftest import write_dataset
    from test_reliability import start_and_wait_for, steps

    data_dir = write_dataset(tmp_path / "data", n_dev=3000, n_test=200)
    args = [
        # 30 epochs: the stop comes after 2 of them; the continue resumes the run for the rest.
        "hw4-train", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=4", "model=mlp", "trainer.epochs=30",
        "trainer.verbose=0", "tracking.log_model=false", f"data.dir={data_dir}", f"tracking.uri={tracking_uri}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]  # fmt: skip

    def training(client, runs):
        return any(r.info.status == "RUNNING" and len(steps(client, r.info.run_id, "loss")) >= 2
                   for r in runs if r.data.tags.get("sweep") != "parent")  # fmt: skip

    process = start_and_wait_for(args, tmp_path, tracking_uri, training, stdout=subprocess.PIPE, start_new_session=True)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=90)
    assert process.returncode == 128 + signal.SIGINT, err.decode()[-3000:]
    assert "Traceback" not in err.decode()
    client, parent, children = parent_and_children(tracking_uri)
    assert parent.info.status == "KILLED" and parent.data.tags["stopped_by"] == "SIGINT"
    (child,) = children  # no trial after the stop
    assert child.info.status == "KILLED"
    assert Path(child.data.tags["checkpoint_dir"]).is_dir()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]

    # Issue 22: the same search again, in a new folder, asks the stopped trial again first (it was
    # queued), under the same parent, and resumes its run from the checkpoint. In this process:
    # only the stopped launch needed a process of its own (the signal, the exit status).
    again = [a for a in args[1:] if not a.startswith(("hydra.sweep.dir=", "hydra.sweeper.n_trials="))]
    printed = console.hw4_train(
        ["hw4-train", *again, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'again'}"],
        cwd=tmp_path, monkeypatch=monkeypatch,
    ).stdout  # fmt: skip
    assert f"resuming run {child.info.run_id}" in printed
    client, parent_again, children = parent_and_children(tracking_uri)
    assert parent_again.info.run_id == parent.info.run_id and parent_again.info.status == "FINISHED"
    assert [(c.info.run_id, c.info.status) for c in children] == [(child.info.run_id, "FINISHED")]
    study = optuna.load_study(study_name="lr-mlp-adam", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params


def test_lr_sweep_preset_is_a_log_spaced_grid():
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["sweep=lr"], return_hydra_config=True)
    grid = [float(v) for v in cfg.hydra.sweeper.params["optimizer.lr"].split(",")]
    assert grid == sorted(grid) and len(grid) >= 4
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert all(2 <= r <= 4 for r in ratios)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.parametrize(
    "n_jobs, cpus, expected",
    [(None, 16, 1), (0, 16, 1), (1, 16, 1), (4, 16, 4), (4, 2, 4), (-1, 16, 16), (-2, 16, 15), (-32, 16, 1)],
)
def test_jobs_at_once_follows_joblib(n_jobs, cpus, expected):
    from hw4.sweep.job import jobs_at_once

    assert jobs_at_once(n_jobs, cpus) == expected


def test_a_job_without_the_launchers_disk_writes_the_sweep_context(tmp_path, monkeypatch):
    """A Ray worker node has no <sweep dir>/mlflow_sweep.json: the shipped callback writes it.

    The sweep dir is relative, as users may set it, and resolves against the launch folder
    (hydra.runtime.cwd), not the job's working folder.
    """
    from hydra.core.hydra_config import HydraConfig

    from hw4.sweep import MlflowSweepCallback
    from hw4.sweep.context import SweepContext, current_context

    launch, worker = tmp_path / "launch", tmp_path / "worker"
    launch.mkdir(), worker.mkdir()
    monkeypatch.chdir(launch)
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "config", overrides=["hydra.sweep.dir=multirun/s", "hydra.mode=MULTIRUN"],
            return_hydra_config=True,
        )  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    monkeypatch.chdir(worker)  # the job runs elsewhere
    assert current_context() is None

    callback = MlflowSweepCallback()
    callback.context = SweepContext("http://tracking:5000", "7", "parent-id", "sweep-id")
    callback.on_job_start(config=cfg)

    assert current_context() == callback.context
    assert (launch / "multirun" / "s" / "mlflow_sweep.json").is_file()
    assert not (worker / "multirun").exists()


def runs_by_status(client: MlflowClient, parent_id: str) -> dict[str, list]:
    experiment = client.get_experiment_by_name("hw4")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"):
        found.setdefault(run.info.status, []).append(run)
    return found


@pytest.mark.serial
def test_a_sweep_killed_during_job_2_continues_under_its_parent(tmp_path, tracking_uri, monkeypatch):
    """SIGKILL the launcher while job 2 trains; the same command with the same sweep folder then
    finishes the sweep: job 1 is not trained again, job 2 resumes in its run, job 3 runs."""
    from conftest import write_dataset
    from test_reliability import start_and_wait_for, steps

    data_dir = write_dataset(tmp_path / "data", n_dev=3000, n_test=200)  # epochs long enough to catch
    epochs, lrs = 12, ["0.001", "0.003", "0.01"]
    args = [
        "hw4-train", "-m", "model=mlp", f"trainer.epochs={epochs}", "trainer.verbose=0",
        "tracking.log_model=false", f"data.dir={data_dir}", f"tracking.uri={tracking_uri}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}", f"optimizer.lr={','.join(lrs)}",
    ]  # fmt: skip

    def job_2_has_epochs(client, runs):
        second = [r for r in runs if r.data.params.get("optimizer.lr") == lrs[1]]
        return bool(second) and len(client.get_metric_history(second[0].info.run_id, "loss")) >= 2

    process = start_and_wait_for(args, tmp_path, tracking_uri, job_2_has_epochs)
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, parent, children = parent_and_children(tracking_uri)
    statuses = {c.data.params["optimizer.lr"]: c.info.status for c in children}
    assert statuses == {lrs[0]: "FINISHED", lrs[1]: "RUNNING"}  # killed during job 2

    # The same sweep again, in this process (the kill needed the process, the continue does not).
    again = console.hw4_train(args, cwd=tmp_path, monkeypatch=monkeypatch)
    assert "continuing sweep" in again.stderr + again.stdout
    assert "not trained again" in again.stdout and "resuming run" in again.stdout
    client, parent_again, children = parent_and_children(tracking_uri)  # still one parent
    assert parent_again.info.run_id == parent.info.run_id
    assert parent_again.info.status == "FINISHED" and parent_again.data.metrics["jobs_finished"] == 3
    assert sorted(c.data.params["optimizer.lr"] for c in children) == lrs  # no configuration twice
    assert len({c.data.tags["job_key"] for c in children}) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        for name in EPOCH_METRICS:
            assert steps(client, child.info.run_id, name) == list(range(epochs)), (child.info.run_name, name)


JOBLIB_2 = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
# Far more epochs than a job trains before its stop: an epoch here takes about 50 ms, so 100
# epochs could end within the idle-worker case's 3 s wait. The stop, not this, ends training.
LONG = 1000


@pytest.mark.serial
@pytest.mark.parametrize(
    "grid, launcher, signum, whole_group, killed, finished",
    [
        # Ctrl-C in a terminal reaches every process of the group
        (["optimizer.lr=0.001,0.002,0.003,0.004"], [], signal.SIGINT, True, 1, 0),
        # `timeout`, a scheduler, a container stop: the launcher alone
        (["optimizer.lr=0.001,0.002,0.003,0.004"], JOBLIB_2, signal.SIGTERM, False, 2, 0),
        # a 2-epoch job, then a long one: one worker idle when Ctrl-C comes, which must not kill it
        (["optimizer.lr=0.001", f"trainer.epochs=2,{LONG}"], JOBLIB_2, signal.SIGINT, True, 1, 1),
    ],
    ids=["basic-ctrl-c", "joblib-sigterm-to-launcher", "joblib-ctrl-c-idle-worker"],
)
def test_a_stopped_sweep_ends_its_runs_killed_and_leaves_no_process(
    grid, launcher, signum, whole_group, killed, finished, tmp_path, tracking_uri
):
    """Issue 14, item 12: the running jobs end KILLED after their epoch, with their epochs and
    checkpoints; the jobs not started never start; the parent ends KILLED and counts them; the
    launcher exits 128 + the signal once its workers are gone, and none is left behind."""
    import psutil
    from conftest import write_dataset
    from test_reliability import start_and_wait_for, steps

    from hw4 import checkpoints

    data_dir = write_dataset(tmp_path / "data", n_dev=3000, n_test=200)  # epochs long enough to catch
    args = [
        "hw4-train", "-m", "model=mlp", f"trainer.epochs={LONG}", "trainer.verbose=0",
        "tracking.log_model=false", f"data.dir={data_dir}", f"tracking.uri={tracking_uri}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}", *grid, *launcher,
    ]  # fmt: skip
    planned = 2 if f"trainer.epochs=2,{LONG}" in grid else 4

    def ready(client, runs):
        children = [r for r in runs if r.data.tags.get("sweep") != "parent"]
        done = [r for r in children if r.info.status == "FINISHED"]
        training = [
            r for r in children if r.info.status == "RUNNING" and len(steps(client, r.info.run_id, "loss")) >= 2
        ]
        return len(done) == finished and len(training) == killed

    process = start_and_wait_for(args, tmp_path, tracking_uri, ready, stdout=subprocess.PIPE, start_new_session=True)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= (2 if launcher else 0)
    if finished:
        time.sleep(3)  # the finished job's worker is back waiting for work: idle
    if whole_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    out, err = process.communicate(timeout=90)
    assert process.returncode == 128 + signum, err.decode()[-3000:]
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, [p.cmdline() for p in alive]  # no orphaned loky worker or tracker

    client, parent, children = parent_and_children(tracking_uri)
    assert parent.info.status == "KILLED"
    assert parent.data.tags["stopped_by"] == signal.Signals(signum).name
    metrics = parent.data.metrics
    assert (metrics["jobs_planned"], metrics["jobs_killed"], metrics["jobs_finished"]) == (planned, killed, finished)
    assert metrics["jobs_not_run"] == planned - killed - finished
    assert len(children) == killed + finished  # the jobs not started never opened a run
    for child in (c for c in children if c.info.status != "FINISHED"):
        assert child.info.status == "KILLED"
        assert f"run {child.info.run_id} KILLED" in out.decode()  # ended by its own job, not killed hard
        done = steps(client, child.info.run_id, "loss")
        assert 2 <= len(done) < LONG and done == list(range(len(done)))  # whole epochs, kept
        _, state, _ = checkpoints.load(Path(child.data.tags["checkpoint_dir"]))
        assert state.epoch == len(done) - 1  # the checkpoint holds every logged epoch: resumable
    assert f"hydra.sweep.dir={tmp_path / 'multirun'}" in out.decode()  # how to finish it


def test_a_failed_job_trains_again_in_a_new_child_and_the_old_one_is_superseded(
    data_copy, tracking_uri, tmp_path, monkeypatch
):
    labels = data_copy / "t10k-labels-idx1-ubyte.gz"
    good = labels.read_bytes()
    labels.write_bytes(b"garbage")  # every job fails while loading data
    with pytest.raises(DataError, match="not a complete gzip file"):
        fast_sweep_in_process(monkeypatch, tmp_path, data_copy, tracking_uri, "optimizer.lr=1e-3,1e-2")
    _, parent, _ = parent_and_children(tracking_uri)
    client = MlflowClient(tracking_uri)
    assert len(runs_by_status(client, parent.info.run_id)["FAILED"]) == 2

    left = [
        tmp_path / "mlruns" / "checkpoints" / r.info.run_id
        for r in runs_by_status(client, parent.info.run_id)["FAILED"]
    ]
    for folder in left:  # as a run that failed mid-training leaves it
        folder.mkdir(parents=True)
        (folder / "LATEST").write_text("epoch_0")
    labels.write_bytes(good)  # repaired: data.dir is bookkeeping, so these are the same jobs
    fast_sweep_in_process(monkeypatch, tmp_path, data_copy, tracking_uri, "optimizer.lr=1e-3,1e-2")  # continued
    by_status = runs_by_status(client, parent.info.run_id)
    finished = {r.info.run_id: r for r in by_status["FINISHED"]}
    assert len(finished) == 2 and len(by_status["FAILED"]) == 2
    for failed in by_status["FAILED"]:
        replacement = finished[failed.data.tags["superseded_by"]]
        # The same planned job (plan_key): the garbage data had another content digest, so
        # another job_key (issue 21, 3.7), yet the repaired attempt replaces the failed one.
        assert replacement.data.tags["plan_key"] == failed.data.tags["plan_key"]
    summary = client.get_run(parent.info.run_id).data.metrics
    assert (summary["jobs_finished"], summary["jobs_failed"]) == (2, 0)  # replaced runs left out
    assert not any(folder.exists() for folder in left)  # a replaced run's checkpoint will not be resumed


def test_median_pruning_stops_a_hopeless_job_and_lets_the_others_finish(
    tiny_data_dir, tracking_uri, tmp_path, monkeypatch
):
    fast_sweep_in_process(
        monkeypatch, tmp_path, tiny_data_dir, tracking_uri, "optimizer=sgd", "optimizer.lr=1e-2,3e-2,1e-6",
        "trainer.epochs=6", "trainer.prune=median", "trainer.prune_after=2", "data.limit=200",
    )  # fmt: skip
    client, parent, children = parent_and_children(tracking_uri)
    by_lr = {c.data.params["optimizer.lr"]: c for c in children}
    hopeless = by_lr.pop("1e-06")
    assert hopeless.info.status == "FINISHED"
    assert hopeless.data.tags["pruned"] == "true" and hopeless.data.tags["pruned_at_epoch"] == "1"
    assert len(client.get_metric_history(hopeless.info.run_id, "loss")) == 2
    assert "test_categorical_accuracy" in hopeless.data.metrics  # still evaluated
    for child in by_lr.values():
        assert "pruned" not in child.data.tags
        assert len(client.get_metric_history(child.info.run_id, "loss")) == 6
    assert parent.data.metrics["jobs_pruned"] == 1 and parent.data.metrics["jobs_finished"] == 3


def test_lr_seeds_preset_repeats_the_grid_over_three_seeds():
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        lr = compose("config", overrides=["sweep=lr"], return_hydra_config=True)
        seeds = compose("config", overrides=["sweep=lr_seeds"], return_hydra_config=True)
    assert seeds.hydra.sweeper.params["optimizer.lr"] == lr.hydra.sweeper.params["optimizer.lr"]
    assert seeds.hydra.sweeper.params["trainer.seed"] == "0,1,2"


def test_two_sweeps_started_in_the_same_second_get_their_own_folders():
    register_configs()
    folders = []
    for _ in range(2):  # two launches: each composes its own config (its own resolver cache)
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", return_hydra_config=True)
        cfg.hydra.runtime.cwd = "/launch"
        folders.append(str(cfg.hydra.sweep.dir))
    assert folders[0] != folders[1]


def test_after_a_hard_stop_only_runs_whose_process_died_are_ended_killed(tracking_uri, tmp_path):
    """A second stop signal lets joblib kill its workers: their runs stay RUNNING, and the
    launcher ends those KILLED. A run whose lock a live process holds (or whose lock is on another
    machine's disk) is left alone."""
    from hw4 import names, tracking
    from hw4.runtime import locks
    from hw4.sweep.callback import end_abandoned_children
    from hw4.sweep.context import SweepContext

    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("hw4")
    parent = tracking.create_run(client, experiment_id, "sweep", {})
    child = {"mlflow.parentRunId": parent.info.run_id, names.JOB_NUM: 0}
    died, alive, elsewhere = (tracking.create_run(client, experiment_id, n, child).info.run_id for n in "abc")
    root = tmp_path / "checkpoints"
    locks.lock_path(root, died).parent.mkdir(parents=True)
    locks.lock_path(root, died).write_text("pid 1 on a machine")  # left behind, nobody holds it
    context = SweepContext(tracking_uri, experiment_id, parent.info.run_id, "s")
    with locks.RunLock(locks.lock_path(root, alive), alive):
        end_abandoned_children(client, context, root)
    status = {run_id: client.get_run(run_id).info.status for run_id in (died, alive, elsewhere)}
    assert status == {died: "KILLED", alive: "RUNNING", elsewhere: "RUNNING"}


def test_a_sweep_knows_how_many_jobs_it_plans():
    """For the summary's jobs_not_run: the basic sweeper's grid as Hydra expands it (globs, the
    sweeper's params) and Optuna's n_trials."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hw4.sweep._hydra import planned_jobs

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        load = GlobalHydra.instance().config_loader().load_configuration

        def planned(*overrides: str):
            return planned_jobs(load("config", list(overrides), run_mode=RunMode.MULTIRUN))

        assert planned("model=glob(*)", "optimizer.lr=1e-3,1e-2") == 4 * 2
        assert planned("sweep=lr_seeds", "model=mlp") == 5 * 3
        assert (
            planned("hparams_search=optuna_lr")
            == load("config", ["hparams_search=optuna_lr"], run_mode=RunMode.MULTIRUN).hydra.sweeper.n_trials
        )


def test_a_sweep_whose_every_job_failed_ends_its_parent_failed(tiny_data_dir, tracking_uri, tmp_path):
    result = sweep(tmp_path, tiny_data_dir, tracking_uri, "data.limit=100000,200000")  # both refused
    assert result.returncode == 1
    assert "is larger than the development set" in result.stderr
    _, parent, children = parent_and_children(tracking_uri)
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert parent.info.status == "FAILED"  # ended at exit, though Hydra skipped on_multirun_end
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (0, 2)
    assert parent.data.metrics["jobs_not_run"] == 0  # failed jobs ran
