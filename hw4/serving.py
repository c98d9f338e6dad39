"""The model a client takes away: the whole inference pipeline, as one plain Keras model.

A client has what the IDX files and `keras.datasets.fashion_mnist` give: pixel values 0 to 255
as uint8, shaped (n, 28, 28). The logged model takes exactly that and returns the probabilities
of the 10 classes, (n, 10). Inside it, Keras' own preprocessing layers prepare the pixels as
training did (`hw4.data.prepare`): scaled by 1/255, then, where the preparation recorded a mean
and standard deviation (`prep=standardize`: the training split's), standardized with them.
`prep=augment` transforms training batches only, so its pipeline only scales.

The pipeline reuses the trained model's layers (a Sequential's, the same weights; any other
model as an uncompiled clone) and is never compiled: the saved file holds no optimizer and no
learning-rate schedule, only built-in Keras layers, so a plain Keras install loads it without
hw4 (`mlflow.pyfunc.load_model`, `mlflow models serve`).
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import layers

from hw4.data import IMAGE_SHAPE

# The input contract: one uint8 image per row, as published. A JSON request's numbers are cast
# to it by MLflow's scoring server; a float array of 0-255 values is cast with .astype("uint8").
INPUT_DTYPE = "uint8"
INPUT_SHAPE = IMAGE_SHAPE
PIXEL_SCALE = 1.0 / 255.0


def inference_pipeline(model: keras.Model, preparation: Mapping[str, Any]) -> keras.Model:
    """uint8 (n, 28, 28) pixels -> `model`'s class probabilities, with the preparation the model
    was trained on (`Splits.preparation`: its name and, standardized, the `mean` and `std` of the
    scaled pixels it was standardized with, whichever conf/prep option recorded them)."""
    pixels = keras.Input(shape=INPUT_SHAPE, dtype=INPUT_DTYPE, name="pixels")
    # float32 whatever the model's dtype policy: the statistics are float32 values.
    x = layers.Rescaling(PIXEL_SCALE, dtype="float32", name="scale")(pixels)
    if "mean" in preparation and "std" in preparation:
        std = float(preparation["std"])
        x = layers.Normalization(
            axis=None, mean=float(preparation["mean"]), variance=std * std, dtype="float32", name="standardize"
        )(x)
    x = layers.Reshape(tuple(model.input_shape[1:]), name="to_model_input")(x)
    return keras.Model(pixels, uncompiled(model)(x), name=f"{model.name}_inference")


def uncompiled(model: keras.Model) -> Any:
    """`model` as a callable that saves no compile state: a Sequential's own layers in order (the
    same weights), else an uncompiled clone holding a copy of its weights. A compiled model saved
    inside the pipeline would bring its optimizer and schedule along."""
    if isinstance(model, keras.Sequential):

        def in_order(x: Any) -> Any:
            for layer in model.layers:  # its Input left out
                x = layer(x)
            return x

        return in_order
    # Any graph a builder makes (branches, skips), from its config: clone_model keeps the
    # compile state, from_config does not.
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def example_input(images: np.ndarray) -> np.ndarray:
    """`images` as the pipeline takes them (the logged input example): uint8, (n, 28, 28)."""
    return np.ascontiguousarray(images, dtype=np.uint8).reshape((-1, *INPUT_SHAPE))
