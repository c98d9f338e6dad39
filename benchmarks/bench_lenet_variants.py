"""LeNet-5 rewritten layer by layer: milliseconds per training step of each variant.

    python benchmarks/bench_lenet_variants.py

Each variant trains 64 steps (batch 128, Adam) as one compiled loop over random data held as
tensors, as the compiled epoch does; 2 rounds x 5 repeats, median and fastest ms per step,
float32. The rewrites compute the same function as the layers they replace (2x2 max pooling;
C1, the 5x5 "same" convolution of the one-channel image); BENCHMARKS.md has why none is used.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from hw4 import models  # noqa: E402

BATCH, STEPS, ROUNDS, REPEATS = 128, 64, 2, 5


class ReshapeMaxPool(layers.Layer):
    """2x2 max pooling as a reshape and a reduce_max (its gradient: a mask, elementwise)."""

    def call(self, x):
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        return tf.reduce_max(tf.reshape(x, [-1, height // 2, 2, width // 2, 2, channels]), axis=[2, 4])

    def compute_output_shape(self, shape):
        return (shape[0], shape[1] // 2, shape[2] // 2, shape[3])


class PatchConv(layers.Layer):
    """A 5x5 "same" convolution with ReLU as image patches times the kernel: one matmul."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, shape):
        self.kernel = self.add_weight(shape=(5, 5, shape[-1], self.filters), initializer="glorot_uniform")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros")

    def call(self, x):
        patches = tf.image.extract_patches(x, [1, 5, 5, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
        flat = tf.matmul(tf.reshape(patches, [-1, 25 * x.shape[-1]]), tf.reshape(self.kernel, [-1, self.filters]))
        return tf.nn.relu(tf.reshape(flat, [-1, x.shape[1], x.shape[2], self.filters]) + self.bias)

    def compute_output_shape(self, shape):
        return (shape[0], shape[1], shape[2], self.filters)


def lenet(pool=lambda: layers.MaxPooling2D(2), c1=lambda: layers.Conv2D(6, 5, padding="same", activation="relu")):
    return keras.Sequential([
        keras.Input((28, 28, 1)), c1(), pool(), layers.Conv2D(16, 5, activation="relu"), pool(),
        layers.Flatten(), layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])  # fmt: skip


VARIANTS = {
    "hw4's LeNet-5 (C5 as Dense)": lambda: models.lenet((28, 28, 1)),
    "max pooling as reshape + reduce_max": lambda: lenet(pool=ReshapeMaxPool),
    "C1 as extract_patches @ kernel": lambda: lenet(c1=lambda: PatchConv(6)),
    "both": lambda: lenet(pool=ReshapeMaxPool, c1=lambda: PatchConv(6)),
}


def step_times(build, x: tf.Tensor, y: tf.Tensor) -> list[float]:
    """Milliseconds per step of REPEATS compiled loops of STEPS steps, after one to compile."""
    keras.utils.set_random_seed(0)
    model = build()
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy()

    @tf.function
    def loop():
        loss = tf.constant(0.0)
        for i in tf.range(STEPS):
            batch = slice(i * BATCH, (i + 1) * BATCH)
            with tf.GradientTape() as tape:
                loss = loss_fn(y[batch], model(x[batch], training=True))
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    loop().numpy()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        loop().numpy()
        times.append(1000 * (time.perf_counter() - start) / STEPS)
    return times


def main() -> None:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((BATCH * STEPS, 28, 28, 1), dtype=np.float32))
    y = tf.constant(keras.utils.to_categorical(rng.integers(0, 10, BATCH * STEPS), 10).astype(np.float32))
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(ROUNDS):  # alternating, so the machine's slow spells hit every variant
        for name, build in VARIANTS.items():
            times[name] += step_times(build, x, y)
    print("| LeNet-5 variant | ms/step (median) | fastest |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} |")


if __name__ == "__main__":
    main()
