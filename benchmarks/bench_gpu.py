"""A sweep as one program (issue 35), hw4's own training core measured on a GPU (or this CPU).

For each model (the homework's MLP and LeNet-5, hw4/models.py) it times the epochs of:
  fit        Keras' own `model.fit`, the homework's way, on the backend in use;
  members=K  hw4's epoch loop (hw4.training.loop.train, as hw4-train runs it) over K members:
             K=1 is one run alone; K>1 a learning-rate sweep as one program (on JAX, `jax.vmap`
             of the epoch over the members' stacked states), each member its own learning rate
             (log-spaced 1e-4 to 1e-2), initial weights (its seed) and batch order.
Each row gives the median epoch time over epochs 2 to E (the first compiles), the time per
member, and the members' validation accuracies after E epochs. `--check` also trains the last
member alone and compares its loss history with its history in the program (the equality a
sweep program owes the job trained alone). Everything but MLflow: the loop, its callbacks and
per-epoch host work (batch orders, states back into each member's model) are timed as they run.

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --data ../shared/datasets/fashion-mnist \\
        --models mlp lenet --members 1 16 --epochs 4 --check --out gpu.json
    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --limit 2000 --epochs 3 --members 1 4   # a smoke run

On the GPU machine (its Python is 3.12; JAX with CUDA is there; keras, Hydra and OmegaConf are
not), from this checkout, with the wheels and the data carried in ignored folders:
    mkdir -p .git/info .data; echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
    cp ../shared/datasets/fashion-mnist/*.gz .data/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl keras==3.15.1 namex optree \\
        hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 PyYAML
and there (carry .whl and .data):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    KERAS_BACKEND=jax python3 benchmarks/bench_gpu.py --data .data --members 1 16 128 --check --out $OUT/gpu.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hw4 from this checkout, not installed

import keras  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from hw4 import models, names  # noqa: E402
from hw4.data import Splits  # noqa: E402
from hw4.runtime.signals import RunSignals  # noqa: E402
from hw4.training import loop, runtime, schedules  # noqa: E402

BUILDERS = {
    "mlp": (lambda: models.mlp([784]), [784]),
    "lenet": (lambda: models.lenet([28, 28, 1]), [28, 28, 1]),
}


def idx(path: Path, header: int) -> np.ndarray:
    """One gzip-compressed IDX file's bytes after its header (16 for images, 8 for labels)."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=header)


def load(folder: str | None, limit: int | None, shape: list[int]) -> Splits:
    """The development set, split 8:2 (validation first), scaled and one-hot; random pixels in
    the IDX files' shapes where no folder is given (timing only)."""
    if folder:
        x = idx(Path(folder, "train-images-idx3-ubyte.gz"), 16).reshape(-1, 28, 28)
        y = idx(Path(folder, "train-labels-idx1-ubyte.gz"), 8)
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8), rng.integers(0, 10, 60000)
    if limit:
        x, y = x[:limit], y[:limit]
    x = (x.astype(np.float32) / 255.0).reshape((-1, *shape))
    y = np.eye(10, dtype=np.float32)[y]
    n_val = len(x) // 5
    return Splits(x[n_val:], y[n_val:], x[:n_val], y[:n_val], x[:1], y[:1])


class Clock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def member(name: str, seed: int, lr: float, callbacks: list) -> loop.Member:
    keras.utils.set_random_seed(seed)
    model = BUILDERS[name][0]()
    runtime.compile_model(
        model, schedules.build_optimizer(OmegaConf.create({"name": "adam", "lr": float(lr), "kwargs": {}}))
    )
    return loop.Member(model=model, callbacks=callbacks, seed=seed, peak=float(lr))


def sweep_rates(k: int) -> np.ndarray:
    """K members' learning rates: log-spaced from 1e-4 to 1e-2 (one member: the homework's 1e-3)."""
    return np.array([1e-3]) if k == 1 else np.logspace(-4, -2, k)


