"""How a sweep ranks its configurations, on run records already read (hw4.runs.table builds
them from the store): repeats grouped into one row per configuration (runs sharing a `config_key`
differ only in seed) with mean ± std, the ranking, Welch's test for the tied set, the verdict and
the best configuration's best seed.

hw4-compare, the sweep summary, hw4-promote and hw4-report all rank through here, so they rank
alike: complete configurations (every planned seed FINISHED, none pruned) first, then incomplete
ones, each by the mean of the metric over its finished seeds, in the metric's direction
(`higher_is_better`); then the best seed of the first. Whether the winner stands out is Welch's
t-test (`scipy.stats.ttest_ind(equal_var=False)`) on the seeds' best-epoch values against each
other configuration's, two-sided at level ALPHA = 0.05: p >= ALPHA is "within noise".
Values in, values out: no MLflow, no store, no TensorFlow.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd

from hw4 import names
from hw4.errors import ConfigError

# --- the records ranked: one row per run, as hw4.runs.table builds them -------------------------

# Per-run columns; `p.<key>` columns hold the run's flattened config (its MLflow params), and
# `m.<name>` its final metrics.
RUN_COLUMNS = [
    "run", "model", "optimizer", "lr", "seed", "epochs", "best_val_accuracy", "best_epoch",
    "final_val_accuracy", "test_accuracy", "pruned", "wall_s", "started", "status", "config_key", "run_id",
]  # fmt: skip
PARAM, METRIC = "p.", "m."
# Run statuses, as MLflow names them (mlflow.entities.RunStatus).
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
# MLflow metric names that the run table holds under a column of its own.
COLUMN_OF = {names.BEST_VAL_ACCURACY: "best_val_accuracy", names.TEST_ACCURACY: "test_accuracy",
             names.VAL_ACCURACY: "final_val_accuracy"}  # fmt: skip

# Summarised over a configuration's runs as mean and std.
AGGREGATED = ("test_accuracy", "best_val_accuracy")
LOWER_IS_BETTER = "loss"  # metric names containing it rank ascending
# Level of Welch's t-test: a configuration with p >= ALPHA against the best is within noise of it.
ALPHA = 0.05
BEST, TIED, DISTINCT, NOT_ENOUGH_SEEDS = "best", "yes", "no", "not enough seeds"  # tied_with_best
REPEAT_HINT = "+sweep=lr_seeds"  # how to get seeds to compare
SCIENTIFIC_BELOW = 0.1  # labels write smaller numbers as a learning rate is (1e-2, 3e-3)
LR_KEY = "optimizer.lr"
UNNAMED = "config"  # a configuration labelled by its config_key
TAG_LIMIT = 5000  # characters of a tag value (MLflow's smallest limit across its stores)


def finished_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs that count towards a configuration's numbers: FINISHED ones (pruned included)."""
    return frame[frame["status"] == FINISHED] if not frame.empty else frame


