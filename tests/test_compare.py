"""hw4-compare on a known set of runs written straight into a store (no training)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hw4 import compare, names, runs, tracking

RUNS = [  # model, lr, seed, per-epoch validation accuracy, test accuracy
    ("mlp", 1e-3, 0, [0.70, 0.80], 0.78),
    ("mlp", 1e-3, 1, [0.72, 0.84], 0.82),
    ("mlp", 1e-2, 0, [0.75, 0.72], 0.71),
    ("lenet", 1e-3, 0, [0.60, 0.85], 0.84),
]


def write_runs(uri: str, parent: bool) -> str | None:
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "cmp", None)
    parent_id = None
    if parent:
        parent_id = client.create_run(experiment_id, tags={"sweep": "parent"}).info.run_id
    for model, lr, seed, history, test in RUNS:
        params = {"model.name": model, "optimizer.name": "adam", "optimizer.lr": lr, "trainer.epochs": 2, "trainer.seed": seed}
        tags = {names.CONFIG_KEY: names.config_key(params)}
        # Default run names repeat across seeds: nothing may be keyed by them.
        with tracking.start_run(client, experiment_id, f"{model}-adam-lr{lr:g}", tags, parent_id) as run:
            run.log_params(params)
            for step, value in enumerate(history):
                run.log_metrics({names.VAL_ACCURACY: value}, step=step)
            best = max(history)
            run.log_metrics({names.TEST_ACCURACY: test, names.BEST_VAL_ACCURACY: best, names.BEST_EPOCH: history.index(best)})
    return parent_id


def hw4_compare(tmp_path: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["hw4-compare", f"tracking.uri={uri}", "tracking.experiment=cmp", "out=figs", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def table_rows(stdout: str, first_column: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first_column])
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("ranked by"):
            break
        rows.append(line.split())
    return rows


def test_configurations_are_grouped_over_seeds_with_mean_and_std(tracking_uri, tmp_path):
    write_runs(tracking_uri, parent=False)
    result = hw4_compare(tmp_path, tracking_uri)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["config_key"]).split()
    # Only the config keys that vary among configurations; the seed is what groups them.
    assert header[1:3] == ["model.name", "optimizer.lr"] and "optimizer.name" not in header
    rows = table_rows(result.stdout, "config_key")
    assert len(rows) == 3  # four runs, three configurations
    assert rows[0][1:4] == ["lenet", "0.001", "1"]  # sorted by mean best validation accuracy
    mlp = next(row for row in rows if row[1:3] == ["mlp", "0.001"])
    assert mlp[3] == "2" and "0.8000 ± 0.0283" in " ".join(mlp)  # test accuracy 0.78, 0.82
    for name in ("compare_val_accuracy.png", "compare_test_accuracy_vs_lr.png"):
        assert (tmp_path / "figs" / "cmp" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_group_false_lists_every_run_and_sort_is_checked(tracking_uri, tmp_path):
    write_runs(tracking_uri, parent=False)
    result = hw4_compare(tmp_path, tracking_uri, "group=false", "sort=test_accuracy")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "run")
    assert len(rows) == 4
    assert [row[0] for row in rows][:2] == ["lenet-adam-lr0.001", "mlp-adam-lr0.001"]
    bad = hw4_compare(tmp_path, tracking_uri, "sort=speed")
    assert bad.returncode == 1 and "sort='speed' is not a column" in bad.stderr


def test_curves_are_kept_per_run_even_when_names_repeat(tracking_uri):
    write_runs(tracking_uri, parent=False)
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name("cmp").experiment_id
    frame = runs.table(runs.training_runs(client, experiment_id))
    curves = compare.histories(client, frame)
    assert len(curves) == 4
    assert len(compare.curve_bands(frame, curves, grouped=False)) == 4
    grouped = compare.curve_bands(frame, curves, grouped=True)
    mean, std = grouped["model.name=mlp, optimizer.lr=0.001"]
    assert mean.tolist() == pytest.approx([0.71, 0.82]) and std is not None


def test_diff_prints_the_keys_that_differ(tracking_uri, tmp_path):
    write_runs(tracking_uri, parent=False)
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name("cmp").experiment_id
    by_seed = {r.data.params["trainer.seed"]: r.info.run_id for r in client.search_runs([experiment_id], filter_string="params.`optimizer.lr` = '0.001' and params.`model.name` = 'mlp'")}
    result = hw4_compare(tmp_path, tracking_uri, f"diff={by_seed['0']},{by_seed['1']}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["key", by_seed["0"], by_seed["1"]]
    assert [line.split() for line in lines[1:]] == [["trainer.seed", "0", "1"]]


def test_sweep_mode_lists_children_and_logs_figures_to_the_parent(tracking_uri, tmp_path):
    parent_id = write_runs(tracking_uri, parent=True)
    result = hw4_compare(tmp_path, tracking_uri, f"parent={parent_id}", "group=false")
    assert result.returncode == 0, result.stderr
    assert len(table_rows(result.stdout, "run")) == 4
    logged = {a.path for a in MlflowClient(tracking_uri).list_artifacts(parent_id)}
    assert {"compare_val_accuracy.png", "compare_test_accuracy_vs_lr.png"} <= logged
