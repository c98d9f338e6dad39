"""hparams_search=optuna_lr on a current Optuna (hydra_plugins/hw4_optuna_sweeper): the study in
shared storage, continued by a second launch and shared by two launches at once (issue 22)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hw4 import names

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
from hydra_plugins.hw4_optuna_sweeper import _core  # noqa: E402  (needs optuna)


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_two_launches_at_once_share_one_study(tiny_data_dir, tracking_uri, tmp_path):
    """Two launches (two machines in real life, each with a seed of its own) on one storage and
    study name; the storage file does not exist yet, so both race to create it."""
    storage = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"
    both = [search(tmp_path, tiny_data_dir, tracking_uri, name, f"hydra.sweeper.storage={storage}",
                   "hydra.sweeper.study_name=shared", f"hydra.sweeper.sampler.seed={seed}")
            for name, seed in (("a", 1), ("b", 2))]  # fmt: skip
    for process in both:
        finished(process)
    study = optuna.load_study(study_name="shared", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # no trial number twice
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 4
    assert len({t.params["optimizer.lr"] for t in study.trials}) == 4  # four learning rates, none twice
    client = MlflowClient(tracking_uri)
    children = {p.info.run_id: client.search_runs([p.info.experiment_id], names.children_filter(p.info.run_id))
                for p in parents(tracking_uri)}  # fmt: skip
    assert sorted(len(c) for c in children.values()) == [2, 2]  # each launch's trials under its parent
    values = sorted(r.data.metrics[names.OBJECTIVE] for c in children.values() for r in c)
    assert study.best_value == pytest.approx(values[-1])  # the best over both launches


def test_the_command_line_replaces_a_preset_parameter_swept_or_fixed():
    sampled, fixed = _core.search_space(["optimizer.lr=tag(log, interval(1e-4, 3e-2))", "optimizer.lr=0.01"])
    assert (sampled, fixed) == ({}, {"optimizer.lr": "0.01"})
    sampled, fixed = _core.search_space(["data.limit=200", "data.limit=choice(200,400)", "trainer.epochs=range(1,4)"])
    assert fixed == {} and sampled["data.limit"].choices == (200, 400)
    assert isinstance(sampled["trainer.epochs"], optuna.distributions.IntDistribution)


def test_a_search_into_an_existing_sweep_folder_numbers_its_jobs_after_the_last(tmp_path):
    assert _core.next_job_number(tmp_path) == 0
    for name in ("0", "1", "7", ".hydra", "notes"):
        (tmp_path / name).mkdir()
    assert _core.next_job_number(tmp_path) == 8


def test_a_relative_sqlite_storage_is_the_launch_folders(tmp_path):
    assert _core.storage_url("sqlite:///mlruns/optuna.db", str(tmp_path)) == f"sqlite:///{tmp_path}/mlruns/optuna.db"
    assert (tmp_path / "mlruns").is_dir()
    assert _core.storage_url("sqlite:///:memory:", str(tmp_path)) == "sqlite:///:memory:"
    assert _core.storage_url("postgresql://db/optuna", str(tmp_path)) == "postgresql://db/optuna"
