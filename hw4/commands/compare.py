"""`hw4-compare`: a table and figures comparing the runs of an experiment or of one sweep.

    hw4-compare                                  # configurations of the default experiment (hw4)
    hw4-compare tracking.experiment=homework     # another experiment
    hw4-compare parent=<run id>                  # the children of one sweep (its parent run)
    hw4-compare group=false                      # one row per run instead of per configuration
    hw4-compare sort=test_accuracy out=figs      # sort column, where figures go
    hw4-compare diff=<run a>,<run b>             # the config keys whose values differ

Runs that differ only in `trainer.seed` share a `config_key` and are one configuration: by
default one row each, with `n` finished seeds of `planned` (and how many failed, were killed or
pruned), whether it is `complete`, mean ± std over its finished seeds, and `tied_with_best`:
whether Welch's t-test can tell it from the best (hw4.ranking). The best is by the sweep's own
objective (its parent's `ranked_by`, as hw4-promote reads it), else by tracking.objective.
Complete configurations are listed first; a one-line verdict follows the table. Only the config keys that vary among the listed runs
get a column. The figures use the table's runs and grouping. A Hydra app, so that it reads the
same `tracking` settings (store URI, experiment) as hw4-train. The figures are also logged to the
sweep's parent run. No TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from hw4 import config, names
from hw4.errors import ConfigError

if TYPE_CHECKING:
    from mlflow import MlflowClient

VAL_CURVES = "compare_val_accuracy.png"
TEST_VS_LR = "compare_test_accuracy_vs_lr.png"
DEFAULT_SORT = "best_val_accuracy"
ASCENDING = ("wall_s", "seed", "best_epoch", "failed", "killed", "pruned")  # smaller first
HIDDEN = ("label", "p_value")  # in the configurations table for the verdict and the CSV only
LR_POINT_COLUMNS = ["line", "lr", "mean", "std", "n", "complete"]
RUN_METRICS = ["seed", "best_val_accuracy", "best_epoch", "final_val_accuracy", "test_accuracy",
               "pruned", "wall_s", "status", "run_id"]  # fmt: skip


def histories(client: MlflowClient, frame: pd.DataFrame) -> dict[str, list[float]]:
    """Each run's validation accuracy per epoch, keyed by run id (names repeat across seeds)."""
    return {
        run_id: [m.value for m in sorted(client.get_metric_history(run_id, names.VAL_ACCURACY), key=lambda m: m.step)]
        for run_id in frame["run_id"]
    }


def short(column: str) -> str:
    """`p.optimizer.lr` -> `optimizer.lr`."""
    from hw4.ranking import PARAM

    return column.removeprefix(PARAM)


def ranking_metric(parent: Any, objective: str) -> str:
    """What the table ranks by (`tied_with_best`, the verdict): a sweep's own objective, the
    `ranked_by` tag its summary wrote on the parent run (as hw4-promote reads it), else
    tracking.objective."""
    ranked_by = parent.data.tags.get(names.RANKED_BY) if parent is not None else None
    return ranked_by or objective


def metric_name(metric: str) -> str:
    """The table's name for `metric`: its own column (best_val_accuracy), or the MLflow name."""
    from hw4 import ranking

    return ranking.COLUMN_OF.get(metric, metric)


def run_table(frame: pd.DataFrame, *, metric: str = names.OBJECTIVE) -> pd.DataFrame:
    """One row per run: the config keys that vary among the runs, then the metrics (the ranking
    `metric` among them)."""
    from hw4 import ranking

    varying = [c for c in ranking.varying_params(frame) if c != ranking.PARAM + names.SEED]
    ranked = (
        [ranking.METRIC + metric] if metric_name(metric) not in RUN_METRICS and ranking.METRIC + metric in frame else []
    )
    table = frame[["run", *varying, *RUN_METRICS[:1], *ranked, *RUN_METRICS[1:]]].copy()
    table.columns = [metric if c in ranked else short(c) for c in table.columns]
    return table


