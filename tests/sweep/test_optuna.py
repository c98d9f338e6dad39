"""hparams_search=optuna_lr on a current Optuna (hydra_plugins/hw4_optuna_sweeper): the study in
shared storage, continued by a second launch and shared by two launches at once (issue 22)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hw4 import names

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
pytestmark = pytest.mark.slow


def search(cwd: Path, data_dir: Path, uri: str, folder: str, *overrides: str) -> subprocess.Popen:
    command = [
        "hw4-train", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=2", "debug=fast", "trainer.epochs=1",
        f"data.dir={data_dir}", f"tracking.uri={uri}", f"hydra.sweep.dir={cwd / folder}", *overrides,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def parents(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(names.SWEEP_ROLE) == "parent"]


def test_the_study_lives_beside_the_store_and_a_second_launch_continues_it(tiny_data_dir, tracking_uri, tmp_path):
    finished(search(tmp_path, tiny_data_dir, tracking_uri, "first"))
    storage = tmp_path / "mlruns" / "optuna.db"  # the default: beside the MLflow store
    assert storage.is_file()
    finished(search(tmp_path, tiny_data_dir, tracking_uri, "second"))
    study = optuna.load_study(study_name="lr-mlp-adam", storage=f"sqlite:///{storage}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]  # the second launch added to the first
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # tracking.objective's
    assert len(parents(tracking_uri)) == 2  # one parent run per launch, two children each


def test_two_launches_at_once_share_one_study(tiny_data_dir, tracking_uri, tmp_path):
    """Two launches (two machines in real life) on one storage and study name."""
    storage = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"
    (tmp_path / "shared").mkdir()
    both = [search(tmp_path, tiny_data_dir, tracking_uri, name, f"hydra.sweeper.storage={storage}",
                   "hydra.sweeper.study_name=shared") for name in ("a", "b")]  # fmt: skip
    for process in both:
        finished(process)
    study = optuna.load_study(study_name="shared", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # no trial number twice
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 4
    client = MlflowClient(tracking_uri)
    children = {p.info.run_id: client.search_runs([p.info.experiment_id], names.children_filter(p.info.run_id))
                for p in parents(tracking_uri)}  # fmt: skip
    assert sorted(len(c) for c in children.values()) == [2, 2]  # each launch's trials under its parent
    values = sorted(r.data.metrics[names.OBJECTIVE] for c in children.values() for r in c)
    assert study.best_value == pytest.approx(values[-1])  # the best over both launches
