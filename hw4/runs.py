"""Training runs read back from the tracking store: a sweep's children or an experiment's runs,
paged, and one run by id; then turned into the plain records hw4.ranking works on (`table`: one
row per run, its config as `p.<key>` columns, its final metrics as `m.<name>`).
No TensorFlow; MLflow only inside the functions that talk to the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import pandas as pd

from hw4 import names
from hw4.errors import ConfigError, TrackingError
from hw4.ranking import METRIC, PARAM, RUN_COLUMNS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

PAGE = 1000  # runs per search request (the store's own upper bound is higher)


def search_all(
    client: MlflowClient, experiment_ids: list[str], filter_string: str = "", order_by: Optional[list[str]] = None
) -> list[Run]:
    """Every run matching `filter_string`, page by page (no silent cap at one page), each
    page read through the store's retry policy (one layer: the retrying client's)."""
    from hw4 import tracking

    client = tracking.retrying(client)
    found: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, order_by=order_by, max_results=PAGE, page_token=token
        )
        found.extend(page)
        token = page.token
        if not token:
            return found


def sweep_runs(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: Optional[str] = None,
    *,
    where: str = "",
    include_superseded: bool = False,
    order_by: Optional[list[str]] = None,
) -> list:
    """The one way to read a sweep's children (or, without a parent, an experiment's runs):
    paged, with runs replaced by a later attempt left out unless asked for. `where` adds an
    MLflow filter clause (say on a job key or a status)."""
    clauses = [names.children_filter(parent_run_id)] if parent_run_id else []
    clauses += [where] if where else []
    found = search_all(client, [experiment_id], " and ".join(clauses), order_by)
    if include_superseded:
        return found
    return [run for run in found if names.SUPERSEDED_BY not in run.data.tags]


def training_runs(client: MlflowClient, experiment_id: str, parent_run_id: Optional[str] = None) -> list:
    """The training runs of an experiment, or the children of one sweep, without sweep parents,
    other commands' runs (hw4-scratch) and runs replaced by a later attempt."""
    return [
        run
        for run in sweep_runs(client, experiment_id, parent_run_id)
        if run.data.tags.get(names.SWEEP_ROLE) != names.PARENT_ROLE
        and ("model.name" in run.data.params or names.JOB_NUM in run.data.tags)
    ]


def latest_run_id(client: MlflowClient, experiment_id: str, filter_string: str, missing: str) -> str:
    """The id of the newest run matching `filter_string`; ConfigError(`missing`) if none does."""
    found = client.search_runs(
        [experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not found:
        raise ConfigError(missing)
    return found[0].info.run_id


def get_run(client: MlflowClient, run_id: str, what: str) -> Run:
    """The run `run_id`. ConfigError("`what`: no such run ...") only when the store says it does
    not hold it; any other store error is a TrackingError that names it (an auth or network
    error is not a missing run)."""
    from mlflow.exceptions import MlflowException

    from hw4 import tracking

    try:
        return tracking.retrying(client).get_run(run_id)
    except MlflowException as exc:
        store = tracking.redact(client.tracking_uri)
        if tracking.does_not_exist(exc):
            raise ConfigError(f"{what}: no such run in {store}") from None
        raise TrackingError(
            f"{what}: cannot read the run from {store}: {exc.error_code}: {tracking.first_line(exc)}"
        ) from exc


def _number(value: Any, cast: type = float) -> Any:
    try:
        return cast(value)
    except (TypeError, ValueError):
        return float("nan")


def table(runs: list) -> pd.DataFrame:
    """One row per run, with its config as `p.<key>` columns."""
    rows = []
    for run in runs:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        end = run.info.end_time or run.info.start_time
        rows.append(
            {
                "run": run.info.run_name,
                "model": params.get("model.name"),
                "optimizer": params.get("optimizer.name"),
                "lr": _number(params.get("optimizer.lr")),
                "seed": _number(params.get(names.SEED), int),
                "epochs": _number(params.get("trainer.epochs"), int),
                "best_val_accuracy": metrics.get(names.BEST_VAL_ACCURACY, float("nan")),
                "best_epoch": metrics.get(names.BEST_EPOCH, float("nan")),
                "final_val_accuracy": metrics.get(names.VAL_ACCURACY, float("nan")),
                "test_accuracy": metrics.get(names.TEST_ACCURACY, float("nan")),
                "pruned": tags.get(names.PRUNED) == "true",
                "wall_s": (end - run.info.start_time) / 1000.0,
                "started": run.info.start_time,
                "status": run.info.status,
                # Runs from before config keys: each its own configuration.
                "config_key": tags.get(names.CONFIG_KEY, run.info.run_id),
                "run_id": run.info.run_id,
                **{PARAM + key: value for key, value in params.items()},
                **{METRIC + key: value for key, value in metrics.items()},
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS if not rows else None)


def differing_params(first: Any, second: Any) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """Config keys whose values differ between two runs: key -> (first's value, second's)."""
    a, b = first.data.params, second.data.params
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}
