"""hparams_search=optuna_lr on a current Optuna (hydra_plugins/hw4_optuna_sweeper): the study in
shared storage, continued by a second launch and shared by two launches at once (issue 22)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hw4 import names

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
from conftest import PRUNABLE  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hw4.sweep import study as studies  # noqa: E402
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


@pytest.fixture(scope="module")
def continued_study(tiny_data_dir, _migrated_store, tmp_path_factory):
    """One search of 4 trials, 2 at a time in joblib workers, pruned by the study's median pruner
    through the default storage; then the same command in a new sweep folder adds one trial."""
    cwd = tmp_path_factory.mktemp("study")
    (cwd / "mlruns").mkdir()
    shutil.copy(_migrated_store, cwd / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    parallel = [
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    finished(search(cwd, tiny_data_dir, uri, "first", *PRUNABLE, *parallel))
    second = search(cwd, tiny_data_dir, uri, "second", *PRUNABLE, "hydra.sweeper.n_trials=1")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    storage = f"sqlite:///{cwd / 'mlruns' / 'optuna.db'}"  # the default: beside the MLflow store
    study = optuna.load_study(study_name="lr-mlp-adam", storage=storage)
    return study, MlflowClient(uri), uri, out + err, storage


@pytest.mark.slow
@pytest.mark.xdist_group("optuna_study")  # one search for the three tests
def test_the_study_lives_beside_the_store_and_a_second_launch_continues_it(continued_study):
    study, client, uri, second_output, _ = continued_study
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]  # the second launch added to the first
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # tracking.objective's
    (parent,) = parents(uri)  # the second launch continued under the first one's parent run
    assert "continuing sweep" in second_output and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], names.children_filter(parent.info.run_id))
    # Both learning rates already ran: the fifth trial takes its run's record, not trained again.
    assert len(children) == 4 and "not trained again" in second_output
    assert study.trials[4].user_attrs["mlflow_run_id"] in {c.info.run_id for c in children}


@pytest.mark.slow
@pytest.mark.xdist_group("optuna_study")
def test_trials_in_parallel_workers_report_every_epoch_and_the_hopeless_are_pruned(continued_study):
    study, client, _, _, _ = continued_study
    states = [t.state for t in study.trials[:4]]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2, [t.params for t in study.trials]
    for trial in study.trials[:4]:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"  # pruned ones too: they end in order, tagged
        assert run.data.tags[names.OPTUNA_TRIAL] == str(trial.number)
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, names.VAL_ACCURACY)}
        assert trial.intermediate_values == pytest.approx(history)  # every epoch reported, from the worker
        if trial.state == TrialState.PRUNED:
            assert run.data.tags[names.PRUNED] == "true" and run.data.tags[names.PRUNED_AT] == "0"
            assert len(history) == 1  # stopped after its first epoch, not trained to the third


@pytest.mark.slow
@pytest.mark.xdist_group("optuna_study")
def test_the_parent_run_records_the_study(continued_study):
    study, client, uri, _, _ = continued_study
    (parent,) = parents(uri)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags[names.OPTUNA_STUDY] == "lr-mlp-adam"
    assert json.loads(tags["optuna_best_params"]) == study.best_params == {"optimizer.lr": 0.01}
    assert metrics["optuna_best_value"] == pytest.approx(study.best_value)
    counts = [metrics["optuna_trials_complete"], metrics["optuna_trials_pruned"]]
    # The fifth trial draws either rate (a continued study's sampler is reseeded) and takes that
    # rate's record: a complete or a pruned one.
    assert counts == [sum(t.state == state for t in study.trials) for state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sum(counts) == 5 and min(counts) >= 2
    assert float(tags["optuna_importance.optimizer.lr"]) == pytest.approx(1.0)  # the only parameter
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optuna_study.json", "optuna_importances.json", "optuna_trials.csv"} <= artifacts


@pytest.mark.slow
@pytest.mark.xdist_group("optuna_study")
def test_optuna_dashboard_opens_the_study(continued_study):
    """The README's command, `optuna-dashboard <storage>`, on a loopback port: its HTTP API lists
    the study and its trials as the storage holds them."""
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    from services import free_port, wait_for

    study, _, _, _, storage = continued_study
    url = f"http://127.0.0.1:{free_port()}"
    command = ["optuna-dashboard", storage, "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    dashboard = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"{url}/api/studies", dashboard, seconds=60)
        with urllib.request.urlopen(f"{url}/api/studies", timeout=10) as response:
            (summary,) = json.load(response)["study_summaries"]
        assert summary["study_name"] == "lr-mlp-adam" and summary["directions"] == ["maximize"]
        with urllib.request.urlopen(f"{url}/api/studies/{summary['study_id']}", timeout=10) as response:
            trials = json.load(response)["trials"]
        assert [(t["number"], t["state"]) for t in trials] == [(t.number, t.state.name.title()) for t in study.trials]
    finally:
        os.killpg(dashboard.pid, signal.SIGTERM)
        dashboard.wait(timeout=30)


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
    assert studies.storage_url("sqlite:///mlruns/optuna.db", str(tmp_path)) == f"sqlite:///{tmp_path}/mlruns/optuna.db"
    assert (tmp_path / "mlruns").is_dir()
    assert studies.storage_url("sqlite:///:memory:", str(tmp_path)) == "sqlite:///:memory:"
    assert studies.storage_url("postgresql://db/optuna", str(tmp_path)) == "postgresql://db/optuna"


def test_the_first_parent_stays_the_studys_while_it_exists():
    """A launch beside the first (its own parent) does not take the study's parent over; once the
    first parent is gone from the store, the next launch's parent is recorded."""
    from hw4.sweep.context import SweepContext

    study = optuna.create_study()
    first, beside = (SweepContext("sqlite:///m.db", "1", run_id, "sweep") for run_id in ("first", "beside"))
    studies.record_parent(study, first, parent_exists=lambda run_id: True)
    studies.record_parent(study, beside, parent_exists=lambda run_id: True)
    assert study.user_attrs[studies.PARENT_ATTR]["parent_run_id"] == "first"
    studies.record_parent(study, beside, parent_exists=lambda run_id: False)  # the first was deleted
    assert study.user_attrs[studies.PARENT_ATTR]["parent_run_id"] == "beside"
    assert "launch_id" not in study.user_attrs[studies.PARENT_ATTR]  # what one launch alone knows
