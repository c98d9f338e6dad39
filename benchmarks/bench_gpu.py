"""A sweep as one program, measured (issue 35): Keras 3's stateless API under JAX, one jitted
epoch per call, and K members of a learning-rate sweep trained side by side by `jax.vmap`.

For each model (the homework's MLP and LeNet-5, hw4/models.py), it times the epochs of:
  fit        Keras' own `model.fit` (KERAS_BACKEND=jax), the homework's way;
  scan       one member: one `jax.jit` call per epoch, a `lax.scan` over its batches of
             `model.stateless_call` and `optimizer.stateless_apply`;
  members=K  K members in one program (`jax.vmap` of that epoch): each its own learning rate
             (the optimizer's `learning_rate` variable), initial weights (its seed) and batch
             order (its own permutation).
Each row gives the median epoch time over epochs 2 to E (the first compiles), the time per
member, and the members' validation accuracies after E epochs. `--check` also trains member 0
alone and compares its history with member 0 of the program: the same seed must give the same
training, within float tolerance (the equality a sweep program owes the job trained alone).

Runs on this CPU (JAX installs here: pip install 'jax[cpu]') and on a GPU machine. No
TensorFlow, MLflow or Hydra (hw4.models alone, which needs keras): on the GPU machine only keras,
namex and optree need carrying.

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --data ../shared/datasets/fashion-mnist \\
        --models mlp lenet --members 1 16 --epochs 4 --check --out gpu.json
    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --limit 2000 --epochs 3 --members 1 4   # a smoke run

On the GPU machine (its Python is 3.12; JAX with CUDA is there, keras is not), from this
checkout, with the wheels and the data carried in ignored folders:
    mkdir -p .git/info .data; echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
    cp ../shared/datasets/fashion-mnist/*.gz .data/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl keras==3.15.1 namex optree
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from hw4 import models  # noqa: E402  (keras only: hw4.data would bring Hydra's errors along)

BUILDERS = {
    "mlp": (lambda: models.mlp([784]), [784]),
    "lenet": (lambda: models.lenet([28, 28, 1]), [28, 28, 1]),
}


def idx(path: Path, header: int) -> np.ndarray:
    """One gzip-compressed IDX file's bytes after its header (16 for images, 8 for labels)."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=header)


def load(folder: str | None, limit: int | None, shape: list[int]) -> dict[str, np.ndarray]:
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
    return {"x_train": x[n_val:], "y_train": y[n_val:], "x_val": x[:n_val], "y_val": y[:n_val]}


def member(build, seed: int, lr: float):
    """A new model and Adam optimizer (built), and their state as arrays: (trainable,
    non-trainable, optimizer variables)."""
    keras.utils.set_random_seed(seed)
    model = build()
    optimizer = keras.optimizers.Adam(learning_rate=float(lr))
    optimizer.build(model.trainable_variables)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    return model, optimizer, state