def config_table(grouped: pd.DataFrame, *, metric: str = names.OBJECTIVE) -> pd.DataFrame:
    """The configurations table (hw4.ranking.group, ranked by `metric`) to print, with mean ± std
    of the aggregated metrics and of `metric` as text."""
    from hw4 import ranking

    if grouped.empty:
        return grouped
    shown = {m: m for m in ranking.AGGREGATED}
    ranked = ranking.mean_column(grouped, metric).removesuffix("_mean")
    shown.setdefault(ranked, metric_name(metric))  # m.best_val_loss as best_val_loss
    table = grouped.drop(columns=[f"{m}_{s}" for m in shown for s in ("mean", "std")])
    for column, name in shown.items():
        table[name] = [mean_std(mean, std) for mean, std in zip(grouped[f"{column}_mean"], grouped[f"{column}_std"])]
        table[f"{name}_mean"] = grouped[f"{column}_mean"]  # for sorting; dropped when printed
    last = ["seeds", "tied_with_best", *HIDDEN]  # after the metrics, as printed
    return table[[c for c in table.columns if c not in last] + last].reset_index()


def mean_std(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def format_table(table: pd.DataFrame, sort: str | None, grouped: bool) -> str:
    """The table as text, sorted by `sort` in its direction; grouped, complete configurations
    come first whatever the sort (the order hw4.ranking ranks in)."""
    from hw4 import ranking

    sort = sort or DEFAULT_SORT
    key = f"{sort}_mean" if grouped and f"{sort}_mean" in table.columns else sort
    if key not in table.columns or key in HIDDEN:
        choices = [c for c in table.columns if not c.endswith("_mean") and c not in HIDDEN]
        raise ConfigError(f"sort={sort!r} is not a column; choose one of {choices}")
    ascending = table[key].dtype == object or sort in ASCENDING or not ranking.higher_is_better(sort)
    keys, order = ([key], [ascending]) if not grouped or key == "complete" else (["complete", key], [False, ascending])
    ordered = table.sort_values(keys, ascending=order, na_position="last", kind="stable")
    shown = ordered.drop(columns=[c for c in ordered.columns if c.endswith("_mean") or c in HIDDEN])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def curve_bands(frame: pd.DataFrame, curves: dict[str, list[float]], grouped: bool) -> dict[str, tuple]:
    """label -> (mean per epoch, std per epoch or None): one line per configuration or per run.

    Grouped, as the table: a configuration's FINISHED runs (pruned ones included), each epoch
    averaged over the runs that reached it, so a pruned or early-stopped seed does not cut the
    others short; the std band where at least two runs reached the epoch. Per run: every run listed.
    """
    from hw4 import ranking

    varying = ranking.varying_params(ranking.described(frame), ignore_seed=grouped)

    def label(row: pd.Series) -> str:
        text = ", ".join(f"{short(c)}={row[c]}" for c in varying) or row["run"]
        return text if grouped else f"{text} ({row['run_id'][:6]})"

    shown = ranking.finished_runs(frame) if grouped else frame
    bands: dict[str, tuple] = {}
    for _, rows in shown.groupby("config_key" if grouped else "run_id", sort=False):
        series = [curves[r] for r in rows["run_id"] if curves.get(r)]
        if series:
            bands[label(rows.iloc[0])] = epoch_stats(series)
    return bands


def epoch_stats(series: list[list[float]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Per epoch, the mean over the series that reach it and the std (ddof=1) where at least two
    do (NaN elsewhere); None for the std when no epoch has two."""
    stacked = np.full((len(series), max(len(s) for s in series)), np.nan)
    for row, values in enumerate(series):
        stacked[row, : len(values)] = values
    reached = np.count_nonzero(~np.isnan(stacked), axis=0)
    mean = np.nanmean(stacked, axis=0)  # every epoch has at least the longest series
    if reached.max() < 2:
        return mean, None
    std = np.full(stacked.shape[1], np.nan)
    std[reached >= 2] = np.nanstd(stacked[:, reached >= 2], axis=0, ddof=1)
    return mean, std


def lr_points(frame: pd.DataFrame, metric: str = "test_accuracy", *, sweep: bool = False) -> pd.DataFrame:
    """The test-vs-lr figure's data, grouped as the table is (hw4.ranking.group: by config_key, over
    FINISHED runs): one point per configuration with its learning rate, the mean and std of
    `metric` (a column of ranking.AGGREGATED) over its seeds, `n` and `complete`; `line` joins those
    that differ only in the learning rate (named by the other config values that vary)."""
    from hw4 import ranking

    configurations = ranking.group(frame, sweep=sweep)
    if configurations.empty:
        return pd.DataFrame(columns=LR_POINT_COLUMNS)
    finished = ranking.finished_runs(frame)
    lr = finished.groupby("config_key", sort=False)["lr"].first()
    varying = [c for c in configurations.columns[: configurations.columns.get_loc("n")] if c != ranking.LR_KEY]
    lines = ranking.labels(configurations[varying]) if varying else pd.Series("", index=configurations.index)
    fallback = finished.groupby("config_key", sort=False)[["model", "optimizer"]].first()
    points = pd.DataFrame(
        {
            "line": [line if varying else "/".join(map(str, fallback.loc[key])) for key, line in lines.items()],
            "lr": lr.reindex(configurations.index),
            "mean": configurations[f"{metric}_mean"],
            "std": configurations[f"{metric}_std"],
            "n": configurations["n"],
            "complete": configurations["complete"],
        },
        index=configurations.index,
    )
    return points.dropna(subset=["lr", "mean"])


def print_diff(client: MlflowClient, run_ids: list[str]) -> None:
    from hw4 import runs

    if len(run_ids) != 2:
        raise ConfigError(f"diff needs two run ids (diff=RUN_A,RUN_B), got {len(run_ids)}")
    found = [runs.get_run(client, run_id, f"diff: run {run_id}") for run_id in run_ids]
    differences = runs.differing_params(*found)
    if not differences:
        print(f"runs {run_ids[0]} and {run_ids[1]} have the same config")
        return
    table = pd.DataFrame([(key, a, b) for key, (a, b) in differences.items()], columns=["key", run_ids[0], run_ids[1]])
    print(table.fillna("<unset>").to_string(index=False))


def main() -> None:
    # `diff=a,b` reads as a sweep to Hydra; as a list it is what the user meant.
    sys.argv = [f"diff=[{a[5:]}]" if a.startswith("diff=") and "[" not in a else a for a in sys.argv]
    config.run_app("compare", run)


def run(cfg: DictConfig) -> None:
    from hydra.utils import get_original_cwd

    from hw4 import ranking, runs, tracking

    client, experiment_id = tracking.open_experiment(cfg.tracking, get_original_cwd())
    if cfg.diff:
        print_diff(client, list(cfg.diff))
        return
    parent = runs.get_run(client, cfg.parent, f"parent={cfg.parent}") if cfg.parent else None
    if parent is not None:
        experiment_id = parent.info.experiment_id
    metric = ranking_metric(parent, cfg.tracking.objective)
    frame = runs.table(runs.training_runs(client, experiment_id, cfg.parent))
    if frame.empty:
        print(f"no training runs in {'sweep ' + cfg.parent if cfg.parent else cfg.tracking.experiment}")
        return
    sweep = bool(cfg.parent)  # a sweep's seeds may form a grid: ranking.missing_seeds
    configurations = ranking.group(frame, metric, sweep=sweep) if cfg.group else None
    table = config_table(configurations, metric=metric) if cfg.group else run_table(frame, metric=metric)
    if table.empty:
        print("no finished runs to group; group=false lists every run")
        return
    sort = cfg.sort or (metric_name(metric) if metric_name(metric) in table.columns else DEFAULT_SORT)
    print(format_table(table, sort, cfg.group))
    print(ranked_by(sort, cfg.group, metric=metric))
    if cfg.group:
        print(ranking.verdict(configurations, metric))
    write_figures(client, frame, cfg, sweep=sweep)


def ranked_by(sort: str | None, grouped: bool, *, metric: str = names.OBJECTIVE) -> str:
    from hw4 import ranking

    sort = sort or DEFAULT_SORT
    if not grouped:
        return f"ranked by {sort}"
    against = "" if sort == metric_name(metric) else f"; best and tied_with_best by {metric_name(metric)}"
    return (
        f"ranked by {sort} (mean over seeds), complete configurations first "
        f"(tied_with_best: Welch's t-test against the best, level {ranking.ALPHA}{against})"
    )


def write_figures(client: MlflowClient, frame: pd.DataFrame, cfg: DictConfig, *, sweep: bool) -> None:
    """The two figures, from the runs and grouping of the table, to `out` (and the sweep's parent)."""
    from hydra.utils import get_original_cwd

    from hw4 import plots, tracking

    out = Path(get_original_cwd()) / cfg.out / (cfg.parent or cfg.tracking.experiment)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        VAL_CURVES: plots.overlaid_curves(
            curve_bands(frame, histories(client, frame), cfg.group), "validation accuracy"
        ),
        TEST_VS_LR: plots.metric_vs_lr(lr_points(frame, "test_accuracy", sweep=sweep), metric="test_accuracy"),
    }
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=100)
        if cfg.parent:
            tracking.RunLogger(client, cfg.parent).log_figure(figure, name)
    print(f"figures: {', '.join(str(out / name) for name in figures)}")