def run_members(name: str, splits: Splits, seeds: list[int], rates: np.ndarray, epochs: int, batch: int) -> dict:
    """Members (seed, rate) trained together by hw4's loop; the epoch time is the first
    member's (the others' epochs end at the same call)."""
    clock = Clock()
    members = [member(name, s, lr, [clock] if i == 0 else []) for i, (s, lr) in enumerate(zip(seeds, rates))]
    settings = loop.LoopSettings(epochs=epochs, batch_size=batch, eval_batch_size=2000, schedule=1.0)
    loop.train(members, splits, settings, RunSignals())
    k = len(members)
    epoch_s = statistics.median(clock.times[1:]) if len(clock.times) > 1 else clock.times[0]
    return {
        "model": name, "variant": f"members={k}" if k > 1 else "alone (hw4 loop)", "members": k,
        "epoch_s": epoch_s, "per_member_s": epoch_s / k, "first_epoch_s": clock.times[0],
        "val_accuracy": [m.history[names.VAL_ACCURACY][-1] for m in members], "learning_rates": rates.tolist(),
        "seeds": seeds, "losses": [m.history[names.LOSS] for m in members],
    }  # fmt: skip


def run_fit(name: str, splits: Splits, epochs: int, batch: int) -> dict:
    keras.utils.set_random_seed(0)
    model = BUILDERS[name][0]()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    clock = Clock()
    model.fit(splits.x_train, splits.y_train, batch_size=batch, epochs=epochs, verbose=0, callbacks=[clock])
    _, accuracy = model.evaluate(splits.x_val, splits.y_val, batch_size=1024, verbose=0)
    epoch_s = statistics.median(clock.times[1:]) if len(clock.times) > 1 else clock.times[0]
    return {
        "model": name, "variant": "fit", "members": 1, "epoch_s": epoch_s, "per_member_s": epoch_s,
        "first_epoch_s": clock.times[0], "val_accuracy": [accuracy], "learning_rates": [1e-3],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder of the four IDX files (default: random pixels, timing only)")
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=list(BUILDERS))
    parser.add_argument("--members", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--limit", type=int, help="the first N development images only")
    parser.add_argument("--no-fit", action="store_true", help="leave out Keras' own fit")
    parser.add_argument("--check", action="store_true", help="the last member of the program against it alone")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    backend = keras.backend.backend()
    device = platform.processor() or platform.machine()
    if backend == "jax":
        import jax

        device = f"{jax.devices()[0].device_kind}, jax {jax.__version__}"
    print(f"keras {keras.__version__} on {backend} ({device})")
    rows = []
    for name in args.models:
        splits = load(args.data, args.limit, BUILDERS[name][1])
        if not args.no_fit:
            rows.append(run_fit(name, splits, args.epochs, args.batch))
        for k in args.members:
            seeds, rates = list(range(k)), sweep_rates(k)
            rows.append(run_members(name, splits, seeds, rates, args.epochs, args.batch))
            if args.check and k > 1:  # the last member (its own seed and rate) trained alone
                alone = run_members(name, splits, seeds[-1:], rates[-1:], args.epochs, args.batch)
                together = np.array(rows[-1]["losses"][-1])
                rows[-1]["last_member_alone_max_loss_diff"] = float(np.abs(together - alone["losses"][0]).max())
        for row in rows:
            if row["model"] == name:
                accuracies, rates = row["val_accuracy"], row["learning_rates"]
                diff = row.get("last_member_alone_max_loss_diff")
                extra = f", last member vs alone: {diff:.2e}" if diff is not None else ""
                print(f"| {name} | {row['variant']} | {row['epoch_s'] * 1e3:.1f} ms | {row['per_member_s'] * 1e3:.2f} ms "
                      f"| lr {min(rates):.0e}-{max(rates):.0e} | {min(accuracies):.3f}-{max(accuracies):.3f}{extra} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
