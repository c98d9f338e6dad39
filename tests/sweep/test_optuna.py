"""hparams_search=optuna_lr on a current Optuna (hydra_plugins/hw4_optuna_sweeper): the study in
shared storage, continued by a second launch and shared by two launches at once (issue 22)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import console
import pytest
from mlflow.tracking import MlflowClient

from hw4 import names

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
from conftest import PRUNABLE  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hw4.sweep import study as studies  # noqa: E402
from hydra_plugins.hw4_optuna_sweeper import _core  # noqa: E402  (needs optuna)


def search_overrides(cwd: Path, data_dir: Path, uri: str, folder: str, *overrides: str) -> list[str]:
    """A 2-trial search of one quick epoch each, in the sweep folder `cwd / folder`."""
    return [
        "hparams_search=optuna_lr", "hydra.sweeper.n_trials=2", "debug=fast", "trainer.epochs=1",
        f"data.dir={data_dir}", f"tracking.uri={uri}", f"hydra.sweep.dir={cwd / folder}", *overrides,
    ]  # fmt: skip


def search(cwd: Path, data_dir: Path, uri: str, folder: str, *overrides: str) -> subprocess.Popen:
    """`hw4-train` with `search_overrides`, a process launched from `cwd`."""
    command = ["hw4-train", *search_overrides(cwd, data_dir, uri, folder, *overrides)]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def search_in_process(cwd: Path, data_dir: Path, uri: str, folder: str, *overrides: str) -> str:
    """The same search in this process (hw4.api.sweep, launched from `cwd`): for launches whose
    records are the claim, not their exit status. Returns what it printed, stdout and stderr."""
    with pytest.MonkeyPatch.context() as patch:  # module fixtures call it too
        ran = console.hw4_train(["hw4-train", *search_overrides(cwd, data_dir, uri, folder, *overrides)],
                                cwd=cwd, monkeypatch=patch)  # fmt: skip
    return ran.stdout + ran.stderr


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
    # Both launches in this process: what they record is the claim (the trials still train in
    # joblib's worker processes, new ones for each launch: hw4.sweep._hydra).
    search_in_process(cwd, tiny_data_dir, uri, "first", *PRUNABLE, *parallel)
    second_output = search_in_process(cwd, tiny_data_dir, uri, "second", *PRUNABLE, "hydra.sweeper.n_trials=1")
    storage = f"sqlite:///{cwd / 'mlruns' / 'optuna.db'}"  # the default: beside the MLflow store
    study = optuna.load_study(study_name="lr-mlp-adam", storage=storage)
    return study, MlflowClient(uri), uri, second_output, storage


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
    assert sampled["trainer.epochs"] == optuna.distributions.IntDistribution(1, 3)  # Hydra's range(1,4): 1, 2, 3


def parsed(line: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(line)


def values_of(found) -> list:
    """Every value an evenly spaced distribution holds, lowest first."""
    count = round((found.high - found.low) / found.step) + 1
    return [found.low + k * found.step for k in range(count)]


@pytest.mark.parametrize(
    "line", ["x=range(1,4)", "x=range(1,10,3)", "x=range(0,10,5)", "x=range(4,1,-1)", "x=range(-3,3,2)",
             "x=float(range(1,4))", "x=range(0.5,2.0,0.5)", "x=range(0,1,0.3)", "x=range(0.1,0.35,0.1)"],
)  # fmt: skip
def test_a_range_holds_exactly_the_values_hydras_range_sweep_enumerates(line):
    """Issue 34: range(1,4) was IntDistribution(1, 4), 4 included; Hydra's range stops before it."""
    override = parsed(line)
    enumerated = sorted(override.sweep_iterator())
    found = _core.distribution(override)
    floats = any(isinstance(v, float) for v in enumerated)
    assert isinstance(found, optuna.distributions.FloatDistribution if floats else optuna.distributions.IntDistribution)
    assert not found.log
    assert values_of(found) == pytest.approx(enumerated)
    if not floats:
        assert all(isinstance(v, int) for v in (found.low, found.high, found.step))


