"""hydra/launcher=members, run as a user runs it (hw4-train -m ...): a sweep's jobs trained as
members of one program are each their own MLflow run, equal to the job trained alone; a kill and
a continue resume every member exactly; jobs that cannot share a program train alone, saying why.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import console
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from hw4 import names

GRID = ["model=mlp", "optimizer.lr=1e-3,1e-2", "trainer.seed=0,1"]
HISTORIES = (names.LOSS, names.ACCURACY, names.VAL_LOSS, names.VAL_ACCURACY, names.LEARNING_RATE)


def sweep_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uri: str, folder: str, *args: str) -> str:
    """`hw4-train -m ARGS` (quiet, no model logged, into `uri` and `tmp_path`/`folder`), in this
    process (hw4.api.sweep); returns what it printed."""
    command = ["hw4-train", "-m", "trainer.verbose=0", "tracking.log_model=false", f"tracking.uri={uri}",
               f"hydra.sweep.dir={tmp_path / folder}", *args]  # fmt: skip
    return console.hw4_train(command, cwd=tmp_path, monkeypatch=monkeypatch).stdout


def runs_by_job(uri: str) -> dict[tuple[str, str], object]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get(names.SWEEP_ROLE) != "parent"]
    return {(r.data.params["optimizer.lr"], r.data.params["trainer.seed"]): r for r in children}


def histories(uri: str, run_id: str) -> dict[str, list[float]]:
    client = MlflowClient(uri)
    return {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in HISTORIES}  # fmt: skip


def assert_same_runs(uri_a: str, uri_b: str) -> None:
    a, b = runs_by_job(uri_a), runs_by_job(uri_b)
    assert sorted(a) == sorted(b) and len(a) == 4
    for job, run in a.items():
        other = b[job]
        assert run.info.status == other.info.status == "FINISHED"
        for key, values in histories(uri_a, run.info.run_id).items():
            np.testing.assert_allclose(values, histories(uri_b, other.info.run_id)[key], rtol=1e-5, err_msg=key)
        for key in (names.TEST_ACCURACY, names.TEST_LOSS, names.BEST_VAL_ACCURACY):
            np.testing.assert_allclose(run.data.metrics[key], other.data.metrics[key], rtol=1e-5, err_msg=key)
        own = {k: v for k, v in run.data.params.items() if not k.startswith("tracking.")}  # the store differs
        assert own == {k: v for k, v in other.data.params.items() if not k.startswith("tracking.")}
        same_tags = {names.CONFIG_KEY, names.JOB_KEY, names.XLA, names.BACKEND, "model", "optimizer"}
        assert {k: run.data.tags[k] for k in same_tags} == {k: other.data.tags[k] for k in same_tags}
        artifacts = {f.path for f in MlflowClient(uri_a).list_artifacts(run.info.run_id)}
        assert artifacts == {f.path for f in MlflowClient(uri_b).list_artifacts(other.info.run_id)}


@pytest.mark.slow
def test_each_member_is_its_own_run_equal_to_the_job_trained_alone(tmp_path, tiny_data_dir, monkeypatch):
    """The same grid, job by job (Hydra's basic launcher) and as one program of four members:
    every run's epochs, test metrics, params, tags and artifacts agree. In this process (the
    launcher and its jobs are the same code under `hw4-train -m`: the kill test below runs that)."""
    alone, together = f"sqlite:///{tmp_path / 'alone.db'}", f"sqlite:///{tmp_path / 'together.db'}"
    data = f"data.dir={tiny_data_dir}"
    sweep_in_process(monkeypatch, tmp_path, alone, "alone", *GRID, "trainer.epochs=3", data)
    printed = sweep_in_process(
        monkeypatch, tmp_path, together, "together", *GRID, "trainer.epochs=3", data, "hydra/launcher=members"
    )
    assert "jobs 0, 1, 2, 3: one program of 4 members" in printed
    assert_same_runs(alone, together)


@pytest.mark.slow
def test_jobs_that_cannot_share_a_program_train_alone_and_say_why(tmp_path, tiny_data_dir, tracking_uri, monkeypatch):
    printed = sweep_in_process(monkeypatch, tmp_path, tracking_uri, "mixed", "model=mlp,lenet", "trainer.epochs=1",
                               f"data.dir={tiny_data_dir}", "hydra/launcher=members")  # fmt: skip
    assert "job 1 trains alone: its model." in printed and "differ from job 0's" in printed
    assert all(r.info.status == "FINISHED" for r in runs_by_job(tracking_uri).values())


@pytest.mark.slow
@pytest.mark.serial
def test_a_killed_members_sweep_continues_every_member_exactly(tmp_path, monkeypatch):
    """SIGTERM to the launcher while its members train: every member stops after the epoch,
    KILLED with its checkpoint; the same command continues each in its own run, and the result
    equals the sweep that was never stopped. The stopped launch is a real `hw4-train -m`; the
    reference and the continue run in this process."""
    from conftest import write_dataset
    from test_continue import epochs_logged
    from test_reliability import wait_until

    data = f"data.dir={write_dataset(tmp_path / 'data', n_dev=3000, n_test=200)}"
    whole, stopped = f"sqlite:///{tmp_path / 'whole.db'}", f"sqlite:///{tmp_path / 'stopped.db'}"
    args = [*GRID, "trainer.epochs=5", data, "hydra/launcher=members"]
    sweep_in_process(monkeypatch, tmp_path, whole, "whole", *args)  # the reference: never stopped
    command = ["hw4-train", "-m", "trainer.verbose=0", "tracking.log_model=false", f"tracking.uri={stopped}",
               f"hydra.sweep.dir={tmp_path / 'stopped'}", *args]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def two_epochs() -> bool:
        try:
            runs = runs_by_job(stopped)
        except Exception:  # noqa: BLE001 - the store is still being made
            return False
        return len(runs) == 4 and all(epochs_logged(stopped, r.info.run_id) >= 2 for r in runs.values())

    wait_until(two_epochs, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    killed = runs_by_job(stopped)
    assert {r.info.status for r in killed.values()} == {"KILLED"}
    assert all(epochs_logged(stopped, r.info.run_id) < 5 for r in killed.values())
    # The same command continues it, in this process (only the stopped launch needs its own).
    again = sweep_in_process(monkeypatch, tmp_path, stopped, "stopped", *args)  # raises unless it succeeds
    assert again.count("resuming run") == 4
    resumed = runs_by_job(stopped)
    assert {job: r.info.run_id for job, r in resumed.items()} == {job: r.info.run_id for job, r in killed.items()}
    assert_same_runs(whole, stopped)


@pytest.mark.slow
def test_an_optuna_search_trains_each_batch_of_trials_as_members_and_tells_each(
    tmp_path, tiny_data_dir, tracking_uri, monkeypatch
):
    """hparams_search=optuna_lr under hydra/launcher=members: each batch of n_jobs trials is one
    program; Optuna's own load_study finds every trial told, each linked to its FINISHED run."""
    optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    printed = sweep_in_process(monkeypatch, tmp_path, tracking_uri, "search", "hparams_search=optuna_lr",
                               "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", f"hydra.sweeper.storage={storage}",
                               "hydra.sweeper.study_name=members", "trainer.epochs=2", f"data.dir={tiny_data_dir}",
                               "hydra/launcher=members")  # fmt: skip
    assert printed.count("one program of 2 members") == 2
    study = optuna.load_study(study_name="members", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    runs = runs_by_job(tracking_uri)
    assert len(runs) == 4 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert sorted(t.value for t in study.trials) == sorted(r.data.metrics[names.OBJECTIVE] for r in runs.values())
