"""hw4.runs: runs read back from the store (paged, superseded and parent runs left out, a missing
run told from a store error) as tables. The helpers that write runs here serve tests/test_ranking.py
too; the ranking itself is tested there."""

from __future__ import annotations

import pytest

from hw4 import names, runs, tracking
from hw4.errors import ConfigError, TrackingError

# config (lr), seed, best validation accuracy, test accuracy
RUNS = [
    ("1e-3", 0, 0.80, 0.79),
    ("1e-3", 1, 0.90, 0.88),  # the best single run...
    ("1e-2", 0, 0.86, 0.85),  # ...but this configuration has the better mean
    ("1e-2", 1, 0.87, 0.86),
]


def write(uri: str) -> tuple[object, str, str]:
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "runs", None)
    parent = client.create_run(experiment_id, tags={names.SWEEP_ROLE: "parent"}).info.run_id
    for lr, seed, best_val, test in RUNS:
        params = {"model.name": "mlp", "optimizer.lr": lr, names.SEED: seed, "data.dir": f"/data/{seed}"}
        tags = {names.CONFIG_KEY: names.config_key(params), names.JOB_KEY: names.job_key(params)}
        with tracking.start_run(client, experiment_id, f"mlp-lr{lr}", tags, parent_run_id=parent) as run:
            run.log_params(params)
            run.log_metrics({names.BEST_VAL_ACCURACY: best_val, names.TEST_ACCURACY: test})
    return client, experiment_id, parent


def test_config_key_ignores_the_seed_and_bookkeeping_but_not_settings():
    base = {"optimizer.lr": 1e-3, names.SEED: 0, "data.dir": "/a", "tracking.uri": "sqlite:///x", "trainer.verbose": 1}
    same = {**base, names.SEED: 1, "data.dir": "/b", "tracking.uri": "http://h", "trainer.verbose": 0}
    assert names.config_key(base) == names.config_key(same)
    assert names.job_key(base) != names.job_key(same)  # another seed is another job
    assert names.job_key(base) == names.job_key({**base, "data.dir": "/b"})
    assert names.config_key(base) != names.config_key({**base, "optimizer.lr": 1e-2})


def test_superseded_runs_and_sweep_parents_are_not_training_runs(tracking_uri):
    client, experiment_id, parent = write(tracking_uri)
    found = runs.training_runs(client, experiment_id, None)
    assert len(found) == 4
    client.set_tag(found[0].info.run_id, names.SUPERSEDED_BY, "another")
    assert len(runs.training_runs(client, experiment_id, parent)) == 3


# --- runs written straight into the store (tests/test_ranking.py's statistics use them too) -----


def child(client, experiment_id: str, parent: str, lr: str, seed: int, best_val=None, *, status="FINISHED", **more):
    """One child run of `parent`, written straight into the store: `more` may hold `pruned`,
    `history` (validation accuracy per epoch), `metrics` and `params` (extra config)."""
    from mlflow.entities import Metric, Param

    params = {
        "model.name": "mlp",
        "optimizer.name": "adam",
        "optimizer.lr": lr,
        names.SEED: seed,
        **more.get("params", {}),
    }
    tags = {names.CONFIG_KEY: names.config_key(params), names.JOB_KEY: names.job_key(params), names.PARENT_RUN: parent}
    if more.get("pruned"):
        tags[names.PRUNED] = "true"
    run_id = client.create_run(experiment_id, run_name=f"mlp-lr{lr}", tags=tags).info.run_id
    metrics = dict(more.get("metrics", {}))
    if best_val is not None:
        metrics.setdefault(names.BEST_VAL_ACCURACY, best_val)
        metrics.setdefault(names.TEST_ACCURACY, best_val - 0.01)
    entries = [Metric(k, v, 0, 0) for k, v in metrics.items()]
    entries += [Metric(names.VAL_ACCURACY, v, 0, step) for step, v in enumerate(more.get("history", []))]
    client.log_batch(run_id, metrics=entries, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, status)
    return run_id