def test_an_empty_range_is_refused_in_one_line():
    from hw4.errors import ConfigError

    with pytest.raises(ConfigError, match=r"range\(3,1\): an empty range"):
        _core.distribution(parsed("x=range(3,1)"))
    for line in ("x=tag(int, interval(0.5, 0.9))", "x=tag(log, interval(0, 1))"):  # no integer; log of 0
        with pytest.raises(ConfigError, match="an empty or \\(log\\) non-positive interval"):
            _core.distribution(parsed(line))


@pytest.mark.parametrize(
    ("line", "low", "high", "log"),
    [
        ("x=tag(int, interval(32, 256))", 32, 256, False),  # issue 34: sampled floats, then a type error
        ("x=int(interval(32, 256))", 32, 256, False),  # the official plugin's integer interval
        ("x=tag(log, int(interval(32, 256)))", 32, 256, True),
        ("x=tag(int, log, interval(32, 256))", 32, 256, True),
        ("x=tag(int, interval(0.5, 4.5))", 1, 4, False),  # the integers inside it
    ],
)
def test_an_int_interval_samples_integers(line, low, high, log):
    found = _core.distribution(parsed(line))
    assert found == optuna.distributions.IntDistribution(low, high, log=log)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [study.ask(fixed_distributions={"x": found}).params["x"] for _ in range(20)]
    assert all(isinstance(v, int) and low <= v <= high for v in drawn) and len(set(drawn)) > 1


@pytest.mark.parametrize(
    ("line", "low", "high", "log"),
    [("x=interval(32, 256)", 32.0, 256.0, False), ("x=tag(log, interval(1e-4, 3e-2))", 1e-4, 3e-2, True)],
)
def test_a_plain_interval_samples_floats(line, low, high, log):
    found = _core.distribution(parsed(line))
    assert found == optuna.distributions.FloatDistribution(low, high, log=log)


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


def test_a_study_records_its_first_launchs_settings_and_refuses_others():
    """A study made before hw4 recorded settings records the next launch's; a launch whose
    settings differ is refused, naming each differing key with both values."""
    from hw4.errors import ConfigError

    study = optuna.create_study(study_name="lr-mlp-adam")
    first = {"trainer.epochs": "20", "data.limit": "None", "model.name": "mlp"}
    studies.check_settings(study, first)  # none recorded: these are the study's now
    assert study.user_attrs[studies.SETTINGS_ATTR] == first
    studies.check_settings(study, {**first, "model.new_key": "1"})  # a key only one side has: not compared
    smoke = {**first, "trainer.epochs": "2", "data.limit": "400"}
    with pytest.raises(ConfigError) as refused:
        studies.check_settings(study, smoke)
    message = str(refused.value)
    assert "\n" not in message and "hydra.sweeper.study_name" in message
    assert "data.limit=None (this launch: 400)" in message and "trainer.epochs=20 (this launch: 2)" in message
    assert study.user_attrs[studies.SETTINGS_ATTR] == first  # the refused launch changed nothing


def test_the_fixed_settings_leave_out_the_searched_keys_the_seed_and_bookkeeping():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hw4.config import CONFIG_DIR, register_configs

    register_configs()
    overrides = ["hparams_search=optuna_lr", "debug=fast", "trainer.seed=3", "data.limit=choice(200,400)",
                 "tracking.uri=sqlite:///elsewhere.db", "trainer.verbose=2"]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):  # the launcher's config, as Hydra loads it
        load = GlobalHydra.instance().config_loader().load_configuration
        config = load("config", overrides, run_mode=RunMode.MULTIRUN)
    settings = studies.fixed_settings(config)
    assert settings["trainer.epochs"] == "2" and settings["model.name"] == "mlp"  # debug=fast's, the preset's
    assert settings["optimizer.name"] == "adam"
    searched = ("optimizer.lr", "data.limit")  # hydra.sweeper.params' and the command line's sweep
    bookkeeping = ("trainer.seed", "trainer.verbose", "tracking.uri", "data.dir")
    assert not set(searched + bookkeeping) & set(settings)
    assert not [k for k in settings if k.startswith("hydra.")]