def described(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs that logged their config (a job that failed before logging says nothing of it)."""
    params = [c for c in frame.columns if c.startswith(PARAM)]
    return frame[frame[params].notna().any(axis=1)] if params else frame.iloc[:0]


def varying_params(frame: pd.DataFrame, ignore_seed: bool = False) -> list[str]:
    """The config columns whose values differ among the rows (bookkeeping keys left out)."""
    columns = []
    for column in frame.columns:
        if not column.startswith(PARAM):
            continue
        key = column[len(PARAM) :]
        if names.is_bookkeeping(key) or (ignore_seed and key == names.SEED):
            continue
        # A key a run did not record had its value in names.ADDED_KEYS: a run from before the key
        # existed, or an option whose factory takes no such argument (schedule.every of cosine).
        unset = str(names.ADDED_KEYS[key]) if key in names.ADDED_KEYS else "<unset>"
        if frame[column].fillna(unset).nunique() > 1:
            columns.append(column)
    return columns


# --- metrics and their direction ---------------------------------------------------------------


def higher_is_better(metric: str) -> bool:
    """Whether a larger `metric` is better: losses rank ascending, everything else descending.
    The one rule every ranking (table, summary, promote, report) follows."""
    return LOWER_IS_BETTER not in metric


def metric_column(frame: pd.DataFrame, metric: str) -> Optional[str]:
    """The column holding `metric` (a MLflow metric name or a table column) for some run of
    `frame`; None when none has it."""
    for column in (COLUMN_OF.get(metric, metric), METRIC + metric):
        if column in frame.columns and frame[column].notna().any():
            return column
    return None


def available_metrics(frame: pd.DataFrame) -> list[str]:
    """The MLflow metrics some run of `frame` logged."""
    return sorted(c[len(METRIC) :] for c in frame.columns if c.startswith(METRIC) and frame[c].notna().any())


def ranking_column(frame: pd.DataFrame, metric: str) -> str:
    """The column that ranks `frame`'s runs by `metric`. A table column no run has a value for
    (runs from before best-epoch metrics) ranks nothing; an unknown metric is a ConfigError."""
    column = metric_column(frame, metric)
    if column is not None:
        return column
    if COLUMN_OF.get(metric, metric) in RUN_COLUMNS:
        return COLUMN_OF.get(metric, metric)
    raise ConfigError(f"metric={metric!r}: no finished run logged it; choose one of {available_metrics(frame)}")


def mean_column(configurations: pd.DataFrame, metric: str) -> str:
    """The configurations table's column with the mean of `metric` over seeds."""
    for column in (COLUMN_OF.get(metric, metric), METRIC + metric):
        if f"{column}_mean" in configurations.columns:
            return f"{column}_mean"
    raise ConfigError(f"metric={metric!r} does not rank these configurations")


# --- one row per configuration -----------------------------------------------------------------


def missing_seeds(frame: pd.DataFrame) -> pd.Series:
    """Per configuration, the sweep's seeds it has no run for.

    A sweep's seeds are a grid axis (`trainer.seed=0,1,2` times the rest) when some configuration
    ran every seed seen anywhere in the sweep: then every configuration planned the union of the
    seeds, and a job that never got a run (a stopped sweep) still counts as planned. Otherwise (a
    search that samples seeds, say) nothing is missing.
    """
    keys = frame["config_key"].drop_duplicates()
    seeds = {
        key: frozenset(rows["seed"]) for key, rows in frame.dropna(subset=["seed"]).groupby("config_key", sort=False)
    }
    union = frozenset().union(*seeds.values())
    grid = any(seen == union for seen in seeds.values())
    return pd.Series([len(union - seeds.get(key, union)) if grid else 0 for key in keys], index=keys, dtype=int)


def seed_counts(frame: pd.DataFrame, *, sweep: bool) -> pd.DataFrame:
    """Per configuration: `n` finished seeds (pruned ones included) of `planned`, how many
    `failed` (diverged or crashed), were `killed` or `pruned`, and whether it is `complete`: every
    planned seed FINISHED and not pruned. `planned` counts the configuration's runs of any status
    (runs replaced by a later attempt are not in `frame`), plus, for a sweep, the grid's seeds it
    has no run for (`missing_seeds`)."""
    key, status = frame["config_key"], frame["status"]
    finished = status == FINISHED

    def per_config(mask: pd.Series) -> pd.Series:
        return mask.groupby(key, sort=False).sum().astype(int)

    counts = pd.DataFrame(
        {
            "n": per_config(finished),
            "planned": per_config(pd.Series(True, index=frame.index)),
            "failed": per_config(status == FAILED),
            "killed": per_config(status == KILLED),
            "pruned": per_config(finished & frame["pruned"].astype(bool)),
        }
    )
    if sweep:
        counts["planned"] += missing_seeds(frame)
    counts["complete"] = (counts["n"] - counts["pruned"]) == counts["planned"]
    return counts


def config_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, the config values that vary between configurations (seed left out),
    named without the `p.` prefix."""
    varying = varying_params(described(frame), ignore_seed=True)
    keys = frame["config_key"].drop_duplicates()
    values = frame.groupby("config_key", sort=False)[varying].first() if varying else pd.DataFrame(index=keys)
    values = values.reindex(keys)
    values.columns = [c[len(PARAM) :] for c in values.columns]
    return values


def aggregates(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and std (over seeds) of AGGREGATED and `column` per configuration, over its finished
    runs, and the seeds they ran."""
    finished = finished_runs(frame)
    key = finished["config_key"]
    stats = {}
    for metric in dict.fromkeys((*AGGREGATED, column)):
        values = pd.to_numeric(finished[metric], errors="coerce").groupby(key, sort=False)
        stats[f"{metric}_mean"] = values.mean()
        stats[f"{metric}_std"] = values.std(ddof=1)  # NaN for a single run
    stats["seeds"] = (
        finished["seed"].groupby(key, sort=False).apply(lambda s: ",".join(_seed_text(v) for v in sorted(s)))
    )
    return pd.DataFrame(stats)


def _seed_text(seed: Any) -> str:
    return "?" if pd.isna(seed) else str(int(seed))  # NaN: a run that logged no seed


def rank(configurations: pd.DataFrame, mean: str, higher: bool, first_started: pd.Series) -> pd.DataFrame:
    """Complete configurations first, then incomplete ones, each by their `mean` (best first);
    configurations without a value last; ties to the configuration that started first."""
    key = configurations.assign(
        _ranked=configurations[mean].notna(), _first=first_started.reindex(configurations.index)
    )
    order = key.sort_values(
        ["_ranked", "complete", mean, "_first"], ascending=[False, False, not higher, True], kind="stable"
    )
    return configurations.loc[order.index]


def group(frame: pd.DataFrame, metric: str = names.OBJECTIVE, *, sweep: bool = False) -> pd.DataFrame:
    """One row per configuration (indexed by config_key), ranked best first (`rank`): the config
    values that vary, `seed_counts`, mean and std of AGGREGATED (and of `metric`) over its finished
    runs, a `label` naming it by those values, and `tied_with_best` with its `p_value`.

    `sweep`: `frame` is one sweep's children, whose seeds may form a grid (`missing_seeds`).
    Empty when no run finished.
    """
    finished = finished_runs(frame)
    if finished.empty:
        return pd.DataFrame()
    column = ranking_column(finished, metric)
    values = config_values(frame)
    configurations = values.join(seed_counts(frame, sweep=sweep)).join(aggregates(frame, column))
    configurations["seeds"] = configurations["seeds"].fillna("")
    first_started = frame.groupby("config_key", sort=False)["started"].min()
    configurations = rank(configurations, f"{column}_mean", higher_is_better(metric), first_started)
    configurations["label"] = labels(label_values(frame, values).reindex(configurations.index))
    return configurations.join(tied_with_best(finished, configurations, column))


# --- labels ------------------------------------------------------------------------------------


def short_key(key: str) -> str:
    """`optimizer.lr` -> `lr`, `model.name` -> `model`: the part a reader recognises."""
    parts = key.split(".")
    return parts[0] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def short_value(value: Any) -> str:
    """Small numbers as a learning rate is written (0.01 -> 1e-2, 0.00025 -> 2.5e-4); commas
    left out, so that labels can be listed comma-separated."""
    if pd.isna(value):
        return "unset"
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text.replace(",", "")
    if number == 0 or not math.isfinite(number) or abs(number) >= SCIENTIFIC_BELOW:
        return text
    mantissa, exponent = f"{number:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def label_values(frame: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """What names the configurations: the values that vary, or, when none does (a single
    configuration), its learning rate, the knob a sweep turns."""
    lr = PARAM + LR_KEY
    if not values.columns.empty or lr not in frame.columns:
        return values
    named = frame.groupby("config_key", sort=False)[[lr]].first()
    named.columns = [LR_KEY]
    return named


def labels(values: pd.DataFrame) -> pd.Series:
    """Each configuration named by the config values that vary ("lr 1e-3", "model mlp / lr 1e-3"),
    or by its config_key when nothing varies."""
    keys = [short_key(c) for c in values.columns]
    if len(set(keys)) < len(keys):  # say model.name and optimizer.name: keep the full keys
        keys = list(values.columns)
    texts = [
        " / ".join(f"{k} {short_value(v)}" for k, v in zip(keys, row))
        if not pd.isna(list(row)).all()
        else f"{UNNAMED} {index[:8]}"  # nothing varies, or a job that logged no config
        for index, row in zip(values.index, values.itertuples(index=False))
    ]
    return pd.Series(texts, index=values.index, dtype=object)


def join_labels(texts: list[str]) -> str:
    """ "lr 1e-3", "lr 3e-3" -> "lr 1e-3 and 3e-3" (the key once when all name the same one)."""
    heads = {t.split(" ", 1)[0] for t in texts}
    same_key = heads != {UNNAMED} and len(heads) == 1 and all(" " in t and " / " not in t for t in texts)
    parts = texts[:1] + [t.split(" ", 1)[1] if same_key else t for t in texts[1:]]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --- is the winner a winner? -------------------------------------------------------------------


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`). With no
    spread on either side the statistic is 0/0: identical means are then tied (p = 1), different
    ones distinguishable (p = 0)."""
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        # One constant side (deterministic seeds agree) makes scipy warn of precision loss in
        # its variance; the other side's spread keeps the statistic well defined.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def tied_with_best(finished: pd.DataFrame, configurations: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per configuration, whether it is within noise of the best (the first of `configurations`):
    "best", "yes (p=0.41)" when Welch's t-test on the seeds' `column` values cannot tell them apart
    at level ALPHA (p >= ALPHA), "no (p=0.003)" when it can, "not enough seeds" when either side
    has fewer than two. Also the `p_value` (NaN where there is none)."""
    samples = {key: rows[column].dropna().to_numpy(dtype=float) for key, rows in finished.groupby("config_key")}
    best = configurations.index[0]
    rows = []
    for key in configurations.index:
        a, b = samples.get(best, np.empty(0)), samples.get(key, np.empty(0))
        if key == best:
            rows.append((BEST, float("nan")))
        elif min(len(a), len(b)) < 2:
            rows.append((NOT_ENOUGH_SEEDS, float("nan")))
        else:
            p = welch_p(a, b)
            rows.append((f"{TIED if p >= ALPHA else DISTINCT} ({p_text(p)})", p))
    return pd.DataFrame(rows, index=configurations.index, columns=["tied_with_best", "p_value"])


def tied_keys(configurations: pd.DataFrame) -> list[str]:
    """The config keys of the best configuration and of those within noise of it (the best
    alone when the others are distinguishable or too few to tell), best first."""
    if configurations.empty:
        return []
    tied = (configurations["tied_with_best"] == BEST) | (configurations["p_value"] >= ALPHA)
    return list(configurations.index[tied])


def tied_set(configurations: pd.DataFrame) -> str:
    """The labels of `tied_keys`, comma-separated."""
    return ", ".join(configurations.loc[tied_keys(configurations), "label"])


def describe(row: pd.Series) -> str:
    """'1 of 3 seeds finished, 2 failed': what a configuration's seeds did."""
    n, planned = int(row["n"]), int(row["planned"])
    parts = [f"{n} of {planned} seeds finished"]
    parts += [f"{int(row[k])} {k}" for k in ("failed", "killed", "pruned") if row[k]]
    other = planned - n - int(row["failed"]) - int(row["killed"])
    parts += [f"{other} not run or still running"] if other else []
    return ", ".join(parts)


def noise_verdict(configurations: pd.DataFrame) -> str:
    """Whether the best configuration stands out from the others (Welch's t-test at ALPHA)."""
    best, others = configurations.iloc[0], configurations.iloc[1:]
    others = others[others["n"] > 0]  # nothing finished: completeness_verdict names them
    if others.empty:
        return f"{best['label']} is the only configuration: nothing to compare it with"
    if best["n"] < 2:
        return f"not enough seeds to tell (n < 2): repeat with {REPEAT_HINT}"
    p = others["p_value"]
    tied, distinct, unknown = others[p >= ALPHA], others[p < ALPHA], others[p.isna()]
    parts = []
    if not tied.empty:
        low, high = tied["p_value"].min(), tied["p_value"].max()
        p = f"{low:.2g}" if len(tied) == 1 else f"{low:.2g} to {high:.2g}"
        parts.append(
            f"{join_labels([best['label'], *tied['label']])} are within noise of each other "
            f"(Welch's t-test, p = {p} >= {ALPHA}); run more seeds to separate them"
        )
    elif not distinct.empty:
        which = "every other configuration" if unknown.empty else join_labels(list(distinct["label"]))
        parts.append(f"{best['label']} is best, distinguishable from {which} (p < {ALPHA})")
    if not unknown.empty:
        parts.append(f"not enough seeds to tell {best['label']} from {join_labels(list(unknown['label']))} (n < 2)")
    return "; ".join(parts)


def completeness_verdict(configurations: pd.DataFrame, mean: str, higher: bool) -> str:
    """Says when the ranking had to put a better mean after complete configurations, or when
    the best is itself incomplete ("" when neither)."""
    best = configurations.iloc[0]
    nothing = configurations[configurations["n"] == 0]
    parts = [f"no seed of {join_labels(list(nothing['label']))} finished"] if not nothing.empty else []
    if not best["complete"]:
        return "; ".join([f"no configuration is complete; {best['label']}: {describe(best)}", *parts])
    incomplete = configurations[~configurations["complete"] & configurations[mean].notna()]
    if not incomplete.empty:
        top = incomplete.loc[incomplete[mean].idxmax() if higher else incomplete[mean].idxmin()]
        if (top[mean] > best[mean]) if higher else (top[mean] < best[mean]):
            parts.insert(
                0,
                f"{top['label']} has the best mean but is incomplete ({describe(top)}), "
                "so it ranks after the complete configurations",
            )
    return "; ".join(parts)


def verdict(configurations: pd.DataFrame, metric: str = names.OBJECTIVE) -> str:
    """One line on the ranking: is the best distinguishable from the rest, and is it complete."""
    if configurations.empty:
        return "no finished configuration to rank"
    mean = mean_column(configurations, metric)
    if configurations[mean].isna().all():
        return f"no finished run has {metric}: nothing to rank"
    parts = [noise_verdict(configurations), completeness_verdict(configurations, mean, higher_is_better(metric))]
    return "; ".join(p for p in parts if p)


# --- the winner --------------------------------------------------------------------------------


def best_run(
    frame: pd.DataFrame,
    metric: str = names.OBJECTIVE,
    *,
    sweep: bool = False,
    configurations: Optional[pd.DataFrame] = None,
) -> Optional[pd.Series]:
    """The best seed of the best configuration (the first of `group(frame, metric)`: complete
    configurations first, then by mean `metric` over seeds, in its direction); None when no
    finished run has the metric. `metric` is a MLflow metric name or a table column; pass
    `configurations` when already grouped that way."""
    finished = finished_runs(frame)
    column = metric_column(finished, metric) if not finished.empty else None
    if column is None:
        return None
    if configurations is None:
        configurations = group(frame, metric, sweep=sweep)
    candidates = finished[(finished["config_key"] == configurations.index[0]) & finished[column].notna()]
    candidates = candidates.sort_values("started")  # ties: the earliest seed
    values = pd.to_numeric(candidates[column])
    return candidates.loc[values.idxmax() if higher_is_better(metric) else values.idxmin()]


def summarize(frame: pd.DataFrame, metric: str = names.OBJECTIVE) -> tuple[dict[str, Any], pd.DataFrame]:
    """Counts by status, the best configuration (complete ones first, then by mean over seeds)
    and its best seed, whether it stands out (`tied_with_best`, `verdict`), and the
    per-configuration table (`group`), for a sweep's children as `frame` (hw4.runs.table). Ranked
    by `metric`, the sweep's tracking.objective (by default the best epoch's validation accuracy);
    runs replaced by a later attempt are left out by the caller. Strings are for tags, numbers
    (and booleans) for metrics."""
    statuses = frame["status"]
    summary: dict[str, Any] = {
        "jobs": len(frame),
        "jobs_finished": int((statuses == FINISHED).sum()),
        "jobs_failed": int((statuses == FAILED).sum()),
        "jobs_killed": int((statuses == KILLED).sum()),
        "jobs_pruned": int(frame["pruned"].sum()) if not frame.empty else 0,
        names.RANKED_BY: metric,
    }
    configurations = group(frame, metric, sweep=True)
    summary["verdict"] = verdict(configurations, metric)
    if not configurations.empty:
        summary.update(
            configurations=len(configurations), configurations_complete=int(configurations["complete"].sum())
        )
    best = best_run(frame, metric, configurations=configurations)
    if best is not None:
        row = configurations.loc[best["config_key"]]
        summary.update(
            best_run_id=best["run_id"],
            best_run_name=best["run"],
            best_lr=float(best["lr"]),
            best_model=best["model"],
            best_config_key=best["config_key"],
            best_config_label=row["label"],
            best_config_runs=int(row["n"]),
            best_config_planned=int(row["planned"]),
            best_config_complete=bool(row["complete"]),
            best_config_mean_val_categorical_accuracy=float(row["best_val_accuracy_mean"]),
            best_config_mean_test_categorical_accuracy=float(row["test_accuracy_mean"]),
            best_val_categorical_accuracy=float(best["best_val_accuracy"]),
            best_test_categorical_accuracy=float(best["test_accuracy"]),
            tied_with_best=_tag(tied_set(configurations)),
        )
    summary["verdict"] = _tag(summary["verdict"])
    return summary, configurations


def _tag(text: str) -> str:
    """`text` cut to what every MLflow store keeps in a tag value."""
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 1] + "…"
