"""hw4-compare on a known set of runs written straight into a store (no training)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from hw4 import tracking

RUNS = [  # model, lr, per-epoch validation accuracy, test accuracy
    ("mlp", 1e-3, [0.70, 0.80], 0.78),
    ("mlp", 1e-2, [0.75, 0.72], 0.71),
    ("lenet", 1e-3, [0.60, 0.85], 0.84),
]


def write_runs(uri: str, parent: bool) -> str | None:
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "cmp", None)
    parent_id = None
    if parent:
        parent_id = client.create_run(experiment_id, tags={"sweep": "parent"}).info.run_id
    for model, lr, history, test in RUNS:
        with tracking.start_run(client, experiment_id, f"{model}-adam-lr{lr:g}", {}, parent_id) as run:
            run.log_params({"model.name": model, "optimizer.name": "adam", "optimizer.lr": lr, "trainer.epochs": 2})
            for step, value in enumerate(history):
                run.log_metrics({"val_categorical_accuracy": value}, step=step)
            run.log_metrics({"test_categorical_accuracy": test})
    return parent_id


def compare(tmp_path: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["hw4-compare", f"tracking.uri={uri}", "tracking.experiment=cmp", "out=figs", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["run", "model"])
    return [line.split() for line in lines[start + 1 : start + 1 + len(RUNS)]]


def test_table_sorted_by_test_accuracy_and_figures(tracking_uri, tmp_path):
    write_runs(tracking_uri, parent=False)
    result = compare(tmp_path, tracking_uri)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["lenet-adam-lr0.001", "mlp-adam-lr0.001", "mlp-adam-lr0.01"]
    # best and final validation accuracy come from the per-epoch history
    assert rows[2][5:8] == ["0.75", "0.72", "0.71"]
    for name in ("compare_val_accuracy.png", "compare_test_accuracy_vs_lr.png"):
        assert (tmp_path / "figs" / "cmp" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sort_by_another_column_and_reject_unknown(tracking_uri, tmp_path):
    write_runs(tracking_uri, parent=False)
    rows = table_rows(compare(tmp_path, tracking_uri, "sort=best_val_accuracy").stdout)
    assert [row[0] for row in rows][0] == "lenet-adam-lr0.001"
    result = compare(tmp_path, tracking_uri, "sort=speed")
    assert result.returncode == 1 and "sort='speed' is not a column" in result.stderr


def test_sweep_mode_lists_children_and_logs_figures_to_the_parent(tracking_uri, tmp_path):
    parent_id = write_runs(tracking_uri, parent=True)
    result = compare(tmp_path, tracking_uri, f"parent={parent_id}")
    assert result.returncode == 0, result.stderr
    assert len(table_rows(result.stdout)) == 3
    logged = {a.path for a in MlflowClient(tracking_uri).list_artifacts(parent_id)}
    assert {"compare_val_accuracy.png", "compare_test_accuracy_vs_lr.png"} <= logged
