"""`hw4-compare`: a table and figures comparing the runs of an experiment or of one sweep.

    hw4-compare                                  # runs of the default experiment (hw4)
    hw4-compare tracking.experiment=homework     # another experiment
    hw4-compare parent=<run id>                # the children of one sweep (its parent run)
    hw4-compare sort=best_val_accuracy out=figs  # sort column, where figures go

A Hydra app, so that it reads the same `tracking` settings (store URI, experiment) as hw4-train.
The figures are also logged to the sweep's parent run. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig

from hw4 import config
from hw4.errors import ConfigError
from hw4.sweep import JOB_TAG

COLUMNS = [
    "run", "model", "optimizer", "lr", "epochs", "best_val_accuracy", "final_val_accuracy",
    "test_accuracy", "wall_s", "status", "run_id",
]  # fmt: skip
VAL_METRIC = "val_categorical_accuracy"
VAL_CURVES = "compare_val_accuracy.png"
TEST_VS_LR = "compare_test_accuracy_vs_lr.png"


def collect(client: Any, experiment_id: str, parent_run_id: str | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per training run, and each run's validation-accuracy history."""
    # Sweep parents are dropped below: a `tags.sweep != ...` filter would also drop untagged runs.
    filter_string = f"tags.mlflow.parentRunId = '{parent_run_id}'" if parent_run_id else ""
    runs = client.search_runs([experiment_id], filter_string=filter_string, max_results=10_000)
    rows, histories = [], {}
    for run in runs:
        tags = run.data.tags
        if tags.get("sweep") == "parent" or not ("model.name" in run.data.params or JOB_TAG in tags):
            continue  # not a training run: a sweep's parent, or another command's (hw4-scratch)
        history = [m.value for m in sorted(
            client.get_metric_history(run.info.run_id, VAL_METRIC), key=lambda m: m.step
        )]  # fmt: skip
        histories[run.info.run_name] = history
        params, metrics = run.data.params, run.data.metrics
        end = run.info.end_time or run.info.start_time
        rows.append(
            {
                "run": run.info.run_name,
                "model": params.get("model.name"),
                "optimizer": params.get("optimizer.name"),
                "lr": float(params.get("optimizer.lr", "nan")),
                "epochs": int(params.get("trainer.epochs", 0)),
                "best_val_accuracy": max(history) if history else float("nan"),
                "final_val_accuracy": history[-1] if history else float("nan"),
                "test_accuracy": metrics.get("test_categorical_accuracy", float("nan")),
                "wall_s": (end - run.info.start_time) / 1000.0,
                "status": run.info.status,
                "run_id": run.info.run_id,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS), histories


def format_table(frame: pd.DataFrame, sort: str) -> str:
    if sort not in frame.columns:
        raise ConfigError(f"sort={sort!r} is not a column; choose one of {COLUMNS}")
    ascending = sort in ("run", "model", "optimizer", "status", "run_id", "wall_s")
    table = frame.sort_values(sort, ascending=ascending, na_position="last")
    return table.to_string(
        index=False,
        float_format=lambda v: f"{v:.4g}",
        formatters={"wall_s": "{:.1f}".format},
    )


def main() -> None:
    config.register_configs()
    hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="compare")(run)()


def run(cfg: DictConfig) -> None:
    from hydra.utils import get_original_cwd

    from hw4 import plots, tracking

    client, experiment_id = tracking.open_experiment(cfg.tracking, get_original_cwd())
    if cfg.parent:
        try:
            experiment_id = client.get_run(cfg.parent).info.experiment_id
        except Exception:
            raise ConfigError(f"parent={cfg.parent}: no such run in {client.tracking_uri}") from None
    frame, histories = collect(client, experiment_id, cfg.parent)
    if frame.empty:
        print(f"no training runs in {'sweep ' + cfg.parent if cfg.parent else cfg.tracking.experiment}")
        return
    print(format_table(frame, cfg.sort))

    out = Path(get_original_cwd()) / cfg.out / (cfg.parent or cfg.tracking.experiment)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        VAL_CURVES: plots.overlaid_curves(histories, ylabel="validation accuracy"),
        TEST_VS_LR: plots.metric_vs_lr(frame, metric="test_accuracy"),
    }
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=100)
        if cfg.parent:
            tracking.RunLogger(client, cfg.parent).log_figure(figure, name)
    print(f"figures: {', '.join(str(out / name) for name in figures)}")
