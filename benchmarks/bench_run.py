"""Whole-run speed: `hw4-train` end to end against the same training as a plain Keras script.

    python benchmarks/bench_run.py                       # 3 rounds: about 12 minutes here
    python benchmarks/bench_run.py --rounds 5 --write BENCHMARKS.md
    python benchmarks/bench_run.py --code /tmp/old-checkout   # time another checkout's hw4
    python benchmarks/bench_run.py --before /tmp/old-checkout # and that one too, in the same rounds

Every measurement is a cold process (or, for the sweep, one process for all jobs), timed from
launch to exit, alternating hw4 and the plain script within each round:

- `python -m hw4.train +experiment=part3_mlp trainer.epochs=N` (tracking, checkpoints, figures,
  the logged model: everything a user gets) against `benchmarks/plain_keras_mlp.py --epochs N`
  (the homework's Part 3 in plain Keras: load, split, fit, evaluate), for each N in --epochs;
- `hw4-train +experiment=part3_mlp trainer.epochs=3` exactly as a user types it (the console
  script, its default progress bar, no environment set, its own folder and store), so that a
  harness's settings cannot flatter hw4: the row "as typed";
- 5-job in-process sweeps, `hw4.train -m optimizer.lr=...` at 3 and at 10 epochs, against five
  plain scripts run one after another. The plain sweep is not run again: five independent
  processes one after another take five times one, so it is 5 x the median plain run.

With --before, another checkout's hw4 runs the same commands in the same rounds (its own store),
so that before and after are measured side by side.

Both sides run with verbose=0 and the same data folder. hw4 logs to a sqlite store in a
temporary folder, created before the first round (so no run pays for creating it).

The breakdown of hw4's fixed cost comes from the runs themselves: each run logs its steps as
`time_*` metrics (hw4/runtime/timing.py), which this script reads back from the store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
PLAIN = Path(__file__).resolve().parent / "plain_keras_mlp.py"
SWEEP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SWEEPS = {3: 0.6, 10: 0.3}  # sweep epochs: at most this ratio to 5 plain scripts (issues 13, 24)
PRESET_LR = 0.01  # part3_mlp's learning rate, also the plain script's default
STEPS = ("startup", "imports", "store", "data", "build", "fit", "evaluate", "log_model", "wait_background", "other")
TARGETS = {3: 1.0, 20: 0.55}  # at most this ratio (issue 24; issue 13 asked 0.65x at 20)
AS_TYPED_EPOCHS = 3  # the short run, where fixed costs show: also timed as a user types it
LATER_JOB_TARGET_S = 1.5


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds


def hw4_command(args: argparse.Namespace, epochs: int, sweep_lrs: str = "") -> list[str]:
    sweep = ["--multirun", f"optimizer.lr={sweep_lrs}"] if sweep_lrs else []
    return [sys.executable, "-m", "hw4.train", *sweep[:1], "+experiment=part3_mlp", f"trainer.epochs={epochs}",
            f"data.dir={args.data_dir}", "trainer.verbose=0", *sweep[1:]]  # fmt: skip


def as_typed_command(args: argparse.Namespace, epochs: int) -> list[str]:
    """hw4-train as the README has users type it: the console script, default verbosity."""
    return ["hw4-train", "+experiment=part3_mlp", f"trainer.epochs={epochs}", f"data.dir={args.data_dir}"]


def plain_command(args: argparse.Namespace, epochs: int, lr: float = PRESET_LR) -> list[str]:
    return [sys.executable, str(PLAIN), "--data-dir", args.data_dir, "--epochs", str(epochs), "--lr", str(lr)]


def run_rows(store_uri: str) -> list[dict]:
    """Every hw4 run in the benchmark's store: epochs, sweep membership, its time_* metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("hw4")
    rows = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000, order_by=["start_time ASC"]):
        rows.append({
            "epochs": int(run.data.params.get("trainer.epochs", 0)),
            "parent": run.data.tags.get("mlflow.parentRunId"),
            "is_parent": run.data.tags.get("sweep") == "parent",
            "start": run.info.start_time / 1000, "end": (run.info.end_time or 0) / 1000,
            "times": {k[len("time_"):-2]: v for k, v in run.data.metrics.items() if k.startswith("time_")},
            "run_id": run.info.run_id,
            "lr": run.data.params.get("optimizer.lr"),
            "test_accuracy": run.data.metrics.get("test_categorical_accuracy"),
        })  # fmt: skip
    return rows


