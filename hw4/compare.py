"""`hw4-compare`: a table and figures comparing the runs of an experiment or of one sweep.

    hw4-compare                                  # configurations of the default experiment (hw4)
    hw4-compare tracking.experiment=homework     # another experiment
    hw4-compare parent=<run id>                  # the children of one sweep (its parent run)
    hw4-compare group=false                      # one row per run instead of per configuration
    hw4-compare sort=test_accuracy out=figs      # sort column, where figures go
    hw4-compare diff=<run a>,<run b>             # the config keys whose values differ

Runs that differ only in `trainer.seed` share a `config_key` and are one configuration: by
default one row each, with `n` and mean ± std over its seeds. Only the config keys that vary
among the listed runs get a column. A Hydra app, so that it reads the same `tracking` settings
(store URI, experiment) as hw4-train. The figures are also logged to the sweep's parent run.
No TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from hw4 import config, names
from hw4.errors import ConfigError

VAL_CURVES = "compare_val_accuracy.png"
TEST_VS_LR = "compare_test_accuracy_vs_lr.png"
DEFAULT_SORT = "best_val_accuracy"
RUN_METRICS = ["seed", "best_val_accuracy", "best_epoch", "final_val_accuracy", "test_accuracy",
               "pruned", "wall_s", "status", "run_id"]  # fmt: skip


def histories(client: Any, frame: pd.DataFrame) -> dict[str, list[float]]:
    """Each run's validation accuracy per epoch, keyed by run id (names repeat across seeds)."""
    return {
        run_id: [m.value for m in sorted(client.get_metric_history(run_id, names.VAL_ACCURACY), key=lambda m: m.step)]
        for run_id in frame["run_id"]
    }


def short(column: str) -> str:
    """`p.optimizer.lr` -> `optimizer.lr`."""
    from hw4.runs import PARAM

    return column[len(PARAM) :] if column.startswith(PARAM) else column


def run_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the config keys that vary among the runs, then the metrics."""
    from hw4 import runs

    varying = [c for c in runs.varying_params(frame) if c != runs.PARAM + names.SEED]
    table = frame[["run", *varying, *RUN_METRICS]].copy()
    table.columns = [short(c) for c in table.columns]
    return table


def config_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, with mean ± std of the aggregated metrics."""
    from hw4 import runs

    grouped = runs.group(frame)
    if grouped.empty:
        return grouped
    table = grouped.drop(columns=[f"{m}_{s}" for m in runs.AGGREGATED for s in ("mean", "std")])
    for metric in runs.AGGREGATED:
        table[metric] = [
            mean_std(mean, std) for mean, std in zip(grouped[f"{metric}_mean"], grouped[f"{metric}_std"])
        ]
        table[f"{metric}_mean"] = grouped[f"{metric}_mean"]  # for sorting; dropped when printed
    return table.reset_index()


def mean_std(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def format_table(table: pd.DataFrame, sort: str | None, grouped: bool) -> str:
    sort = sort or DEFAULT_SORT
    key = f"{sort}_mean" if grouped and f"{sort}_mean" in table.columns else sort
    if key not in table.columns:
        choices = [c for c in table.columns if not c.endswith("_mean")]
        raise ConfigError(f"sort={sort!r} is not a column; choose one of {choices}")
    ascending = table[key].dtype == object or sort in ("wall_s", "seed", "best_epoch")
    ordered = table.sort_values(key, ascending=ascending, na_position="last")
    shown = ordered.drop(columns=[c for c in ordered.columns if c.endswith("_mean")])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def curve_bands(frame: pd.DataFrame, curves: dict[str, list[float]], grouped: bool) -> dict[str, tuple]:
    """label -> (mean per epoch, std per epoch or None): one line per configuration or per run."""
    from hw4 import runs

    varying = runs.varying_params(frame, ignore_seed=grouped)

    def label(row: pd.Series) -> str:
        text = ", ".join(f"{short(c)}={row[c]}" for c in varying) or row["run"]
        return text if grouped else f"{text} ({row['run_id'][:6]})"

    bands: dict[str, tuple] = {}
    key = "config_key" if grouped else "run_id"
    for _, rows in frame.groupby(key, sort=False):
        series = [curves[r] for r in rows["run_id"] if curves.get(r)]
        if not series:
            continue
        length = min(len(s) for s in series)  # pruned or early-stopped runs end sooner
        stacked = np.array([s[:length] for s in series])
        std = stacked.std(axis=0, ddof=1) if len(series) > 1 else None
        bands[label(rows.iloc[0])] = (stacked.mean(axis=0), std)
    return bands


def print_diff(client: Any, run_ids: list[str]) -> None:
    from hw4 import runs

    if len(run_ids) != 2:
        raise ConfigError(f"diff needs two run ids (diff=RUN_A,RUN_B), got {len(run_ids)}")
    found = []
    for run_id in run_ids:
        try:
            found.append(client.get_run(run_id))
        except Exception:
            raise ConfigError(f"diff: no run {run_id} in {client.tracking_uri}") from None
    differences = runs.differing_params(*found)
    if not differences:
        print(f"runs {run_ids[0]} and {run_ids[1]} have the same config")
        return
    table = pd.DataFrame(
        [(key, a, b) for key, (a, b) in differences.items()], columns=["key", run_ids[0], run_ids[1]]
    )
    print(table.fillna("<unset>").to_string(index=False))


def main() -> None:
    # `diff=a,b` reads as a sweep to Hydra; as a list it is what the user meant.
    sys.argv = [f"diff=[{a[5:]}]" if a.startswith("diff=") and "[" not in a else a for a in sys.argv]
    config.run_app("compare", run)


def run(cfg: DictConfig) -> None:
    from hydra.utils import get_original_cwd

    from hw4 import plots, runs, tracking

    client, experiment_id = tracking.open_experiment(cfg.tracking, get_original_cwd())
    if cfg.diff:
        print_diff(client, list(cfg.diff))
        return
    if cfg.parent:
        try:
            experiment_id = client.get_run(cfg.parent).info.experiment_id
        except Exception:
            raise ConfigError(f"parent={cfg.parent}: no such run in {client.tracking_uri}") from None
    frame = runs.table(runs.training_runs(client, experiment_id, cfg.parent))
    if frame.empty:
        print(f"no training runs in {'sweep ' + cfg.parent if cfg.parent else cfg.tracking.experiment}")
        return
    table = config_table(frame) if cfg.group else run_table(frame)
    if table.empty:
        print("no finished runs to group; group=false lists every run")
        return
    print(format_table(table, cfg.sort, cfg.group))
    print(f"ranked by {cfg.sort or DEFAULT_SORT}" + (" (mean over seeds)" if cfg.group else ""))

    out = Path(get_original_cwd()) / cfg.out / (cfg.parent or cfg.tracking.experiment)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        VAL_CURVES: plots.overlaid_curves(curve_bands(frame, histories(client, frame), cfg.group), "validation accuracy"),
        TEST_VS_LR: plots.metric_vs_lr(frame[frame["status"] == "FINISHED"], metric="test_accuracy"),
    }
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=100)
        if cfg.parent:
            tracking.RunLogger(client, cfg.parent).log_figure(figure, name)
    print(f"figures: {', '.join(str(out / name) for name in figures)}")
