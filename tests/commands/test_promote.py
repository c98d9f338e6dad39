"""hw4-promote: a sweep's best model into the Model Registry, loadable by alias and servable."""

from __future__ import annotations

import console
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from hw4 import api, names, tracking
from hw4.commands import promote
from hw4.errors import ConfigError, TrackingError

# One worker runs the module: its sweep (the `promoted` fixture) is trained once.
pytestmark = pytest.mark.xdist_group("promote")


@pytest.fixture(scope="module")
def promoted(tiny_data_dir, _migrated_store, tmp_path_factory):
    """A 2 lr x 2 seed sweep with logged models, then the hw4-promote command with its defaults."""
    import shutil

    workdir = tmp_path_factory.mktemp("promote")
    (workdir / "mlruns").mkdir()
    shutil.copy(_migrated_store, workdir / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{workdir}/mlruns/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:  # the sweep in this process, as `hw4-train -m` runs it
        patch.chdir(workdir)
        api.sweep(["optimizer.lr=1e-4,1e-2", "trainer.seed=0,1", "trainer.epochs=2", "trainer.verbose=0",
                   f"data.dir={tiny_data_dir}", f"tracking.uri={uri}"])  # fmt: skip
    result = console.run(promote.main, "hw4-promote", f"tracking.uri={uri}", cwd=workdir)  # in this process
    assert result.returncode == 0, result.stderr[-3000:]
    return uri, result.stdout


@pytest.mark.slow
def test_the_best_configuration_by_mean_then_its_best_seed_is_registered(promoted):
    uri, stdout = promoted
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("fashion-mnist", "champion")
    assert f"version {version.version}" in stdout
    experiment = client.get_experiment_by_name("hw4")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'parent'")
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    metric = "best_val_categorical_accuracy"
    by_lr: dict[str, list] = {}
    for child in sorted(children, key=lambda c: c.info.start_time):
        by_lr.setdefault(child.data.params["optimizer.lr"], []).append(child)
    means = {lr: np.mean([r.data.metrics[metric] for r in runs]) for lr, runs in by_lr.items()}
    best_lr = max(means, key=means.get)
    best = max(by_lr[best_lr], key=lambda r: r.data.metrics[metric])
    assert version.run_id == best.info.run_id
    assert version.tags["sweep"] == parent.info.run_id and version.tags["run"] == best.info.run_id
    assert version.tags["metric"] == metric
    assert float(version.tags["value"]) == pytest.approx(best.data.metrics[metric])


@pytest.mark.slow
def test_the_sweep_parent_groups_the_repeats_by_configuration(promoted, tmp_path):
    """The same 2 lr x 2 seed sweep: one config_key per learning rate, aggregates on the parent."""
    import pandas as pd

    uri, _ = promoted
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'parent'")
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    keys: dict[str, set] = {}
    for child in children:
        keys.setdefault(child.data.params["optimizer.lr"], set()).add(child.data.tags["config_key"])
    assert sorted(len(k) for k in keys.values()) == [1, 1] and keys["0.0001"] != keys["0.01"]
    table = client.download_artifacts(parent.info.run_id, "sweep_configurations.csv", str(tmp_path))
    frame = pd.read_csv(table, index_col=0)
    assert sorted(frame["n"]) == [2, 2]
    for lr, rows in frame.groupby("optimizer.lr"):
        values = [
            c.data.metrics["test_categorical_accuracy"] for c in children if float(c.data.params["optimizer.lr"]) == lr
        ]
        assert rows["test_accuracy_mean"].iloc[0] == pytest.approx(np.mean(values))
        assert rows["test_accuracy_std"].iloc[0] == pytest.approx(np.std(values, ddof=1), nan_ok=True)
    assert parent.data.metrics["best_config_runs"] == 2


# --- fast: runs and logged models written straight into a store (no training) ------------------


def sweep_with_models(uri: str, children: list[tuple]) -> tuple[MlflowClient, str]:
    """A sweep parent whose children (lr, seed, best_val, status[, best_val_loss]) each logged a model."""
    from mlflow.entities import Metric, Param

    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "promote", None)
    parent = client.create_run(experiment_id, tags={names.SWEEP_ROLE: "parent"}).info.run_id
    for lr, seed, best_val, status, *loss in children:
        params = {"model.name": "mlp", "optimizer.lr": lr, names.SEED: seed}
        tags = {names.CONFIG_KEY: names.config_key(params), names.PARENT_RUN: parent}
        run_id = client.create_run(experiment_id, run_name=f"mlp-lr{lr}", tags=tags).info.run_id
        metrics = {names.BEST_VAL_ACCURACY: best_val, names.TEST_ACCURACY: best_val - 0.01} if best_val else {}
        metrics.update({names.BEST_VAL_LOSS: loss[0]} if loss else {})
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                         params=[Param(k, str(v)) for k, v in params.items()])  # fmt: skip
        if status == "FINISHED":
            client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
        client.set_terminated(run_id, status)
    return client, parent


def seed_of(client: MlflowClient, version) -> tuple[str, str]:
    params = client.get_run(version.run_id).data.params
    return params["optimizer.lr"], params[names.SEED]


