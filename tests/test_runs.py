"""hw4.runs: runs read back as tables, repeats grouped, the best configuration chosen."""

from __future__ import annotations

import pytest

from hw4 import names, runs, tracking

# config (lr), seed, best validation accuracy, test accuracy
RUNS = [
    ("1e-3", 0, 0.80, 0.79),
    ("1e-3", 1, 0.90, 0.88),  # the best single run...
    ("1e-2", 0, 0.86, 0.85),  # ...but this configuration has the better mean
    ("1e-2", 1, 0.87, 0.86),
]


def write(uri: str) -> tuple[object, str, str]:
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "runs", None)
    parent = client.create_run(experiment_id, tags={names.SWEEP_ROLE: "parent"}).info.run_id
    for lr, seed, best_val, test in RUNS:
        params = {"model.name": "mlp", "optimizer.lr": lr, names.SEED: seed, "data.dir": f"/data/{seed}"}
        tags = {names.CONFIG_KEY: names.config_key(params), names.JOB_KEY: names.job_key(params)}
        with tracking.start_run(client, experiment_id, f"mlp-lr{lr}", tags, parent) as run:
            run.log_params(params)
            run.log_metrics({names.BEST_VAL_ACCURACY: best_val, names.TEST_ACCURACY: test})
    return client, experiment_id, parent


def test_config_key_ignores_the_seed_and_bookkeeping_but_not_settings():
    base = {"optimizer.lr": 1e-3, names.SEED: 0, "data.dir": "/a", "tracking.uri": "sqlite:///x", "trainer.verbose": 1}
    same = {**base, names.SEED: 1, "data.dir": "/b", "tracking.uri": "http://h", "trainer.verbose": 0}
    assert names.config_key(base) == names.config_key(same)
    assert names.job_key(base) != names.job_key(same)  # another seed is another job
    assert names.job_key(base) == names.job_key({**base, "data.dir": "/b"})
    assert names.config_key(base) != names.config_key({**base, "optimizer.lr": 1e-2})


def test_group_gives_mean_and_std_per_configuration(tracking_uri):
    client, experiment_id, parent = write(tracking_uri)
    grouped = runs.group(runs.table(runs.training_runs(client, experiment_id, parent)))
    assert list(grouped.columns[:1]) == ["optimizer.lr"]  # the only config key that varies (not seed, not data.dir)
    by_lr = grouped.set_index("optimizer.lr")
    assert by_lr.loc["1e-3", "n"] == 2 and by_lr.loc["1e-3", "seeds"] == "0,1"
    assert by_lr.loc["1e-3", "best_val_accuracy_mean"] == pytest.approx(0.85)
    assert by_lr.loc["1e-3", "best_val_accuracy_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert by_lr.loc["1e-2", "test_accuracy_mean"] == pytest.approx(0.855)


def test_best_run_is_the_best_seed_of_the_best_mean(tracking_uri):
    client, experiment_id, parent = write(tracking_uri)
    frame = runs.table(runs.training_runs(client, experiment_id, parent))
    best = runs.best_run(frame, names.BEST_VAL_ACCURACY)
    assert (best["lr"], best["seed"]) == (1e-2, 1)
    assert runs.best_run(frame, "no_such_metric") is None


def test_superseded_runs_and_sweep_parents_are_not_training_runs(tracking_uri):
    client, experiment_id, parent = write(tracking_uri)
    found = runs.training_runs(client, experiment_id, None)
    assert len(found) == 4
    client.set_tag(found[0].info.run_id, names.SUPERSEDED_BY, "another")
    assert len(runs.training_runs(client, experiment_id, parent)) == 3