def sweep_of(uri: str, children: list[tuple]) -> tuple[object, str, str]:
    """A sweep parent with `children`: (lr, seed, best_val[, status[, extra]])."""
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "stats", None)
    parent = client.create_run(experiment_id, tags={names.SWEEP_ROLE: "parent"}).info.run_id
    for lr, seed, best_val, *rest in children:
        status = rest[0] if rest else "FINISHED"
        child(client, experiment_id, parent, lr, seed, best_val, status=status, **(rest[1] if len(rest) > 1 else {}))
    return client, experiment_id, parent


class Refusing:
    """A client whose store answers every read with `code` (an auth or network failure, say)."""

    tracking_uri = "http://store"

    def __init__(self, code: str):
        self.code = code

    def get_run(self, run_id):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import ErrorCode

        raise MlflowException(f"run {run_id}: refused", error_code=ErrorCode.Value(self.code))


def test_only_a_missing_run_is_no_such_run():
    with pytest.raises(ConfigError, match=r"^parent=x: no such run in http://store$"):
        runs.get_run(Refusing("RESOURCE_DOES_NOT_EXIST"), "x", "parent=x")
    with pytest.raises(TrackingError, match="PERMISSION_DENIED") as error:
        runs.get_run(Refusing("PERMISSION_DENIED"), "x", "parent=x")
    assert "no such run" not in str(error.value)


# --- one definition of a sweep's children (report) ----------------------------------------------


class SmallPages:
    """A real client whose store returns at most 2 runs a page, as a server may (MLflow asks
    callers to follow the page token)."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def search_runs(self, *args, max_results=1000, **kwargs):
        return self.client.search_runs(*args, max_results=min(max_results, 2), **kwargs)


def test_the_report_reads_every_page_of_a_homework_parent(tracking_uri, tmp_path):
    from hw4.commands import report

    client, experiment_id, parent = sweep_of(tracking_uri, [])
    for seed in range(3):
        params = {"model.name": "mlp", "optimizer.name": "adam", "optimizer.lr": 1e-3, names.SEED: seed}
        run_id = client.create_run(experiment_id, run_name="part3_mlp", tags={names.PARENT_RUN: parent}).info.run_id
        for key, value in params.items():
            client.log_param(run_id, key, value)
        client.log_metric(run_id, names.TEST_ACCURACY, 0.8 + seed / 100)
        client.set_terminated(run_id)
    context = report.collect(SmallPages(client), parent, tmp_path / "work", tmp_path)
    assert context["runs"]["part3_mlp"]["repeats"]["n"] == 3  # not the first page's 2


def test_the_report_takes_the_best_epoch_from_the_runs_metrics(tracking_uri, tmp_path):
    from hw4.commands import report

    client, experiment_id, parent = sweep_of(tracking_uri, [])
    # The logged best epoch (a resumed run's, say) is not the history's maximum: the metric wins.
    run_id = child(
        client, experiment_id, parent, "1e-3", 0, 0.81, history=[0.81, 0.92, 0.85], metrics={names.BEST_EPOCH: 0}
    )
    section = report.training_section(client, rename(client, run_id), tmp_path, tmp_path)
    assert (section["best_val_epoch"], section["best_val_accuracy"], section["final_val_accuracy"]) == (1, 0.81, 0.85)
    assert section["figures"] == {} and section["summary"] is None  # absent artifacts: None, not an error
    old = child(client, experiment_id, parent, "1e-3", 1, history=[0.81, 0.92, 0.85])  # no best-epoch metrics
    section = report.training_section(client, rename(client, old), tmp_path, tmp_path)
    assert (section["best_val_epoch"], section["best_val_accuracy"]) == (2, 0.92)


def rename(client, run_id: str):
    """The run, named as the homework's MLP preset (the report lists presets by name)."""
    client.set_tag(run_id, "mlflow.runName", "part3_mlp")
    return client.get_run(run_id)


def test_the_report_lets_store_errors_through_but_not_absent_artifacts(tracking_uri, tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    from hw4.commands import report

    client, _, parent = sweep_of(tracking_uri, [])
    assert report._artifact(client, parent, "absent.txt", tmp_path) is None

    class Denied:
        def download_artifacts(self, *args):
            raise MlflowException("403 Forbidden", error_code=PERMISSION_DENIED)

    with pytest.raises(MlflowException, match="403"):
        report._artifact(Denied(), parent, "summary.txt", tmp_path)
