"""`hw4-homework [OVERRIDES...]`: the whole homework under one MLflow parent run, then the report.

    hw4-homework data.dir=../shared/datasets/fashion-mnist
    hw4-homework data.dir=... trainer.epochs=1 data.limit=2000     # a quick version

1. The four presets (part3_mlp, part4_lenet, part4_lenet_dropout, part4_lenet_bn) run as one
   `hw4-train` sweep, so the sweep callback gives them one parent run; OVERRIDES go to every job.
2. Part 1 (`hw4-scratch`) runs nested under the same parent (tracking.* overrides apply).
3. The report is built from the store (hw4.report) into reports/<parent run id>/ and logged to
   the parent run. `hw4-report parent=<id>` rebuilds it later without training.

The steps are separate processes, as a user would run them; this module only sequences them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hw4.report import HOMEWORK_TAG, PRESETS


def main() -> None:
    overrides = sys.argv[1:]
    started = time.perf_counter()
    sweep_dir = Path("multirun") / f"homework-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    train = subprocess.run(
        [
            "hw4-train", "-m", f"+experiment={','.join(PRESETS)}",
            f"hydra.sweep.dir={sweep_dir}", *overrides,
        ]  # fmt: skip
    )

    from hw4.sweep import SweepContext

    context = SweepContext.load(sweep_dir)
    if context is None:  # the sweep never started (bad overrides): hw4-train said why
        sys.exit(train.returncode or 1)

    tracking_overrides = [o for o in overrides if o.lstrip("+~").startswith("tracking.")]
    scratch = subprocess.run(
        ["hw4-scratch", f"parent_run_id={context.parent_run_id}", *tracking_overrides,
         f"hydra.run.dir={sweep_dir / 'scratch'}"]  # fmt: skip
    )

    from mlflow.tracking import MlflowClient

    from hw4 import report

    client = MlflowClient(context.tracking_uri)
    client.set_tag(context.parent_run_id, HOMEWORK_TAG, "true")
    html = report.build(client, context.parent_run_id, Path("reports") / context.parent_run_id)
    print(f"report: {html} and {html.with_name(report.REPORT_MD)}")
    print(f"parent run {context.parent_run_id}; total wall time {time.perf_counter() - started:.0f} s")
    sys.exit(train.returncode or scratch.returncode)
