"""`hw4-homework [OVERRIDES...]`: the whole homework under one MLflow parent run, then the report.

    hw4-homework data.dir=../shared/datasets/fashion-mnist
    hw4-homework data.dir=... trainer.epochs=1 data.limit=2000     # a quick version
    hw4-homework data.dir=... repeats=3     # each preset over seeds 0, 1, 2: mean ± std

1. The four presets (part3_mlp, part4_lenet, part4_lenet_dropout, part4_lenet_bn) run as one
   `hw4-train` sweep, so the sweep callback gives them one parent run; OVERRIDES go to every job.
2. Part 1 (`hw4-scratch`) runs nested under the same parent (tracking.* overrides apply).
3. The report is built from the store (hw4.commands.report) into reports/<parent run id>/ and logged to
   the parent run. `hw4-report parent=<id>` rebuilds it later without training.

The steps are separate processes, as a user would run them; this module only sequences them.
They run with this interpreter (`python -m hw4.train`), not whatever `hw4-train` is first on PATH.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hw4.commands.report import HOMEWORK_TAG, PRESETS

COMMAND_TAG = "command"  # the parent records the command line, for the report's results
REPEATS = "repeats"  # hw4-homework repeats=3: each preset over seeds 0, 1 and 2


def split_repeats(arguments: list[str]) -> tuple[int, list[str]]:
    """`repeats=N` (default 1) out of the command line; the rest are hw4-train overrides."""
    counts = [a for a in arguments if a.startswith(f"{REPEATS}=")]
    rest = [a for a in arguments if not a.startswith(f"{REPEATS}=")]
    if not counts:
        return 1, rest
    value = counts[-1].split("=", 1)[1]
    if not value.isdigit() or int(value) < 1:
        print(f"{REPEATS} must be a whole number >= 1, got {value!r}", file=sys.stderr)
        sys.exit(2)
    return int(value), rest


def portable(argument: str) -> str:
    """`key=/abs/path` as a path relative to the launch folder, as the report records the
    command: the same on any machine with the same layout, and no one's home folder in it."""
    key, sep, value = argument.partition("=")
    if sep and value.startswith("/") and Path(value).exists():
        return f"{key}={os.path.relpath(value)}"
    return argument


def tracking_uri(tracking_overrides: list[str]) -> str:
    """The store hw4-train used: its tracking.uri override, else what TrackingConfig.uri
    resolves to (MLFLOW_TRACKING_URI, else the embedded sqlite store)."""
    from hydra import compose, initialize_config_dir

    from hw4 import config

    config.register_configs()
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=tracking_overrides)
    return cfg.tracking.uri


def main() -> None:
    repeats, overrides = split_repeats(sys.argv[1:])
    started = time.perf_counter()
    # The random suffix keeps two homework runs started in the same second apart.
    sweep_dir = Path("multirun") / f"homework-{time.strftime('%Y-%m-%d_%H-%M-%S')}-{uuid.uuid4().hex[:6]}"
    seeds = [f"trainer.seed={','.join(str(s) for s in range(repeats))}"] if repeats > 1 else []
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "hw4.train",
            "-m",
            f"+experiment={','.join(PRESETS)}",
            *seeds,
            f"hydra.sweep.dir={sweep_dir}",
            *overrides,
        ]  # fmt: skip
    )

    from hw4.sweep.context import SweepContext

    context = SweepContext.load(sweep_dir)
    if context is None:  # the sweep never started (bad overrides): hw4-train said why
        sys.exit(train.returncode or 1)

    tracking_overrides = [o for o in overrides if o.lstrip("+~").startswith("tracking.")]
    scratch = subprocess.run(
        [
            sys.executable,
            "-m",
            "hw4.commands.scratch",
            f"parent_run_id={context.parent_run_id}",
            *tracking_overrides,
            f"hydra.run.dir={sweep_dir / 'scratch'}",
        ]  # fmt: skip
    )

    from hw4 import tracking
    from hw4.commands import report
    from hw4.sweep.context import store_uri

    client = tracking.client_for(store_uri(context, tracking_uri(tracking_overrides), os.getcwd()))
    client.set_tag(context.parent_run_id, HOMEWORK_TAG, "true")
    command = ["hw4-homework", *(portable(tracking.redact(a)) for a in sys.argv[1:])]
    client.set_tag(context.parent_run_id, COMMAND_TAG, " ".join(shlex.quote(a) for a in command))
    html = report.build(client, context.parent_run_id, Path("reports") / context.parent_run_id)
    print(f"report: {html} and {html.with_name(report.REPORT_MD)}")
    print(f"parent run {context.parent_run_id}; total wall time {time.perf_counter() - started:.0f} s")
    sys.exit(train.returncode or scratch.returncode)


if __name__ == "__main__":
    main()
