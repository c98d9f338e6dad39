"""hw4-compare on a known set of runs written straight into a store (no training). The command
runs in this process (tests/console.py); its console script's wiring: tests/test_config.py."""

from __future__ import annotations

from pathlib import Path

import console
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from hw4 import names, plots, runs, tracking
from hw4.commands import compare
from hw4.errors import ConfigError, TrackingError

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
        params = {
            "model.name": model,
            "optimizer.name": "adam",
            "optimizer.lr": lr,
            "trainer.epochs": 2,
            "trainer.seed": seed,
        }
        tags = {names.CONFIG_KEY: names.config_key(params)}
        # Default run names repeat across seeds: nothing may be keyed by them.
        with tracking.start_run(client, experiment_id, f"{model}-adam-lr{lr:g}", tags, parent_run_id=parent_id) as run:
            run.log_params(params)
            for step, value in enumerate(history):
                run.log_metrics({names.VAL_ACCURACY: value}, step=step)
            best = max(history)
            run.log_metrics(
                {names.TEST_ACCURACY: test, names.BEST_VAL_ACCURACY: best, names.BEST_EPOCH: history.index(best)}
            )
    return parent_id


def hw4_compare(tmp_path: Path, uri: str, *overrides: str) -> console.Ran:
    """`hw4-compare` on the test's store, in this process (tests/console.py)."""
    args = [f"tracking.uri={uri}", "tracking.experiment=cmp", "out=figs", *overrides]
    return console.run(compare.main, "hw4-compare", *args, cwd=tmp_path)


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
    by_seed = {
        r.data.params["trainer.seed"]: r.info.run_id
        for r in client.search_runs(
            [experiment_id], filter_string="params.`optimizer.lr` = '0.001' and params.`model.name` = 'mlp'"
        )
    }
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


# --- statistics that do not flatter (issue 21, section 3) ---------------------------------------


def child(
    client, experiment_id: str, parent: str, lr: float, seed: int, history: list[float], *, status="FINISHED", **more
) -> str:
    """One child of `parent` written straight into the store; `more`: `pruned`, `params`."""
    from mlflow.entities import Metric, Param

    params = {"model.name": "mlp", "optimizer.name": "adam", "optimizer.lr": lr, "trainer.epochs": 3,
              "trainer.seed": seed, **more.get("params", {})}  # fmt: skip
    tags = {names.CONFIG_KEY: names.config_key(params), names.PARENT_RUN: parent}
    if more.get("pruned"):
        tags[names.PRUNED] = "true"
    run_id = client.create_run(experiment_id, run_name=f"mlp-adam-lr{lr:g}", tags=tags).info.run_id
    metrics = [Metric(names.VAL_ACCURACY, v, 0, step) for step, v in enumerate(history)]
    if history and status == "FINISHED":
        best = max(history)
        metrics += [Metric(names.BEST_VAL_ACCURACY, best, 0, 0), Metric(names.TEST_ACCURACY, best - 0.01, 0, 0),
                    Metric(names.BEST_EPOCH, history.index(best), 0, 0)]  # fmt: skip
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, status)
    return run_id


def sweep_parent(uri: str) -> tuple[MlflowClient, str, str]:
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "cmp", None)
    return client, experiment_id, client.create_run(experiment_id, tags={names.SWEEP_ROLE: "parent"}).info.run_id


