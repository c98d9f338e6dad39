"""K learning rates side by side: K MLPs trained as one stacked model, against K runs alone.

    python benchmarks/bench_stacked.py --k 5 --epochs 4 --rounds 2

A sweep of one model over K learning rates trains K models that see the same batches (same
seed, same order) from the same initial weights. Stacked, their weights are [K, ...] tensors,
every Dense layer one batched matmul (einsum), and Adam's update takes a [K, 1, 1] learning rate
(its step is linear in the rate). This probe times, in one process per variant and alternating:

- alone: the K models one after another, each a run of hw4's epoch loop (hw4.training.loop,
  XLA as a full-data MLP run gets it), as an in-process sweep trains them;
- stacked: the K models in one compiled epoch (XLA) of the stacked model.

Both run the same epochs, the homework's MLP at batch 128 on the real training split. It prints
the median epoch seconds (after each model's first epoch, which compiles) for the K models, and
the per-model validation accuracy, which must agree between the two to seed noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def splits(data_dir: str):
    from hw4 import data

    return data.prepare(data.load(data_dir, n_classes=10), [784], n_classes=10)


def alone(args) -> dict:
    """Each rate in hw4's own epoch loop, one after another."""
    import keras
    from omegaconf import OmegaConf

    from hw4 import models
    from hw4.config import TrainerConfig
    from hw4.runtime.signals import RunSignals
    from hw4.training import compile, loop, runtime

    s = splits(args.data_dir)
    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": args.epochs, "verbose": 0})
    times, accuracy = [], []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch:  # the first epoch compiles
                times.append(time.perf_counter() - self.start)

    steps = trainer.epochs * -(-len(s.x_train) // trainer.batch_size)
    for rate in RATES[: args.k]:
        runtime.configure_runtime(trainer)
        model = models.mlp((784,))
        runtime.compile_model(model, keras.optimizers.Adam(rate))
        settings = loop.LoopSettings(
            epochs=trainer.epochs, batch_size=trainer.batch_size, eval_batch_size=trainer.eval_batch_size,
            schedule=1.0, jit=compile.wants_xla(model, trainer.jit_compile, augment=False, steps=steps),
        )  # fmt: skip
        member = loop.Member(model=model, callbacks=[Timer()], seed=trainer.seed, peak=rate)
        with RunSignals() as signals:
            loop.train([member], s, settings, signals)
        accuracy.append(member.history["val_categorical_accuracy"][-1])
    # K models' epoch: the K medians added up.
    per_model = statistics.median(times)
    return {"epoch_s": per_model * args.k, "val_accuracy": accuracy}


def stacked(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from hw4 import models

    k = args.k
    s = splits(args.data_dir)
    keras.utils.set_random_seed(0)
    single = models.mlp((784,))  # the initial weights every model alone would draw
    weights = [tf.Variable(np.stack([w] * k)) for w in single.get_weights()]  # kernels [K,i,o], biases [K,o]
    rates = tf.constant(RATES[:k], tf.float32)

    class StackedAdam(keras.optimizers.Adam):
        """Adam with one learning rate per stacked model: its step is linear in the rate."""

        def update_step(self, gradient, variable, learning_rate):
            shape = [k] + [1] * (len(variable.shape) - 1)
            super().update_step(gradient, variable, tf.reshape(rates, shape) * learning_rate)

    optimizer = StackedAdam(1.0)
    optimizer.build(weights)

    def forward(x):  # x [B, 784], the same batch for every model
        h = tf.nn.relu(tf.einsum("bi,kio->kbo", x, weights[0]) + weights[1][:, None])
        h = tf.nn.relu(tf.einsum("kbi,kio->kbo", h, weights[2]) + weights[3][:, None])
        return tf.nn.softmax(tf.einsum("kbi,kio->kbo", h, weights[4]) + weights[5][:, None])

    x_train, y_train = tf.constant(s.x_train), tf.constant(s.y_train)
    n_full = len(s.x_train) // 128

    @tf.function(jit_compile=True)
    def epoch(order):
        for i in tf.range(n_full):
            index = order[i]
            xb, yb = tf.gather(x_train, index), tf.gather(y_train, index)
            with tf.GradientTape() as tape:
                p = forward(xb)
                # Each model's mean loss; their sum's gradient is each model's own.
                loss = tf.reduce_sum(
                    tf.reduce_mean(
                        keras.losses.categorical_crossentropy(tf.broadcast_to(yb[None], tf.shape(p)), p), axis=1
                    )
                )
            optimizer.apply(tape.gradient(loss, weights), weights)

    @tf.function(jit_compile=True)
    def validate(x, y):
        hits = tf.equal(tf.argmax(forward(x), -1), tf.argmax(y, -1)[None])
        return tf.reduce_mean(tf.cast(hits, tf.float32), axis=1)

    times = []
    for e in range(args.epochs):
        order = tf.random.experimental.stateless_shuffle(tf.range(len(s.x_train), dtype=tf.int64), seed=[0, e])
        start = time.perf_counter()
        epoch(tf.reshape(order[: n_full * 128], [n_full, 128]))
        accuracy = validate(tf.constant(s.x_val), tf.constant(s.y_val)).numpy()
        if e:
            times.append(time.perf_counter() - start)
    return {"epoch_s": statistics.median(times), "val_accuracy": accuracy.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=5, choices=range(1, len(RATES) + 1))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--variant", choices=("alone", "stacked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps((alone if args.variant == "alone" else stacked)(args)))
        return
    results: dict[str, list[dict]] = {"alone": [], "stacked": []}
    for round_ in range(args.rounds):
        for variant in results if round_ % 2 == 0 else list(results)[::-1]:
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )  # fmt: skip
            if child.returncode:
                sys.exit(f"{variant} failed:\n{child.stderr[-3000:]}")
            results[variant].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {variant}: {results[variant][-1]}", flush=True)
    alone_s = statistics.median(r["epoch_s"] for r in results["alone"])
    stacked_s = statistics.median(r["epoch_s"] for r in results["stacked"])
    print(
        f"\n{args.k} MLPs, {args.epochs} epochs, {args.rounds} rounds: one epoch of all {args.k}: "
        f"alone {alone_s:.2f} s, stacked {stacked_s:.2f} s, stacked / alone {stacked_s / alone_s:.2f}x"
    )
    print("validation accuracy after the last epoch, per rate:")
    for variant, rows in results.items():
        print(f"  {variant}: " + ", ".join(f"{a:.4f}" for a in rows[0]["val_accuracy"]))


if __name__ == "__main__":
    main()
