"""Sweeps: one MLflow parent per sweep, jobs as children, summaries, parallel jobs, failures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from hw4.config import CONFIG_DIR, register_configs
from hw4.sweep import JOB_TAG, SWEEP_ID_TAG

pytestmark = pytest.mark.slow
EPOCH_METRICS = ("loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy")


def sweep(tmp_path: Path, data_dir: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "hw4-train", "-m", "model=mlp", "trainer.epochs=2", "trainer.verbose=0",
            "tracking.log_model=false", f"data.dir={data_dir}", f"tracking.uri={uri}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", *overrides,
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def parent_and_children(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r is not parent]
    return client, parent, children


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_three_job_sweep_nests_under_one_parent(launcher, tiny_data_dir, tracking_uri, tmp_path):
    result = sweep(tmp_path, tiny_data_dir, tracking_uri, "optimizer.lr=1e-3,3e-3,1e-2", *launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = parent_and_children(tracking_uri)

    assert len(children) == 3
    sweep_id = parent.data.tags[SWEEP_ID_TAG]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags[SWEEP_ID_TAG] == sweep_id
        assert child.info.status == "FINISHED"
    assert sorted(float(c.data.params["optimizer.lr"]) for c in children) == [1e-3, 3e-3, 1e-2]
    assert sorted(c.data.tags[JOB_TAG] for c in children) == ["0", "1", "2"]

    best = max(children, key=lambda c: c.data.metrics["val_categorical_accuracy"])
    summary = parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert (summary["jobs_finished"], summary["jobs_failed"]) == (3, 0)
    assert summary["best_lr"] == float(best.data.params["optimizer.lr"])
    assert summary["best_val_categorical_accuracy"] == best.data.metrics["val_categorical_accuracy"]
    assert summary["best_test_categorical_accuracy"] == best.data.metrics["test_categorical_accuracy"]
    assert parent.data.tags["best_run_id"] == best.info.run_id

    definition = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "sweep.json", str(tmp_path))).read_text()
    )
    assert "optimizer.lr=1e-3,3e-3,1e-2" in definition["overrides"]
    if launcher:  # two parallel jobs on this machine's cores: each gets its share of threads
        expected = str(max(1, (os.cpu_count() or 1) // 2))
        assert {c.data.tags["tf_threads"] for c in children} == {expected}


def test_parallel_writers_keep_every_run_and_a_diverging_job_fails(tiny_data_dir, tracking_uri, tmp_path):
    lrs = "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e6"  # SGD at 1e6 turns the loss into NaN
    result = sweep(
        tmp_path, tiny_data_dir, tracking_uri, "optimizer=sgd", f"optimizer.lr={lrs}",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    assert result.returncode == 1  # Hydra reports the failed job once the sweep is done
    client, parent, children = parent_and_children(tracking_uri)

    assert len(children) == 7
    finished = [c for c in children if c.info.status == "FINISHED"]
    (failed,) = [c for c in children if c.info.status == "FAILED"]
    assert len(finished) == 6
    for child in finished:
        for name in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, name)]
            assert sorted(steps) == [0, 1], (child.info.run_name, name)
    assert float(failed.data.params["optimizer.lr"]) == 1e6
    assert "TrainingDiverged: loss became nan" in failed.data.tags["error"]
    assert parent.info.status == "FINISHED"
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (6, 1)


def test_a_job_failing_before_training_still_gets_a_failed_child(tiny_data_dir, tracking_uri, tmp_path):
    result = sweep(tmp_path, tiny_data_dir, tracking_uri, "data.limit=200,100000")
    assert result.returncode == 1
    assert "data.limit=100000 is larger than the development set" in result.stderr
    _, parent, children = parent_and_children(tracking_uri)
    by_status = {c.info.status: c for c in children}
    assert set(by_status) == {"FINISHED", "FAILED"}
    failed = by_status["FAILED"]
    assert "larger than the development set" in failed.data.tags["error"]
    assert failed.data.params["data.limit"] == "100000"  # the job's config, for the record
    assert failed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (1, 1)


def test_optuna_search_nests_its_trials(tiny_data_dir, tracking_uri, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = subprocess.run(
        [
            "hw4-train", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=2",
            "trainer.epochs=1", "trainer.verbose=0", "tracking.log_model=false",
            f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, parent, children = parent_and_children(tracking_uri)
    assert len(children) == 2 and parent.data.metrics["jobs_finished"] == 2
    for child in children:
        assert 1e-4 <= float(child.data.params["optimizer.lr"]) <= 3e-2


def test_lr_sweep_preset_is_a_log_spaced_grid():
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=lr"], return_hydra_config=True)
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
    from hw4.sweep import jobs_at_once

    assert jobs_at_once(n_jobs, cpus) == expected


def test_a_job_without_the_launchers_disk_writes_the_sweep_context(tmp_path, monkeypatch):
    """A Ray worker node has no <sweep dir>/mlflow_sweep.json: the shipped callback writes it.

    The sweep dir is relative, as users may set it, and resolves against the launch folder
    (hydra.runtime.cwd), not the job's working folder.
    """
    from hydra.core.hydra_config import HydraConfig

    from hw4.sweep import MlflowSweepCallback, SweepContext, current_context

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