DIVERGED = [  # lr 1e-2 diverged on 2 of 3 seeds; its survivor is the best single run
    ("1e-3", 0, 0.85, "FINISHED"), ("1e-3", 1, 0.86, "FINISHED"), ("1e-3", 2, 0.87, "FINISHED"),
    ("1e-2", 0, 0.95, "FINISHED"), ("1e-2", 1, None, "FAILED"), ("1e-2", 2, None, "FAILED"),
]  # fmt: skip


def test_a_configuration_with_failed_seeds_is_not_promoted(tracking_uri):
    client, parent = sweep_with_models(tracking_uri, DIVERGED)
    version = promote.promote(client, parent, names.OBJECTIVE, "fm", "champion")
    assert seed_of(client, version) == ("1e-3", "2")
    assert "lr 1e-2 has the best mean but is incomplete (1 of 3 seeds finished, 2 failed)" in version.tags["verdict"]


def test_an_incomplete_winner_is_refused_unless_allowed(tracking_uri, tmp_path):
    client, parent = sweep_with_models(tracking_uri, DIVERGED[3:])  # only the diverging lr
    with pytest.raises(
        ConfigError, match=r"lr 1e-2, is incomplete \(1 of 3 seeds finished, 2 failed\).*allow_incomplete=true"
    ):
        promote.promote(client, parent, names.OBJECTIVE, "fm", "champion")
    assert not client.search_registered_models()  # nothing registered
    version = promote.promote(client, parent, names.OBJECTIVE, "fm", "champion", allow_incomplete=True)
    assert seed_of(client, version) == ("1e-2", "0")
    result = console.run(
        promote.main, "hw4-promote", f"tracking.uri={tracking_uri}", "tracking.experiment=promote", f"parent={parent}",
        "name=other", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "is incomplete" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr


def test_best_val_loss_promotes_the_lowest_loss(tracking_uri):
    client, parent = sweep_with_models(tracking_uri, [
        ("1e-3", 0, 0.90, "FINISHED", 0.30), ("1e-3", 1, 0.91, "FINISHED", 0.25),
        ("1e-2", 0, 0.80, "FINISHED", 0.70), ("1e-2", 1, 0.81, "FINISHED", 0.90),
    ])  # fmt: skip
    version = promote.promote(client, parent, names.BEST_VAL_LOSS, "fm", "champion")
    assert seed_of(client, version) == ("1e-3", "1") and version.tags["value"] == "0.250000"


def test_without_a_metric_the_sweeps_own_objective_decides(tracking_uri):
    """A sweep ranked by tracking.objective=best_val_loss is promoted by it, not by accuracy."""
    client, parent = sweep_with_models(tracking_uri, [
        ("1e-3", 0, 0.90, "FINISHED", 0.30), ("1e-3", 1, 0.91, "FINISHED", 0.25),
        ("1e-2", 0, 0.95, "FINISHED", 0.70), ("1e-2", 1, 0.96, "FINISHED", 0.90),
    ])  # fmt: skip
    by_accuracy = promote.promote(client, parent, None, "fm", "champion")
    assert seed_of(client, by_accuracy) == ("1e-2", "1")  # no ranked_by tag: the default objective
    client.set_tag(parent, names.RANKED_BY, names.BEST_VAL_LOSS)
    by_loss = promote.promote(client, parent, None, "fm", "champion")
    assert seed_of(client, by_loss) == ("1e-3", "1") and by_loss.tags["metric"] == names.BEST_VAL_LOSS


def test_an_unknown_metric_is_one_clear_error(tracking_uri):
    client, parent = sweep_with_models(tracking_uri, DIVERGED[:3])
    with pytest.raises(
        ConfigError, match=r"^metric='best_val_acc': no finished run logged it; choose one of \["
    ) as error:
        promote.promote(client, parent, "best_val_acc", "fm", "champion")
    assert names.BEST_VAL_ACCURACY in str(error.value) and names.TEST_ACCURACY in str(error.value)


def test_store_errors_are_not_a_missing_run_or_model(tracking_uri):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    client, parent = sweep_with_models(tracking_uri, DIVERGED[:3])
    with pytest.raises(ConfigError, match="parent=0+: no such run"):
        promote.promote(client, "0" * 32, names.OBJECTIVE, "fm", "champion")

    class Denied:  # the registry refuses: that is not "no such model, create it"
        def __getattr__(self, name):
            return getattr(client, name)

        def get_registered_model(self, name):
            raise MlflowException("403 Forbidden", error_code=PERMISSION_DENIED)

    with pytest.raises(MlflowException, match="403"):
        promote.promote(Denied(), parent, names.OBJECTIVE, "fm", "champion")
    assert not client.search_registered_models()

    class Unreachable(Denied):
        def get_run(self, run_id):
            raise MlflowException("401 Unauthorized", error_code=PERMISSION_DENIED)

    with pytest.raises(TrackingError, match="PERMISSION_DENIED: 401 Unauthorized"):
        promote.promote(Unreachable(), parent, names.OBJECTIVE, "fm", "champion")
