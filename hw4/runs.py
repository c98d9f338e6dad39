"""Training runs read back from the tracking store, as tables: one row per run, or one row per
configuration with mean ± std over its repeats (runs sharing a `config_key` differ only in seed).

Used by hw4-compare, the sweep summary and hw4-promote, so they rank runs the same way.
No TensorFlow.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from hw4 import names

# Per-run columns; `p.<key>` columns hold the run's flattened config (its MLflow params), and
# `m.<name>` its final metrics.
RUN_COLUMNS = [
    "run", "model", "optimizer", "lr", "seed", "epochs", "best_val_accuracy", "best_epoch",
    "final_val_accuracy", "test_accuracy", "pruned", "wall_s", "started", "status", "config_key", "run_id",
]  # fmt: skip
# Summarised over a configuration's runs as mean and std.
AGGREGATED = ("test_accuracy", "best_val_accuracy")
PARAM, METRIC = "p.", "m."


def training_runs(client: Any, experiment_id: str, parent_run_id: Optional[str] = None) -> list:
    """The training runs of an experiment, or the children of one sweep, without sweep parents,
    other commands' runs (hw4-scratch) and runs replaced by a later attempt."""
    filter_string = names.children_filter(parent_run_id) if parent_run_id else ""
    found = client.search_runs([experiment_id], filter_string=filter_string, max_results=10_000)
    return [
        run
        for run in found
        if run.data.tags.get(names.SWEEP_ROLE) != "parent"
        and ("model.name" in run.data.params or names.JOB_NUM in run.data.tags)
        and names.SUPERSEDED_BY not in run.data.tags
    ]


def latest_run_id(client: Any, experiment_id: str, filter_string: str, missing: str) -> str:
    """The id of the newest run matching `filter_string`; ConfigError(`missing`) if none does."""
    from hw4.errors import ConfigError

    found = client.search_runs(
        [experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not found:
        raise ConfigError(missing)
    return found[0].info.run_id


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


def varying_params(frame: pd.DataFrame, ignore_seed: bool = False) -> list[str]:
    """The config columns whose values differ among the rows (bookkeeping keys left out)."""
    columns = []
    for column in frame.columns:
        if not column.startswith(PARAM):
            continue
        key = column[len(PARAM) :]
        if names.is_bookkeeping(key) or (ignore_seed and key == names.SEED):
            continue
        if frame[column].fillna("<unset>").nunique() > 1:
            columns.append(column)
    return columns


def group(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (indexed by config_key): n, mean and std of AGGREGATED over
    its finished runs, and the config values that vary between configurations."""
    if frame.empty:
        return pd.DataFrame()
    finished = frame[frame["status"] == "FINISHED"]
    if finished.empty:
        return pd.DataFrame()
    varying = varying_params(finished, ignore_seed=True)
    grouped = finished.groupby("config_key", sort=False)
    result = grouped[varying].first() if varying else pd.DataFrame(index=grouped.size().index)
    result.columns = [c[len(PARAM) :] for c in result.columns]
    result["n"] = grouped.size()
    for metric in AGGREGATED:
        result[f"{metric}_mean"] = grouped[metric].mean()
        result[f"{metric}_std"] = grouped[metric].std(ddof=1)  # NaN for a single run
    result["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(v) for v in sorted(s)))
    return result


def best_run(frame: pd.DataFrame, metric: str = names.OBJECTIVE) -> Optional[pd.Series]:
    """The best configuration by its mean `metric` over seeds, then its best seed; None when no
    finished run has the metric. `metric` is a MLflow metric name or a table column."""
    column = {names.BEST_VAL_ACCURACY: "best_val_accuracy", names.TEST_ACCURACY: "test_accuracy",
              names.VAL_ACCURACY: "final_val_accuracy"}.get(metric, metric)  # fmt: skip
    if frame.empty or column not in frame.columns:
        return None
    finished = frame[(frame["status"] == "FINISHED") & frame[column].notna()].sort_values("started")
    if finished.empty:
        return None
    means = finished.groupby("config_key", sort=False)[column].mean()
    best_config = means.idxmax()
    candidates = finished[finished["config_key"] == best_config]
    return candidates.loc[candidates[column].idxmax()]


def differing_params(first: Any, second: Any) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """Config keys whose values differ between two runs: key -> (first's value, second's)."""
    a, b = first.data.params, second.data.params
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}
