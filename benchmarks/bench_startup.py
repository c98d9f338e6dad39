"""How long `hw4-train --help` and `hw4-train --cfg job` take, for one or more checkouts.

    python benchmarks/bench_startup.py                       # this checkout
    python benchmarks/bench_startup.py . ../before-checkout  # side by side, alternating

Each command runs in a fresh interpreter with the checkout first on sys.path, the checkouts in
turn (alternating, so that a machine whose speed drifts treats them alike); prints the median
and the spread of `repeats` runs per checkout and command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job", "+experiment=part4_lenet_bn"],
}  # + : older checkouts too


def run_once(checkout: Path, args: list[str]) -> float:
    code = f"import sys; sys.argv = ['hw4-train', *{args!r}]; from hw4.train import cli; cli()"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: hw4-train {' '.join(args)} failed: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[Path(".")])
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    checkouts = [c.resolve() for c in options.checkouts]
    times: dict[tuple[str, Path], list[float]] = {}
    for name, args in COMMANDS.items():
        for checkout in checkouts:
            run_once(checkout, args)  # warm the file cache
        for _ in range(options.repeats):
            for checkout in checkouts:
                times.setdefault((name, checkout), []).append(run_once(checkout, args))
    print("| command | checkout | median s | min s | max s |\n|---|---|---|---|---|")
    for (name, checkout), values in times.items():
        print(
            f"| hw4-train {name} | {checkout.name} | {statistics.median(values):.2f} | {min(values):.2f} |"
            f" {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
