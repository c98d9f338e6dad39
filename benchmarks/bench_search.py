"""Time to the answer: the full learning-rate grid against Optuna searches that prune.

    python benchmarks/bench_search.py --data ../shared/datasets/fashion-mnist
    python benchmarks/bench_search.py --data DIR --strategies grid tpe_asha   # a subset

Every strategy trains the MLP preset (`+experiment=part3_mlp`) at 10 epochs on the real data, one
`hw4-train` process each, one after the other on this machine, into one fresh store:

- `grid`: `+sweep=lr_seeds`, 5 learning rates x 3 seeds, every epoch. Its winner and the rates
  tied with it (Welch's t-test, hw4.ranking) are the reference answer.
- `tpe_asha`, `tpe_median`, `tpe`: `hparams_search=optuna_lr` over the grid's range
  (log-uniform 1e-4 to 1e-2), `--trials` trials of at most the grid's 10 epochs, pruned by
  successive halving (ASHA), by the median rule, or not at all.

For each: epochs trained (every epoch of every run, from the store), wall time, the best learning
rate found, and whether it is in the grid's answer: its nearest grid rate (in log space) is one of
the grid's tied rates. Prints a Markdown table for BENCHMARKS.md and writes it, with the details,
as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from hw4 import names, ranking, runs
from hw4.sweep.context import SweepContext

GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]  # conf/sweep/lr.yaml
COMMON = ["+experiment=part3_mlp", "trainer.epochs=10", "trainer.verbose=0", "tracking.log_model=false"]
SEARCH = ["hparams_search=optuna_lr", "optimizer.lr=tag(log, interval(1e-4, 1e-2))"]
STRATEGIES = {
    "grid": ["+sweep=lr_seeds"],
    "tpe_asha": [*SEARCH, "hydra/sweeper/pruner=successive_halving"],
    "tpe_median": [*SEARCH, "hydra/sweeper/pruner=median"],
    "tpe": [*SEARCH, "hydra/sweeper/pruner=none"],
}


def launch(strategy: str, *, data: Path, folder: Path, trials: int, extra: list[str]) -> float:
    """Run one strategy to its end; its wall time in seconds."""
    command = ["hw4-train", *COMMON, *STRATEGIES[strategy], f"data.dir={data}", f"hydra.sweep.dir={folder / strategy}"]
    command += extra
    if strategy != "grid":
        command += [f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.study_name=bench-{strategy}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{strategy} failed:\n{done.stderr[-3000:]}")
    return elapsed


def parent_of(strategy: str, folder: Path) -> str:
    return SweepContext.load(folder / strategy).parent_run_id


def nearest_grid_rate(lr: float) -> float:
    return min(GRID, key=lambda g: abs(math.log(g) - math.log(lr)))


def trials(folder: Path, strategy: str) -> list[dict]:
    """Each trial of a strategy's study: number, state, rate, epochs reported (trained)."""
    import optuna

    storage = f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"
    study = optuna.load_study(study_name=f"bench-{strategy}", storage=storage)
    return [
        {
            "trial": t.number,
            "state": t.state.name,
            "lr": t.params.get("optimizer.lr"),
            "epochs": len(t.intermediate_values),
        }
        for t in study.trials
    ]


def measure(strategy: str, client: MlflowClient, parent: str, wall: float) -> dict:
    parent_run = client.get_run(parent)
    children = runs.training_runs(client, parent_run.info.experiment_id, parent)
    epochs = sum(len(client.get_metric_history(c.info.run_id, names.LOSS)) for c in children)
    frame = runs.table(children)
    summary, configurations = ranking.summarize(frame)
    row = {"strategy": strategy, "runs": len(children), "epochs": epochs, "wall_s": round(wall, 1)}
    row["pruned"] = summary["jobs_pruned"]
    if strategy == "grid":
        tied = frame[frame["config_key"].isin(ranking.tied_keys(configurations))]["lr"]
        row.update(best_lr=summary["best_lr"], tied_lrs=sorted({float(v) for v in tied}))
        row["best_value"] = summary["best_config_mean_val_categorical_accuracy"]
    else:
        row["best_lr"] = json.loads(parent_run.data.tags[names.OPTUNA_BEST_PARAMS])["optimizer.lr"]
        row["best_value"] = parent_run.data.metrics[names.OPTUNA_BEST_VALUE]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the real Fashion-MNIST (four IDX files)")
    parser.add_argument("--strategies", nargs="+", default=["grid", "tpe_asha", "tpe_median"], choices=STRATEGIES)
    parser.add_argument("--trials", type=int, default=10, help="trials of each Optuna search")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. a quick check: data.limit=400")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search.json"))
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-search-"))
    data = options.data.resolve()
    rows = []
    for strategy in options.strategies:
        wall = launch(strategy, data=data, folder=folder, trials=options.trials, extra=options.extra)
        client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
        rows.append(measure(strategy, client, parent_of(strategy, folder), wall))
        if strategy != "grid":
            rows[-1]["trials"] = trials(folder, strategy)
        print(f"{strategy}: {rows[-1]}", file=sys.stderr)
    grid = next((r for r in rows if r["strategy"] == "grid"), None)
    print(
        "| strategy | runs | pruned | epochs trained | epochs vs grid | wall s | wall vs grid | best lr | in the grid's answer |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        vs_epochs = f"{row['epochs'] / grid['epochs']:.2f}x" if grid else "-"
        vs_wall = f"{row['wall_s'] / grid['wall_s']:.2f}x" if grid else "-"
        answer = "-" if not grid else ("yes" if nearest_grid_rate(row["best_lr"]) in grid["tied_lrs"] else "no")
        row["in_answer"] = answer
        print(
            f"| {row['strategy']} | {row['runs']} | {row['pruned']} | {row['epochs']} | {vs_epochs} | "
            f"{row['wall_s']} | {vs_wall} | {row['best_lr']:.2g} | {answer} |"
        )
    if grid:
        print(f"\nThe grid's answer: best lr {grid['best_lr']:g}, tied with it: {grid['tied_lrs']}")
    for row in rows:
        for trial in row.get("trials", []):
            print(
                f"{row['strategy']} trial {trial['trial']}: {trial['state']}, lr {trial['lr']:.3g}, {trial['epochs']} epochs"
            )
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps({"rows": rows, "folder": str(folder), "trials": options.trials}, indent=2))


if __name__ == "__main__":
    main()