@pytest.mark.slow
def test_a_launch_with_other_fixed_settings_is_refused_before_any_trial_or_parent(
    tiny_data_dir, tracking_uri, tmp_path
):
    """Issue 34: a debug=fast smoke test and a real search joined one study and one parent run."""
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    search_in_process(tmp_path, tiny_data_dir, tracking_uri, "first", "hydra.sweeper.n_trials=1")
    (parent,) = parents(tracking_uri)
    # The refused launch as a process: its exit status and its one line are the claim.
    other = search(tmp_path, tiny_data_dir, tracking_uri, "other", "hydra.sweeper.n_trials=1", "trainer.epochs=2")
    _, err = other.communicate(timeout=600)
    assert other.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "hydra.sweeper.study_name" in line]
    assert "lr-mlp-adam" in line and "trainer.epochs=1 (this launch: 2)" in line
    assert [t.number for t in optuna.load_study(study_name="lr-mlp-adam", storage=storage).trials] == [0]
    assert [p.info.run_id for p in parents(tracking_uri)] == [parent.info.run_id]
    assert MlflowClient(tracking_uri).get_run(parent.info.run_id).info.status == "FINISHED"


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.mark.slow
@pytest.mark.serial
def test_a_killed_launcher_s_trial_is_retried_and_its_run_resumed(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    """Issue 34: a launcher SIGKILLed during a trial, then the same command again (a new sweep
    folder, Hydra's default): the dead trial is failed (its heartbeat stopped) and asked again,
    its run resumed from its checkpoint under the same parent; nothing stays RUNNING."""
    epochs = 40
    command = [
        "hw4-train", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=1", "hydra/sweeper/pruner=none",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "debug=fast",
        f"trainer.epochs={epochs}", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
    ]  # fmt: skip
    client = MlflowClient(tracking_uri)

    def child_trained_two_epochs() -> bool:
        return any(r.info.status == "RUNNING" and r.data.tags.get(names.SWEEP_ROLE) != "parent"
                   and len(client.get_metric_history(r.info.run_id, "loss")) >= 2
                   for r in all_runs(tracking_uri))  # fmt: skip

    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while not child_trained_two_epochs():
        assert launcher.poll() is None, launcher.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the trial did not train two epochs in time"
        time.sleep(0.1)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    (killed_trial,) = optuna.load_study(study_name="lr-mlp-adam", storage=storage).trials
    assert killed_trial.state == TrialState.RUNNING  # the fault as it is: nothing could tell it
    (killed_run,) = [r for r in all_runs(tracking_uri) if r.data.tags.get(names.SWEEP_ROLE) != "parent"]
    (parent,) = parents(tracking_uri)
    assert killed_run.info.status == parent.info.status == "RUNNING"
    time.sleep(3)  # past the grace period

    # The same command again, in this process: only the killed launch needed a process of its own.
    again = console.hw4_train(command, cwd=tmp_path, monkeypatch=monkeypatch)
    study = optuna.load_study(study_name="lr-mlp-adam", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = study.trials[1]
    assert retry.params == killed_trial.params and retry.system_attrs["failed_trial"] == 0  # Optuna's retry
    assert not [r.info.run_id for r in all_runs(tracking_uri) if r.info.status == "RUNNING"]
    (parent_again,) = parents(tracking_uri)  # the dead launch's parent, continued, not forked
    assert parent_again.info.run_id == parent.info.run_id and parent_again.info.status == "FINISHED"
    children = [r for r in all_runs(tracking_uri) if r.data.tags.get(names.SWEEP_ROLE) != "parent"]
    assert [(c.info.run_id, c.info.status) for c in children] == [(killed_run.info.run_id, "FINISHED")]
    assert retry.user_attrs["mlflow_run_id"] == killed_run.info.run_id
    assert f"resuming run {killed_run.info.run_id}" in again.stdout  # from its checkpoint
    assert {m.step for m in client.get_metric_history(killed_run.info.run_id, "loss")} == set(range(epochs))