def programs(model, optimizer, batch: int):
    """One member's epoch and validation as pure functions of its state (the model and optimizer
    are templates: their own variables are never read)."""

    def loss_of(y, p):
        return keras.ops.mean(keras.losses.categorical_crossentropy(y, p))

    def epoch(state, x, y, order):
        def step(state, indices):
            trainable, non_trainable, optimizer_vars = state
            xb, yb = x[indices], y[indices]

            def loss_fn(trainable):
                p, updated = model.stateless_call(trainable, non_trainable, xb, training=True)
                return loss_of(yb, p), updated

            (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
            return (trainable, non_trainable, optimizer_vars), loss

        steps = order.shape[0] // batch  # whole batches: one shape, one program
        state, losses = jax.lax.scan(step, state, order[: steps * batch].reshape(steps, batch))
        return state, losses.mean()

    def validate(state, x, y):
        p, _ = model.stateless_call(state[0], state[1], x, training=False)
        return (p.argmax(-1) == y.argmax(-1)).mean()

    return epoch, validate


def orders(seeds: list[int], n: int, epoch: int) -> jnp.ndarray:
    """Each member's batch order for `epoch`: a permutation seeded by (its seed, the epoch)."""
    return jnp.stack([jax.random.permutation(jax.random.PRNGKey(seed * 1000 + epoch), n) for seed in seeds])


def sweep_rates(k: int) -> np.ndarray:
    """K members' learning rates: log-spaced from 1e-4 to 1e-2 (one member: the homework's 1e-3)."""
    return np.array([1e-3]) if k == 1 else np.logspace(-4, -2, k)


def run_members(name: str, splits: dict, seeds: list[int], rates: np.ndarray, epochs: int, batch: int) -> dict:
    """Members (seed, rate) trained together in one program (`jax.vmap`), or, one member, alone
    in a plain `jax.jit` of its epoch."""
    build, k = BUILDERS[name][0], len(seeds)
    built = [member(build, seed, lr) for seed, lr in zip(seeds, rates)]
    model, optimizer = built[0][0], built[0][1]
    epoch, validate = programs(model, optimizer, batch)
    x, y = jnp.asarray(splits["x_train"]), jnp.asarray(splits["y_train"])
    if k == 1:
        state, train, check = built[0][2], jax.jit(epoch), jax.jit(validate)
    else:
        state = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[s for _, _, s in built])
        train = jax.jit(jax.vmap(epoch, in_axes=(0, None, None, 0)))
        check = jax.jit(jax.vmap(validate, in_axes=(0, None, None)))
    times, losses = [], []
    for e in range(epochs):
        order = jax.block_until_ready(orders(seeds, len(x), e))  # not in the epoch's time
        order = order[0] if k == 1 else order
        start = time.perf_counter()
        state, loss = jax.block_until_ready(train(state, x, y, order))
        times.append(time.perf_counter() - start)
        losses.append(np.atleast_1d(np.asarray(loss)).tolist())
    # In chunks: LeNet's activations for the whole validation set, times K members, are large.
    chunks = [(jnp.asarray(splits["x_val"][i : i + 2000]), jnp.asarray(splits["y_val"][i : i + 2000]))
              for i in range(0, len(splits["x_val"]), 2000)]  # fmt: skip
    correct = sum(np.atleast_1d(np.asarray(check(state, xv, yv))) * len(xv) for xv, yv in chunks)
    epoch_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {
        "model": name, "variant": f"members={k}" if k > 1 else "alone (jit + scan)", "members": k,
        "epoch_s": epoch_s, "per_member_s": epoch_s / k, "first_epoch_s": times[0],
        "val_accuracy": (correct / len(splits["x_val"])).tolist(), "learning_rates": rates.tolist(),
        "seeds": seeds, "losses": losses,
    }  # fmt: skip


def run_fit(name: str, splits: dict, epochs: int, batch: int) -> dict:
    keras.utils.set_random_seed(0)
    model = BUILDERS[name][0]()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    # Without validation_data: fit would time its validation pass inside the epoch.
    model.fit(splits["x_train"], splits["y_train"], batch_size=batch, epochs=epochs, verbose=0, callbacks=[Clock()])
    _, accuracy = model.evaluate(splits["x_val"], splits["y_val"], batch_size=1024, verbose=0)
    epoch_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {
        "model": name, "variant": "fit", "members": 1, "epoch_s": epoch_s, "per_member_s": epoch_s,
        "first_epoch_s": times[0], "val_accuracy": [accuracy], "learning_rates": [1e-3],
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
    parser.add_argument("--check", action="store_true", help="member 0 of the program against member 0 alone")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    print(f"keras {keras.__version__} on {keras.backend.backend()}, jax {jax.__version__}, "
          f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})")  # fmt: skip
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
                together = np.array([epoch_losses[-1] for epoch_losses in rows[-1]["losses"]])
                rows[-1]["last_member_alone_max_loss_diff"] = float(np.abs(together - np.ravel(alone["losses"])).max())
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