def test_the_grouped_table_counts_seeds_and_says_when_the_winner_is_within_noise(tracking_uri, tmp_path):
    client, experiment_id, parent = sweep_parent(tracking_uri)
    for seed, (a, b) in enumerate([(0.86, 0.85), (0.88, 0.87), (0.90, 0.89)]):
        child(client, experiment_id, parent, 1e-3, seed, [0.5, a])
        child(client, experiment_id, parent, 3e-3, seed, [0.5, b])
    child(client, experiment_id, parent, 1e-2, 0, [0.5, 0.99])  # the best single run...
    child(client, experiment_id, parent, 1e-2, 1, [0.5, float("nan")], status="FAILED")  # ...of a diverging lr
    result = hw4_compare(tmp_path, tracking_uri, f"parent={parent}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["config_key"]).split()
    assert header[1:8] == ["optimizer.lr", "n", "planned", "failed", "killed", "pruned", "complete"]
    assert header[-2:] == ["seeds", "tied_with_best"]
    rows = table_rows(result.stdout, "config_key")
    assert [row[1] for row in rows] == ["0.001", "0.003", "0.01"]  # the incomplete lr last
    assert rows[2][2:8] == ["1", "3", "1", "0", "0", "False"]  # 1 of 3 seeds (seed 2 never ran), 1 failed
    assert rows[0][-1] == "best" and rows[1][-2].startswith("yes") and rows[2][-3:] == ["not", "enough", "seeds"]
    verdict = lines[lines.index(next(line for line in lines if line.startswith("ranked by"))) + 1]
    assert verdict.startswith("lr 1e-3 and 3e-3 are within noise of each other (Welch's t-test, p = ")
    assert "lr 1e-2 has the best mean but is incomplete (1 of 3 seeds finished, 1 failed, 1 not run" in verdict


def test_a_pruned_seed_does_not_shorten_its_configurations_band(tracking_uri):
    client, experiment_id, parent = sweep_parent(tracking_uri)
    child(client, experiment_id, parent, 1e-3, 0, [0.70, 0.80, 0.90])
    child(client, experiment_id, parent, 1e-3, 1, [0.72, 0.82, 0.86])
    child(client, experiment_id, parent, 1e-3, 2, [0.50, 0.52], pruned=True)
    child(client, experiment_id, parent, 1e-3, 3, [0.10, 0.10, 0.10, 0.10], status="FAILED")  # not in the table
    frame = runs.table(runs.training_runs(client, experiment_id, parent))
    bands = compare.curve_bands(frame, compare.histories(client, frame), grouped=True)
    ((mean, std),) = bands.values()
    assert mean.tolist() == pytest.approx([0.64, 0.7133333, 0.88])  # epoch 3: the two seeds that reached it
    assert std[2] == pytest.approx(np.std([0.90, 0.86], ddof=1))
    mean, std = compare.epoch_stats([[0.5, 0.6], [0.7]])
    assert mean.tolist() == pytest.approx([0.6, 0.6]) and np.isnan(std[1])  # one run at epoch 2: no band


def test_the_test_vs_lr_points_group_by_config_key_like_the_table(tracking_uri):
    client, experiment_id, parent = sweep_parent(tracking_uri)
    for seed in range(2):  # the same model, optimizer and lr, on two epoch budgets: two configurations
        child(client, experiment_id, parent, 1e-3, seed, [0.80 + seed / 100], params={"trainer.epochs": 1})
        child(client, experiment_id, parent, 1e-3, seed, [0.5, 0.90 + seed / 100], params={"trainer.epochs": 2})
    child(client, experiment_id, parent, 1e-3, 2, [0.1], params={"trainer.epochs": 2}, status="FAILED")
    frame = runs.table(runs.training_runs(client, experiment_id, parent))
    points = compare.lr_points(frame, "test_accuracy").set_index("line")
    assert sorted(points.index) == ["epochs 1", "epochs 2"]
    assert points.loc["epochs 1", "mean"] == pytest.approx(0.795) and points.loc["epochs 1", "n"] == 2
    assert points.loc["epochs 2", "mean"] == pytest.approx(0.895)  # the failed run left out
    assert points["lr"].tolist() == [1e-3, 1e-3]
    assert plots.metric_vs_lr(points.reset_index(), "test_accuracy") is not None


def test_a_store_error_is_not_a_missing_run(tracking_uri):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    class Denied:
        tracking_uri = "http://store"

        def get_run(self, run_id):
            raise MlflowException("403 Forbidden", error_code=PERMISSION_DENIED)

    with pytest.raises(TrackingError, match="diff: run a: cannot read the run from http://store: PERMISSION_DENIED"):
        compare.print_diff(Denied(), ["a", "b"])
    with pytest.raises(ConfigError, match="no such run"):
        compare.print_diff(MlflowClient(tracking_uri), ["0" * 32, "1" * 32])


def test_a_sweep_ranked_by_val_loss_is_compared_by_val_loss(tracking_uri, tmp_path):
    """Issue 34, section 5: hw4-compare and api.compare rank a sweep by its own objective (the
    parent's ranked_by, as hw4-promote reads it), here best_val_loss: lr 1e-2 has the lower loss,
    lr 1e-3 the higher accuracy. Without a sweep, tracking.objective says the same."""
    from hw4 import api

    client, experiment_id, parent = sweep_parent(tracking_uri)
    client.set_tag(parent, names.RANKED_BY, names.BEST_VAL_LOSS)
    for seed, (loss_a, loss_b) in enumerate([(0.40, 0.30), (0.42, 0.31), (0.41, 0.29)]):
        a = child(client, experiment_id, parent, 1e-3, seed, [0.5, 0.90 + seed / 100])  # more accurate
        b = child(client, experiment_id, parent, 1e-2, seed, [0.5, 0.85 + seed / 100])  # lower loss
        client.log_metric(a, names.BEST_VAL_LOSS, loss_a)
        client.log_metric(b, names.BEST_VAL_LOSS, loss_b)

    for overrides in ([f"parent={parent}"], ["tracking.objective=best_val_loss"]):
        result = hw4_compare(tmp_path, tracking_uri, *overrides)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        header = next(line for line in lines if line.split()[:1] == ["config_key"]).split()
        rows = table_rows(result.stdout, "config_key")
        assert [row[1] for row in rows] == ["0.01", "0.001"]  # lowest mean val loss first
        assert rows[0][-1] == "best" and rows[1][-2] == "no"  # tied_with_best against the loss's best
        assert "best_val_loss" in header and "0.3000 ± 0.0100" in " ".join(rows[0])  # shown as the others
        verdict = lines[lines.index(next(line for line in lines if line.startswith("ranked by"))) + 1]
        assert verdict.startswith("lr 1e-2 is best, distinguishable from every other configuration")

    table = api.compare(parent=parent, uri=tracking_uri, experiment="cmp")
    assert table.loc[0, "optimizer.lr"] == "0.01" and table.loc[0, "tied_with_best"] == "best"
    assert table.loc[0, "best_val_loss"] == "0.3000 ± 0.0100"
