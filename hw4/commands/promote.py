"""`hw4-promote`: register the best model of a sweep in the MLflow Model Registry.

    hw4-promote                                   # the latest sweep of the experiment
    hw4-promote parent=<sweep parent run id> metric=test_categorical_accuracy name=fashion-mnist

Best means the configuration with the best mean `metric` over its seeds, then its best seed
(hw4.ranking.best_run, as the sweep summary ranks): complete configurations (every planned seed
finished, none pruned) before incomplete ones, losses ascending, anything else descending. An
incomplete winner is refused unless `allow_incomplete=true`. Its logged model becomes a new
version of `name`, with the alias `champion` and tags naming the sweep, the run, the metric, its
value and the ranking's verdict (is the winner distinguishable from the rest):

    mlflow.pyfunc.load_model("models:/fashion-mnist@champion")
    mlflow models serve -m models:/fashion-mnist@champion --env-manager local -h 127.0.0.1

No TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from omegaconf import DictConfig

from hw4 import config, names
from hw4.errors import ConfigError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel, Run
    from mlflow.entities.model_registry import RegisteredModel

VERDICT_TAG = "verdict"  # on the model version: is the winner distinguishable from the rest


def latest_sweep(client: MlflowClient, experiment_id: str) -> str:
    from hw4 import runs

    return runs.latest_run_id(
        client, experiment_id, f"tags.{names.SWEEP_ROLE} = 'parent'",
        "no sweep in this experiment: run hw4-train -m ... first, or pass parent=",
    )  # fmt: skip


def logged_model(client: MlflowClient, experiment_id: str, run_id: str) -> LoggedModel:
    models = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if not models:
        raise ConfigError(f"run {run_id} logged no model (was tracking.log_model=false?)")
    return models[0]


class Winner(NamedTuple):
    run: Any  # its row of hw4.runs.table
    column: str  # the table column holding the metric
    verdict: str  # hw4.ranking.verdict of the ranking


def winner(client: MlflowClient, parent: Run, metric: str, *, allow_incomplete: bool = False) -> Winner:
    """The best child of the sweep `parent` by `metric` (hw4.ranking.best_run). ConfigError for
    an unknown metric (naming those available) or an incomplete winner."""
    from hw4 import ranking, runs

    sweep = parent.info.run_id
    frame = runs.table(runs.training_runs(client, parent.info.experiment_id, sweep))
    finished = ranking.finished_runs(frame)
    if finished.empty:
        raise ConfigError(f"sweep {sweep} has no finished child to promote")
    column = ranking.ranking_column(finished, metric)  # unknown: a ConfigError naming the known ones
    configurations = ranking.group(frame, metric, sweep=True)
    best = ranking.best_run(frame, metric, sweep=True, configurations=configurations)
    if best is None:
        raise ConfigError(f"sweep {sweep} has no finished child with the metric {metric!r}")
    row = configurations.loc[best["config_key"]]
    if not row["complete"] and not allow_incomplete:
        raise ConfigError(
            f"sweep {sweep}: the best configuration by {metric}, {row['label']}, is incomplete "
            f"({ranking.describe(row)}); continue the sweep to rerun its seeds, or pass allow_incomplete=true"
        )
    return Winner(best, column, ranking.verdict(configurations, metric))


def registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    """The registered model `name`, created when the registry does not hold it yet."""
    from mlflow.exceptions import MlflowException

    from hw4 import tracking

    try:
        return tracking.retrying(client).get_registered_model(name)  # retried once, by the client
    except MlflowException as exc:
        if not tracking.does_not_exist(exc):
            raise  # an auth or network error is not a missing model
    return client.create_registered_model(name, description="Fashion-MNIST classifiers promoted by hw4-promote")


def promote(
    client: MlflowClient,
    parent_run_id: str,
    metric: Optional[str],
    name: str,
    alias: str,
    *,
    allow_incomplete: bool = False,
) -> Any:
    """Register the sweep's best child's model as a new version of `name` under `alias`; by
    `metric`, or (None) by what the sweep ranked by (tracking.objective)."""
    from hw4 import runs

    parent = runs.get_run(client, parent_run_id, f"parent={parent_run_id}")
    metric = metric or parent.data.tags.get(names.RANKED_BY) or names.OBJECTIVE
    best, column, verdict = winner(client, parent, metric, allow_incomplete=allow_incomplete)
    model = logged_model(client, parent.info.experiment_id, best["run_id"])
    registered_model(client, name)
    tags = {
        "sweep": parent_run_id,
        "run": best["run_id"],
        "metric": metric,
        "value": f"{best[column]:.6f}",
        names.CONFIG_KEY: best["config_key"],
        names.TEST_ACCURACY: f"{best['test_accuracy']:.6f}",
        VERDICT_TAG: verdict,
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
    version = promote(client, parent, cfg.metric, cfg.name, cfg.alias, allow_incomplete=cfg.allow_incomplete)
    tags = version.tags
    print(
        f"registered {cfg.name} version {version.version} (alias {cfg.alias}): run {tags['run']} "
        f"of sweep {parent}, {tags['metric']} {tags['value']}, test accuracy {tags[names.TEST_ACCURACY]}"
    )
    print(f"ranking: {tags[VERDICT_TAG]}")
    print(f"load it with mlflow.pyfunc.load_model('models:/{cfg.name}@{cfg.alias}')")
