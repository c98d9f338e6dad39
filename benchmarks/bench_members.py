"""A sweep as one program (issue 35), end to end: the same `sweep=lr_seeds` grid (5 rates x 3
seeds = 15 jobs, tracking included) timed side by side, one process each, one after another:

  before        the sweep as hw4 ran it at --before (a commit), job by job (Hydra's basic launcher)
  job_by_job    this checkout, job by job
  members_tf    this checkout, hydra/launcher=members, KERAS_BACKEND=tensorflow
  members_jax   this checkout, hydra/launcher=members, KERAS_BACKEND=jax

    python benchmarks/bench_members.py --data ../shared/datasets/fashion-mnist --model mlp --epochs 10
    python benchmarks/bench_members.py --data ../shared/datasets/fashion-mnist --model lenet --epochs 3

`before` runs from a git worktree of --before (`python -m hw4.train` with that tree first on
PYTHONPATH, the installed dependencies otherwise). Each variant gets a fresh sqlite store. Prints
a Markdown row per variant (wall time, ratio to `before`, the best run's validation accuracy) and
writes them as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run(variant: str, args: argparse.Namespace, folder: Path, before: Path) -> dict:
    store = folder / variant / "mlflow.db"
    store.parent.mkdir(parents=True)
    overrides = [
        "+sweep=lr_seeds", f"model={args.model}", f"trainer.epochs={args.epochs}", "trainer.verbose=0",
        "tracking.log_model=false", f"data.dir={Path(args.data).resolve()}", f"tracking.uri=sqlite:///{store}",
        f"hydra.sweep.dir={folder / variant / 'sweep'}",
    ]  # fmt: skip
    env = {**os.environ, "KERAS_BACKEND": "jax" if variant == "members_jax" else "tensorflow"}
    if variant == "before":
        env["PYTHONPATH"] = str(before)
        command = [sys.executable, "-m", "hw4.train", *overrides]
    else:
        command = ["hw4-train", *overrides, *(["hydra/launcher=members"] if variant.startswith("members") else [])]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder / variant, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    children = [r for r in runs if "best_val_categorical_accuracy" in r.data.metrics]
    best = max(r.data.metrics["best_val_categorical_accuracy"] for r in children)
    return {"variant": variant, "wall_s": wall, "runs": len(children), "best_val_accuracy": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--before", default="ee28738", help="the commit to compare with")
    parser.add_argument("--variants", nargs="+", default=["before", "job_by_job", "members_tf", "members_jax"])
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-members-") as tmp:
        folder = Path(tmp)
        before = folder / "before-tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)  # fmt: skip
        try:
            rows = [run(variant, args, folder, before) for variant in args.variants]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], capture_output=True)
    base = next((r["wall_s"] for r in rows if r["variant"] == "before"), None)
    print(f"{args.model}, sweep=lr_seeds (15 jobs), {args.epochs} epochs; {cpu()}, {os.cpu_count()} cores")
    print("| variant | wall | vs before | runs | best val accuracy |\n|---|---|---|---|---|")
    for row in rows:
        row["ratio"] = row["wall_s"] / base if base else None
        ratio = f"{row['ratio']:.2f}x" if base else "-"
        print(
            f"| {row['variant']} | {row['wall_s']:.1f} s | {ratio} | {row['runs']} | {row['best_val_accuracy']:.4f} |"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"model": args.model, "epochs": args.epochs, "cpu": cpu(), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
