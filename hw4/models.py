"""Model builders: one function per family, options for the variants.

A model YAML under conf/model/ names its builder in `_target_`; every other field of the model
config (name, input_shape, dropout, batch_norm) is passed to it, so adding a model means one
builder here (or an existing one with new options) plus one YAML file.

The output layer always computes in float32, so the softmax stays accurate under a mixed
precision policy (trainer.precision=mixed_bfloat16).

Regularisation follows every hidden layer's ReLU: layer+ReLU -> (batch norm) -> (dropout).
Batch norm after the activation, with the moving statistics' momentum at 0.9, measured best on
this data (BENCHMARKS.md, "Batch-norm placement"): 0.894 to 0.898 test accuracy over three seeds,
against 0.885 to 0.890 for the pre-activation placement with Keras' default momentum 0.99.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import keras
from keras import layers


def _hidden(linear: Callable[..., layers.Layer], dropout: float, batch_norm: bool, bn_momentum: float) -> list:
    """A hidden layer with a fused ReLU, then the configured regularisation.

    `linear(activation)` makes the Dense/Conv2D layer.
    """
    block = [linear(activation="relu")]
    if batch_norm:
        block.append(layers.BatchNormalization(momentum=bn_momentum))
    if dropout > 0:
        block.append(layers.Dropout(dropout))
    return block


def mlp(
    input_shape: Sequence[int],
    num_classes: int = 10,
    hidden_units: Sequence[int] = (128, 64),
    dropout: float = 0.0,
    batch_norm: bool = False,
    bn_momentum: float = 0.99,
    name: str = "mlp",
) -> keras.Model:
    """Dense 128 ReLU -> Dense 64 ReLU -> Dense 10 softmax on flat 784 inputs: 109,386 params."""
    stack: list = [keras.Input(shape=tuple(input_shape))]
    for units in hidden_units:
        stack += _hidden(partial(layers.Dense, units), dropout, batch_norm, bn_momentum)
    stack.append(layers.Dense(num_classes, activation="softmax", dtype="float32"))
    return keras.Sequential(stack, name=name)


def conv_as_dense(filters: int, kernel_size: int, in_channels: int, **kwargs) -> layers.Dense:
    """The Dense layer equal to a valid `kernel_size` convolution over a map of that size.

    Such a convolution sees the whole (flattened) map once: it is a fully connected layer with
    the same weights, in the same order. Its Glorot-uniform range comes from the convolution's
    fans (kernel area x channels), so the initial weights are the ones the Conv2D would draw.
    """
    fan_in, fan_out = kernel_size**2 * in_channels, kernel_size**2 * filters
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    initializer = keras.initializers.RandomUniform(-limit, limit)
    return layers.Dense(filters, kernel_initializer=initializer, **kwargs)


def lenet(
    input_shape: Sequence[int],
    num_classes: int = 10,
    dropout: float = 0.0,
    batch_norm: bool = False,
    bn_momentum: float = 0.99,
    c5_as_dense: bool = True,
    name: str = "lenet",
) -> keras.Model:
    """The homework's LeNet-5 (61,706 params without options).

    Output shapes: 28x28x6, 14x14x6, 10x10x16, 5x5x16, then C5 and the flattening: 1x1x120 and
    120, or with `c5_as_dense` 400 and 120; then 84, 10. C5, the 5x5 convolution over the 5x5x16
    map, computes the same function as a Dense layer over the flattened map (`conv_as_dense`).
    As a matrix product the layer costs a third of the convolution, and whole LeNet-5 epochs
    about 20% less on CPU (BENCHMARKS.md).
    """

    def hidden(linear: Callable[..., layers.Layer]) -> list:
        return _hidden(linear, dropout, batch_norm, bn_momentum)

    if c5_as_dense:
        c5 = [layers.Flatten(), *hidden(partial(conv_as_dense, 120, 5, 16))]
    else:
        c5 = [*hidden(partial(layers.Conv2D, 120, 5)), layers.Flatten()]
    stack = [
        keras.Input(shape=tuple(input_shape)),
        *hidden(partial(layers.Conv2D, 6, 5, padding="same")),
        layers.MaxPooling2D(2),
        *hidden(partial(layers.Conv2D, 16, 5)),
        layers.MaxPooling2D(2),
        *c5,
        *hidden(partial(layers.Dense, 84)),
        layers.Dense(num_classes, activation="softmax", dtype="float32"),
    ]
    return keras.Sequential(stack, name=name)


def has_convolutions(model: keras.Model) -> bool:
    """Whether any layer is a 2-D convolution: what the speed levers' "auto" settings go by."""
    return any(isinstance(layer, layers.Conv2D) for layer in model._flatten_layers())


def layer_table(model: keras.Model) -> list[dict]:
    """One row per layer: name, type, output shape (batch axis dropped) and parameter count."""
    return [
        {
            "layer": layer.name,
            "type": type(layer).__name__,
            "output_shape": "x".join(str(d) for d in layer.output.shape[1:]),
            "params": layer.count_params(),
        }
        for layer in model.layers
    ]


def summary_text(model: keras.Model) -> str:
    """A plain-text summary (Keras' own one is cropped to the terminal width when captured)."""
    import pandas as pd

    table = pd.DataFrame(layer_table(model)).to_string(index=False)
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    return (
        f"Model: {model.name}\n{table}\n"
        f"Total params: {model.count_params():,}\n"
        f"Trainable params: {trainable:,}\n"
        f"Non-trainable params: {model.count_params() - trainable:,}\n"
    )
