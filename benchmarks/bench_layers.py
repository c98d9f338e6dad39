"""Where a LeNet-5 training step spends its time: each layer's forward + backward pass alone.

    python benchmarks/bench_layers.py [--batch-size 128] [--repeats 200]

Each layer runs in its own tf.function on a random batch of its input shape; the backward pass
computes the weight gradients and, except for the first layer (whose input is data), the input
gradient too. It also times C5 both ways (a 5x5 Conv2D over the 5x5x16 map, and the equal Dense
layer over the flattened map), which is how `model.c5_as_dense` was found; C1 channels-first;
and batch norm in training mode, Keras 3's against TensorFlow's fused kernel. The sum over layers
is larger than a real step, which runs them in one graph.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def time_layer(layer, input_shape: tuple[int, ...], input_grad: bool, batch: int, repeats: int) -> float:
    """Milliseconds per forward + backward pass."""
    import numpy as np
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32))
    layer.build((batch, *input_shape))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            if input_grad:
                tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, ([x] if input_grad else []) + layer.trainable_weights)

    step(x)  # trace
    start = time.perf_counter()
    for _ in range(repeats):
        grads = step(x)
    grads[0].numpy()  # wait for the last one
    return 1000 * (time.perf_counter() - start) / repeats


def batch_norm_layers():
    """Batch norm in training mode two ways: Keras 3's (moments, then normalize: several small
    ops each way) and TensorFlow's fused kernel (tf.compat.v1.nn.fused_batch_norm, one op each way)."""
    import keras
    import tensorflow as tf

    class KerasTraining(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def build(self, shape):
            self.bn.build(shape)

        def call(self, x):
            return self.bn(x, training=True)

    class Fused(keras.layers.Layer):
        def build(self, shape):
            self.gamma = self.add_weight(shape=(shape[-1],), initializer="ones")
            self.beta = self.add_weight(shape=(shape[-1],), initializer="zeros")

        def call(self, x):
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, self.gamma, self.beta, epsilon=1e-3, is_training=True)
            return y

    return KerasTraining, Fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    from keras import layers

    KerasBatchNorm, FusedBatchNorm = batch_norm_layers()

    rows = [
        ("C1 conv 5x5, 1->6, same", layers.Conv2D(6, 5, padding="same", activation="relu"), (28, 28, 1), False),
        ("S2 max pool", layers.MaxPooling2D(2), (28, 28, 6), True),
        ("C3 conv 5x5, 6->16", layers.Conv2D(16, 5, activation="relu"), (14, 14, 6), True),
        ("S4 max pool", layers.MaxPooling2D(2), (10, 10, 16), True),
        ("C5 as Conv2D 5x5, 16->120", layers.Conv2D(120, 5, activation="relu"), (5, 5, 16), True),
        ("C5 as Dense 400->120", layers.Dense(120, activation="relu"), (400,), True),
        ("F6 dense 120->84", layers.Dense(84, activation="relu"), (120,), True),
        ("output dense 84->10", layers.Dense(10, activation="softmax"), (84,), True),
        ("C1 conv channels-first (NCHW)", layers.Conv2D(6, 5, padding="same", data_format="channels_first"),
         (1, 28, 28), False),
        ("batch norm after C1, Keras 3", KerasBatchNorm(), (28, 28, 6), True),
        ("batch norm after C1, fused kernel", FusedBatchNorm(), (28, 28, 6), True),
        ("batch norm after C3, Keras 3", KerasBatchNorm(), (10, 10, 16), True),
        ("batch norm after C3, fused kernel", FusedBatchNorm(), (10, 10, 16), True),
    ]  # fmt: skip
    print(f"batch {args.batch_size}, {args.repeats} repeats, {os.cpu_count()} cores\n")
    print("| layer | forward + backward ms |\n|---|---|")
    for name, layer, shape, input_grad in rows:
        print(f"| {name} | {time_layer(layer, shape, input_grad, args.batch_size, args.repeats):.2f} |")


if __name__ == "__main__":
    main()