def later_job_costs(rows: list[dict]) -> list[float]:
    """Per sweep job after the first: its share of the sweep's wall time (from its start to the
    next job's start, or to its parent's end) minus its epochs (fit) and its evaluation."""
    costs = []
    parents = {r["run_id"]: r for r in rows if r["is_parent"]}
    for parent_id, parent in parents.items():
        jobs = sorted((r for r in rows if r["parent"] == parent_id), key=lambda r: r["start"])
        for job, following in zip(jobs[1:], jobs[2:] + [None]):
            if "fit" not in job["times"]:  # a version of hw4 that did not time its steps
                continue
            until = following["start"] if following else parent["end"]
            costs.append(until - job["start"] - job["times"].get("fit", 0) - job["times"].get("evaluate", 0))
    return costs


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def code_env(env: dict, code: str | None) -> dict:
    """`env` with the hw4 package of checkout `code` first on PYTHONPATH (unchanged without one)."""
    if not code:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(code).resolve()), env.get("PYTHONPATH")]))}


def create_store(work: Path, env: dict) -> str:
    """The sqlite store hw4 opens in `work` by default, created before the first timed run."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "from hw4 import tracking; tracking.connect("
                    "tracking.resolve_uri('sqlite:///mlruns/mlflow.db', '.'))"],  # fmt: skip
                   cwd=work, env=env, check=True)  # fmt: skip
    return f"sqlite:///{work}/mlruns/mlflow.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 20])
    parser.add_argument("--no-sweep", action="store_true", help="skip the 5-job sweeps")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--code", help="time the hw4 package of this checkout (put first on PYTHONPATH)")
    parser.add_argument("--before", help="also time this checkout's hw4 in the same rounds (a before column)")
    parser.add_argument("--write", help="append the tables to this Markdown file")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    sweeps = {} if args.no_sweep else SWEEPS
    args.epochs = sorted(set(args.epochs) | set(sweeps))  # a plain sweep is 5 x the plain run

    user_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # its own store, always
    env = {**user_env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    hw4_variants = {"hw4": (work, code_env(env, args.code))}  # name: (working folder, environment)
    if args.before:
        hw4_variants["before"] = (work / "before", code_env(env, args.before))
    store_uri = create_store(work, hw4_variants["hw4"][1])
    if args.before:
        create_store(*hw4_variants["before"])
    lrs = ",".join(f"{lr:g}" for lr in SWEEP_LRS)
    walls: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for epochs in args.epochs:
            runs = [("plain", plain_command(args, epochs), work, env)]
            runs += [(name, hw4_command(args, epochs), cwd, hw4_env) for name, (cwd, hw4_env) in hw4_variants.items()]
            if epochs == AS_TYPED_EPOCHS and not args.code:
                as_typed_dir = work / "as-typed" / str(round_)  # a new folder: the run creates its store
                as_typed_dir.mkdir(parents=True)
                runs.append(("as-typed", as_typed_command(args, epochs), as_typed_dir, user_env))
            for name, command, cwd, run_env in runs if round_ % 2 == 0 else runs[::-1]:
                walls.setdefault(f"{name} {epochs}", []).append(timed(command, cwd, run_env))
        for sweep_epochs in sweeps:
            sweep = hw4_command(args, sweep_epochs, lrs)
            for name, (cwd, hw4_env) in hw4_variants.items():
                walls.setdefault(f"{name} sweep {sweep_epochs}", []).append(timed(sweep, cwd, hw4_env))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in walls.items()), flush=True)

    rows = run_rows(store_uri)
    lines = [f"### Whole runs, MLP, {args.rounds} rounds, median wall seconds of cold processes", "",
             "| run | plain Keras script | " + ("hw4 before | before / plain | " if args.before else "")
             + "hw4-train | hw4 / plain | target |", "|---|---|---|---|---|" + ("---|---|" if args.before else "")]  # fmt: skip

    def row(label: str, plain: float, key: str, target: float | None) -> str:
        cells = []
        for name in ("before", "hw4") if args.before else ("hw4",):  # the before column first
            hw4 = median(walls[f"{name} {key}"])
            bold = "**" if name == "hw4" else ""
            cells.append(f"{hw4:.1f} | {bold}{hw4 / plain:.2f}x{bold}")
        ratio = median(walls[f"hw4 {key}"]) / plain
        verdict = f"at most {target:.2f}x: {'met' if ratio <= target else 'missed'}" if target else ""
        return f"| {label} | {plain:.1f} | " + " | ".join(cells) + f" | {verdict} |"

    for epochs in args.epochs:
        plain = median(walls[f"plain {epochs}"])
        lines.append(row(f"{epochs} epoch(s), part3_mlp", plain, str(epochs), TARGETS.get(epochs)))
        if f"as-typed {epochs}" in walls:
            typed = median(walls[f"as-typed {epochs}"])
            lines.append(f"| {epochs} epoch(s), `hw4-train` as typed (its own new store) | {plain:.1f} | "
                         + ("| | " if args.before else "") + f"{typed:.1f} | **{typed / plain:.2f}x** | |")  # fmt: skip
    for sweep_epochs, target in sweeps.items():
        plain_sweep = len(SWEEP_LRS) * median(walls[f"plain {sweep_epochs}"])
        label = f"{len(SWEEP_LRS)}-job lr sweep, {sweep_epochs} epochs (plain: 5 x one script)"
        lines.append(row(label, plain_sweep, f"sweep {sweep_epochs}", target))
    if sweeps:
        costs = later_job_costs(rows)
        lines += [] if not costs else ["", f"A sweep job after the first, beyond its epochs and evaluation: median **{median(costs):.2f} s** "
                  f"(range {min(costs):.2f} to {max(costs):.2f} s over {len(costs)} jobs; target at most "
                  f"{LATER_JOB_TARGET_S} s: {'met' if median(costs) <= LATER_JOB_TARGET_S else 'missed'})."]  # fmt: skip

    single = [r for r in rows if not r["parent"] and not r["is_parent"]]
    if single and single[0]["times"]:
        lines += ["", "hw4's own timings (`time_*` metrics each run logs), median seconds:", "",
                  "| step | " + " | ".join(f"{e} epoch(s)" for e in args.epochs) + (f" | {min(sweeps)}-epoch sweep: job 1 | later jobs |" if sweeps else " |"),
                  "|---|" + "---|" * (len(args.epochs) + (2 if sweeps else 0))]  # fmt: skip
        jobs = [r for r in rows if r["parent"] and r["epochs"] == min(sweeps, default=0)]  # the shortest sweep's
        first_jobs = [j for j in jobs if "startup" in j["times"]]
        later_jobs = [j for j in jobs if "startup" not in j["times"]]
        groups = [[r for r in single if r["epochs"] == e] for e in args.epochs]
        if sweeps:
            groups += [first_jobs, later_jobs]
        keys = [*STEPS, "total"]
        extra = sorted({k for r in rows for k in r["times"] if k.endswith("_background") and k not in STEPS})
        for key in keys + extra:
            cells = [median([r["times"][key] for r in g if key in r["times"]]) for g in groups]
            lines.append(f"| {key} | " + " | ".join("" if c != c else f"{c:.2f}" for c in cells) + " |")
    accuracies = sorted(
        {(r["epochs"], r["lr"], round(r["test_accuracy"], 4)) for r in rows if r["test_accuracy"] is not None}
    )
    lines += ["", "hw4's test accuracy (epochs, lr, accuracy; the same in every round): "
              + ", ".join(f"{e}, {lr}: {a:.4f}" for e, lr, a in accuracies)]  # fmt: skip
    lines += [
        "",
        f"`python benchmarks/bench_run.py --rounds {args.rounds}{' --before ...' if args.before else ''}` took {(time.perf_counter() - began) / 60:.1f} min.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(json.dumps({"walls": walls}), file=sys.stderr)
    if args.write:
        with open(args.write, "a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
