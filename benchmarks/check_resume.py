"""Kill and resume on the real data: a resumed run must repeat the uninterrupted one exactly.

    python benchmarks/check_resume.py                      # MLP, 5 epochs, killed after epoch 2
    python benchmarks/check_resume.py --model lenet --epochs 4

Runs `python -m hw4.train model=M trainer.deterministic=true` twice on the real Fashion-MNIST:
once left alone, once killed with SIGKILL as soon as the store holds `--kill-after` epochs (the
kill lands in the next epoch, as a crash would) and then resumed with `trainer.resume=<run id>`.
Prints both `val_loss` histories in full precision and exits 1 if they differ.
`tests/test_reliability.py` checks the same on tiny synthetic data in CI.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"


def val_loss(client, run_id: str) -> list[float]:
    history = sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)
    return [m.value for m in history]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--kill-after", type=int, default=2, help="epochs in the store before the kill")
    args = parser.parse_args()
    if not (args.data / "train-images-idx3-ubyte.gz").is_file():
        print(f"no Fashion-MNIST in {args.data}", file=sys.stderr)
        return 2
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        command = [
            sys.executable, "-m", "hw4.train", f"model={args.model}", f"trainer.epochs={args.epochs}",
            "trainer.deterministic=true", "trainer.verbose=0", "tracking.log_model=false",
            f"data.dir={args.data}", f"tracking.uri={uri}",
        ]  # fmt: skip
        subprocess.run([*command, "tracking.run_name=alone"], cwd=folder, check=True, capture_output=True)
        client = MlflowClient(uri)
        experiment_id = client.get_experiment_by_name("hw4").experiment_id

        def run_named(name: str):
            found = client.search_runs([experiment_id], f"attributes.run_name = '{name}'")
            return found[0] if found else None

        killed = subprocess.Popen([*command, "tracking.run_name=killed"], cwd=folder, stdout=subprocess.DEVNULL)
        while True:
            run = run_named("killed")
            if run is not None and len(val_loss(client, run.info.run_id)) >= args.kill_after:
                break
            if killed.poll() is not None:
                print("the run ended before it could be killed: raise --epochs", file=sys.stderr)
                return 2
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        run_id = run.info.run_id
        at_kill = len(val_loss(client, run_id))
        subprocess.run(
            [*command, "tracking.run_name=killed", f"trainer.resume={run_id}"],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        alone, resumed = val_loss(client, run_named("alone").info.run_id), val_loss(client, run_id)

    print(
        f"{args.model}, {args.epochs} epochs, deterministic; SIGKILL with {at_kill} epochs in the store, then resumed"
    )
    print(f"{'epoch':>5}  {'left alone':>20}  {'killed and resumed':>20}")
    for epoch, (a, b) in enumerate(zip(alone, resumed)):
        print(f"{epoch + 1:>5}  {a:>20.17g}  {b:>20.17g}{'' if a == b else '  DIFFERENT'}")
    same = alone == resumed and len(alone) == args.epochs
    print("identical" if same else "NOT identical")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
