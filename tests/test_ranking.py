"""hw4.ranking: repeats grouped (mean ± std, seeds counted), the ranking, Welch's test for the
tied set, the verdict and the best configuration, over runs written to a throwaway store and read
back by hw4.runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_runs import child, sweep_of, write

from hw4 import names, ranking, runs


def test_group_gives_mean_and_std_per_configuration(tracking_uri):
    client, experiment_id, parent = write(tracking_uri)
    grouped = ranking.group(runs.table(runs.training_runs(client, experiment_id, parent)))
    assert list(grouped.columns[:1]) == ["optimizer.lr"]  # the only config key that varies (not seed, not data.dir)
    by_lr = grouped.set_index("optimizer.lr")
    assert by_lr.loc["1e-3", "n"] == 2 and by_lr.loc["1e-3", "seeds"] == "0,1"
    assert by_lr.loc["1e-3", "best_val_accuracy_mean"] == pytest.approx(0.85)
    assert by_lr.loc["1e-3", "best_val_accuracy_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert by_lr.loc["1e-2", "test_accuracy_mean"] == pytest.approx(0.855)


def test_best_run_is_the_best_seed_of_the_best_mean(tracking_uri):
    client, experiment_id, parent = write(tracking_uri)
    frame = runs.table(runs.training_runs(client, experiment_id, parent))
    best = ranking.best_run(frame, names.BEST_VAL_ACCURACY)
    assert (best["lr"], best["seed"]) == (1e-2, 1)
    assert ranking.best_run(frame, "no_such_metric") is None


# --- statistics that do not flatter (issue 21, section 3) ---------------------------------------


def summary_of(uri: str, children: list[tuple]) -> tuple:
    client, experiment_id, parent = sweep_of(uri, children)
    return ranking.summarize(runs.table(runs.training_runs(client, experiment_id, parent)))


# lr 1e-2 diverged on two of its three seeds; its survivor is the best single run.
DIVERGED = [
    ("1e-3", 0, 0.85), ("1e-3", 1, 0.86), ("1e-3", 2, 0.87),
    ("1e-2", 0, 0.95), ("1e-2", 1, None, "FAILED"), ("1e-2", 2, None, "FAILED"),
]  # fmt: skip


def test_failed_seeds_count_and_an_incomplete_configuration_ranks_after_complete_ones(tracking_uri):
    killed = [("1", 0, None, "FAILED"), ("1", 1, None, "KILLED")]  # nothing finished: still a row
    summary, configurations = summary_of(tracking_uri, DIVERGED + killed)
    by_lr = configurations.set_index("optimizer.lr")
    assert by_lr.loc["1e-2", ["n", "planned", "failed", "killed", "complete"]].tolist() == [1, 3, 2, 0, False]
    assert by_lr.loc["1e-3", ["n", "planned", "failed", "complete"]].tolist() == [3, 3, 0, True]
    assert by_lr.loc["1", ["n", "planned", "failed", "killed", "complete"]].tolist() == [0, 3, 1, 1, False]
    assert list(configurations["optimizer.lr"]) == ["1e-3", "1e-2", "1"]  # ranked: complete first
    assert summary["best_lr"] == 1e-3 and summary["best_config_complete"] is True
    assert (summary["best_config_runs"], summary["best_config_planned"]) == (3, 3)
    assert summary["verdict"].endswith(
        "lr 1e-2 has the best mean but is incomplete (1 of 3 seeds finished, 2 failed), so it ranks after the "
        "complete configurations; no seed of lr 1 finished"
    )
    json.dumps(summary)  # logged as sweep_summary.json: plain types only


def test_a_sweep_grid_plans_every_seed_it_ran_for_every_configuration(tracking_uri):
    # lr 1e-2's seed 2 never got a run (a stopped sweep): still planned, so incomplete.
    summary, configurations = summary_of(
        tracking_uri, [("1e-3", s, 0.80 + s / 100) for s in range(3)] + [("1e-2", 0, 0.90), ("1e-2", 1, 0.91)]
    )
    by_lr = configurations.set_index("optimizer.lr")
    assert by_lr.loc["1e-2", ["n", "planned", "complete"]].tolist() == [2, 3, False]
    assert summary["best_lr"] == 1e-3 and summary["configurations_complete"] == 1
    frame = runs.table(runs.training_runs(*sweep_of(tracking_uri, [("1e-3", 0, 0.8), ("1e-2", 1, 0.9)])[:3]))
    # No configuration ran every seed seen (a search that samples seeds): nothing is missing.
    assert ranking.group(frame, sweep=True)["planned"].tolist() == [1, 1]


def test_a_pruned_seed_is_finished_but_not_a_full_seed(tracking_uri):
    pruned = ("1e-2", 2, 0.99, "FINISHED", {"pruned": True})
    summary, configurations = summary_of(
        tracking_uri, [("1e-3", s, 0.85) for s in range(3)] + [("1e-2", 0, 0.90), ("1e-2", 1, 0.91), pruned]
    )
    by_lr = configurations.set_index("optimizer.lr")
    assert by_lr.loc["1e-2", ["n", "planned", "pruned", "complete"]].tolist() == [3, 3, 1, False]
    assert summary["best_lr"] == 1e-3 and summary["jobs_pruned"] == 1
    assert "1 pruned" in summary["verdict"]


def test_overlapping_seeds_are_within_noise_of_the_best(tracking_uri):
    from scipy import stats

    best, close, far = [0.86, 0.88, 0.90], [0.85, 0.87, 0.89], [0.70, 0.71, 0.72]
    lrs = [("1e-3", best), ("3e-3", close), ("1e-1", far)]
    summary, configurations = summary_of(tracking_uri, [(lr, s, v) for lr, values in lrs for s, v in enumerate(values)])
    by_lr = configurations.set_index("optimizer.lr")
    p_close = stats.ttest_ind(best, close, equal_var=False).pvalue
    p_far = stats.ttest_ind(best, far, equal_var=False).pvalue
    assert by_lr.loc["1e-3", "tied_with_best"] == "best"
    assert by_lr.loc["3e-3", "tied_with_best"] == f"yes (p={p_close:.2g})" and p_close >= ranking.ALPHA
    assert by_lr.loc["1e-1", "tied_with_best"] == ("no (p<0.001)" if p_far < 0.001 else f"no (p={p_far:.2g})")
    assert summary["tied_with_best"] == "lr 1e-3, lr 3e-3"
    assert summary["verdict"] == (
        f"lr 1e-3 and 3e-3 are within noise of each other (Welch's t-test, p = {p_close:.2g} >= 0.05); "
        "run more seeds to separate them"
    )


def test_a_clear_winner_and_zero_spread_say_so_without_warnings(tracking_uri):
    import warnings

    same = (
        [("1e-3", s, 0.9) for s in range(2)]
        + [("3e-3", s, 0.9) for s in range(2)]
        + [("1e-2", s, 0.8) for s in range(2)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NaN from 0/0
        summary, configurations = summary_of(tracking_uri, same)
    assert sorted(configurations["tied_with_best"]) == ["best", "no (p<0.001)", "yes (p=1)"]
    clear = [("1e-3", s, 0.90 + s / 1000) for s in range(3)] + [("1e-2", s, 0.80 + s / 1000) for s in range(3)]
    summary, _ = summary_of(tracking_uri, clear)
    assert summary["verdict"] == "lr 1e-3 is best, distinguishable from every other configuration (p < 0.05)"
    assert summary["tied_with_best"] == "lr 1e-3"


def test_one_seed_each_is_not_enough_to_tell(tracking_uri):
    summary, configurations = summary_of(tracking_uri, [("1e-3", 0, 0.90), ("1e-2", 0, 0.80)])
    assert configurations.set_index("optimizer.lr").loc["1e-2", "tied_with_best"] == "not enough seeds"
    assert summary["verdict"] == "not enough seeds to tell (n < 2): repeat with +sweep=lr_seeds"


def test_losses_rank_lowest_first_everywhere(tracking_uri):
    assert ranking.higher_is_better(names.BEST_VAL_ACCURACY) and not ranking.higher_is_better(names.BEST_VAL_LOSS)

    def loss(value: float) -> dict:
        return {"metrics": {names.BEST_VAL_LOSS: value}}

    client, experiment_id, parent = sweep_of(tracking_uri, [
        ("1e-3", 0, 0.90, "FINISHED", loss(0.30)), ("1e-3", 1, 0.91, "FINISHED", loss(0.28)),
        ("1e-2", 0, 0.80, "FINISHED", loss(0.60)), ("1e-2", 1, 0.81, "FINISHED", loss(0.50)),
    ])  # fmt: skip
    frame = runs.table(runs.training_runs(client, experiment_id, parent))
    best = ranking.best_run(frame, names.BEST_VAL_LOSS, sweep=True)
    assert (best["lr"], best["seed"]) == (1e-3, 1)  # the lowest mean loss, then its lowest seed
    assert list(ranking.group(frame, names.BEST_VAL_LOSS)["optimizer.lr"]) == ["1e-3", "1e-2"]


def test_labels_name_configurations_by_what_varies():
    assert [ranking.short_value(v) for v in ("0.001", "0.0003", "0.00025", "0.5", "10", "adam")] == [
        "1e-3",
        "3e-4",
        "2.5e-4",
        "0.5",
        "10",
        "adam",
    ]
    values = pd.DataFrame({"model.name": ["mlp"], "optimizer.lr": ["0.001"]}, index=["abc"])
    assert ranking.labels(values).tolist() == ["model mlp / lr 1e-3"]
    assert ranking.join_labels(["lr 1e-3", "lr 3e-3", "lr 1e-2"]) == "lr 1e-3, 3e-3 and 1e-2"


def test_the_report_ranks_sweeps_by_their_mean_over_seeds(tracking_uri):
    from hw4.commands import report

    client, experiment_id, lucky = sweep_of(
        tracking_uri, [("1e-2", 0, 0.95), ("1e-2", 1, 0.65), ("1e-3", 0, 0.70), ("1e-3", 1, 0.72)]
    )
    summary, _ = ranking.summarize(runs.table(runs.training_runs(client, experiment_id, lucky)))
    client.log_metric(lucky, names.BEST_VAL_ACCURACY, summary[names.BEST_VAL_ACCURACY])  # 0.95, one lucky seed
    client.log_metric(
        lucky, "best_config_mean_val_categorical_accuracy", summary["best_config_mean_val_categorical_accuracy"]
    )  # 0.80
    client.set_tag(lucky, "best_model", "mlp")
    client.set_tag(lucky, "verdict", summary["verdict"])
    steady = client.create_run(experiment_id, tags={names.SWEEP_ROLE: "parent"}).info.run_id  # no summary logged
    for seed, value in enumerate((0.88, 0.90)):
        child(client, experiment_id, steady, "3e-3", seed, value)
    homework = client.create_run(experiment_id, tags={report.HOMEWORK_TAG: "true"}).info.run_id
    best = report.best_sweep_runs(client, experiment_id, homework)["mlp"]
    assert best["sweep_run_id"] == steady and best["val"] == pytest.approx(0.89)  # recomputed: mean of 0.88, 0.90
    assert (best["n"], best["planned"], best["complete"]) == (2, 2, True)
    assert best["verdict"].startswith("lr 3e-3 is the only configuration")


def test_a_key_a_run_did_not_record_has_its_added_keys_value():
    """Runs of one configuration, one recorded before the schedule options were factories (every
    schedule field, at its neutral value) and one after (only its option's own fields): not a
    varying param. A run that did set another value still varies."""
    import pandas as pd

    from hw4.ranking import PARAM, varying_params

    before_and_after = pd.DataFrame({f"{PARAM}schedule.every": ["1", None], f"{PARAM}optimizer.lr": ["0.001", "0.001"]})
    assert varying_params(before_and_after) == []
    other = pd.DataFrame({f"{PARAM}schedule.every": ["5", None], f"{PARAM}optimizer.lr": ["0.001", "0.001"]})
    assert varying_params(other) == [f"{PARAM}schedule.every"]
