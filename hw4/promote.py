"""`hw4-promote`: register the best model of a sweep in the MLflow Model Registry.

    hw4-promote                                   # the latest sweep of the experiment
    hw4-promote parent=<sweep parent run id> metric=test_categorical_accuracy name=fashion-mnist

Best means the configuration with the best mean `metric` over its seeds, then its best seed
(hw4.runs.best_run, as the sweep summary ranks). Its logged model becomes a new version of
`name`, with the alias `champion` and tags naming the sweep, the run, the metric and its value:

    mlflow.pyfunc.load_model("models:/fashion-mnist@champion")
    mlflow models serve -m models:/fashion-mnist@champion --env-manager local -h 127.0.0.1

No TensorFlow.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from hw4 import config, names
from hw4.errors import ConfigError


def latest_sweep(client: Any, experiment_id: str) -> str:
    from hw4 import runs

    return runs.latest_run_id(
        client, experiment_id, f"tags.{names.SWEEP_ROLE} = 'parent'",
        "no sweep in this experiment: run hw4-train -m ... first, or pass parent=",
    )  # fmt: skip


def logged_model(client: Any, experiment_id: str, run_id: str) -> Any:
    models = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if not models:
        raise ConfigError(f"run {run_id} logged no model (was tracking.log_model=false?)")
    return models[0]


def promote(client: Any, parent_run_id: str, metric: str, name: str, alias: str) -> Any:
    """Register the sweep's best child's model as a new version of `name` under `alias`."""
    from hw4 import runs

    try:
        parent = client.get_run(parent_run_id)
    except Exception:
        raise ConfigError(f"parent={parent_run_id}: no such run in {client.tracking_uri}") from None
    experiment_id = parent.info.experiment_id
    frame = runs.table(runs.training_runs(client, experiment_id, parent_run_id))
    best = runs.best_run(frame, metric)
    if best is None:
        raise ConfigError(f"sweep {parent_run_id} has no finished child with the metric {metric!r}")
    model = logged_model(client, experiment_id, best["run_id"])
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description="Fashion-MNIST classifiers promoted by hw4-promote")
    tags = {
        "sweep": parent_run_id,
        "run": best["run_id"],
        "metric": metric,
        "value": f"{best[runs.METRIC + metric]:.6f}",
        names.CONFIG_KEY: best["config_key"],
        names.TEST_ACCURACY: f"{best['test_accuracy']:.6f}",
    }
    version = client.create_model_version(
        name, source=model.artifact_location, run_id=best["run_id"], tags=tags, model_id=model.model_id
    )
    client.set_registered_model_alias(name, alias, version.version)
    return version


def main() -> None:
    config.run_app("promote", run)


def run(cfg: DictConfig) -> None:
    from hydra.utils import get_original_cwd

    from hw4 import tracking

    client, experiment_id = tracking.open_experiment(cfg.tracking, get_original_cwd())
    parent = cfg.parent or latest_sweep(client, experiment_id)
    version = promote(client, parent, cfg.metric, cfg.name, cfg.alias)
    tags = version.tags
    print(
        f"registered {cfg.name} version {version.version} (alias {cfg.alias}): run {tags['run']} "
        f"of sweep {parent}, {cfg.metric} {tags['value']}, test accuracy {tags[names.TEST_ACCURACY]}"
    )
    print(f"load it with mlflow.pyfunc.load_model('models:/{cfg.name}@{cfg.alias}')")
