"""The logged model is the whole inference pipeline (hw4/serving.py): raw uint8 images through
it give what the trained model gives on the images as training prepared them, for every model,
preparation and precision; and it saves nothing but built-in Keras objects (no optimizer, no
schedule, no compile state). The served-model tests (tests/commands/test_served_model.py) load it
through MLflow's clients; these check the pipeline itself, fast."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from hw4 import data, models, serving  # noqa: E402  (needs Keras)
from hw4.training import runtime, warmup  # noqa: E402


def raw_data(n: int = 60) -> data.RawData:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return data.RawData(images, labels.astype(np.uint8), images[:20].copy(), labels[:20].astype(np.uint8))


def functional_with_a_skip(input_shape, num_classes=10) -> keras.Model:
    """A user's own builder need not make a Sequential: a branch that rejoins."""
    inputs = keras.Input(shape=tuple(input_shape))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    joined = keras.layers.Concatenate()([hidden, keras.layers.Dense(8, activation="relu")(inputs)])
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(joined))


BUILDERS = {
    "mlp": (models.mlp, [784]),
    "lenet_bn": (lambda shape: models.lenet(shape, batch_norm=True, bn_momentum=0.5), [28, 28, 1]),
    "lenet_dropout": (lambda shape: models.lenet(shape, dropout=0.5), [28, 28, 1]),
    "functional": (functional_with_a_skip, [784]),
}


def trained(name: str, splits: data.Splits) -> keras.Model:
    """A model compiled by hw4's compile_model, with an hw4 object in its optimizer (a warm-up
    schedule, as a user's optimizer may hold, and as hw4's own did before issue 35) for the saved
    pipeline to leave out, after a few steps, so batch norm's moving statistics are not their
    initial values."""
    builder, shape = BUILDERS[name]
    model = builder(shape)
    schedule = warmup.LinearWarmup(1e-3, warmup_steps=2)
    runtime.compile_model(model, keras.optimizers.Adam(schedule))
    model.fit(splits.x_train, splits.y_train, batch_size=16, epochs=1, verbose=0)
    return model


def modules_and_compile_state(tree) -> tuple[set[str], list]:
    """Every `module` a saved config names, and every non-empty compile_config in it."""
    found, compiled = set(), []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("module"), str):
                found.add(node["module"])
            if node.get("compile_config"):
                compiled.append(node["compile_config"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found, compiled


@pytest.mark.parametrize("prep", ["scale", "standardize"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_raw_images_through_the_pipeline_give_the_trained_models_answer(name, prep, tmp_path):
    raw = raw_data()
    splits = data.prepare(raw, BUILDERS[name][1], 10, prep=prep)
    model = trained(name, splits)
    pipeline = serving.inference_pipeline(model, splits.preparation)
    expected = np.asarray(model(splits.x_test, training=False))
    got = np.asarray(pipeline(serving.example_input(raw.x_test), training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    path = tmp_path / "pipeline.keras"
    pipeline.save(path)
    with zipfile.ZipFile(path) as archive:  # a .keras file: config.json and the weights
        config = json.loads(archive.read("config.json"))
    modules, compiled = modules_and_compile_state(config)
    assert compiled == [] and not config.get("compile_config")  # no optimizer, no schedule
    assert modules and all(m.startswith("keras") for m in modules), modules  # nothing of hw4's
    reloaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(np.asarray(reloaded(raw.x_test, training=False)), got, rtol=1e-5, atol=1e-6)


def test_under_mixed_bfloat16_the_pipeline_gives_the_trained_models_answer():
    raw = raw_data()
    splits = data.prepare(raw, [28, 28, 1], 10, prep="standardize")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = trained("lenet_bn", splits)
        pipeline = serving.inference_pipeline(model, splits.preparation)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert pipeline.get_layer("standardize").dtype_policy.name == "float32"  # the statistics stay exact
    expected = np.asarray(model(splits.x_test, training=False))
    got = np.asarray(pipeline(serving.example_input(raw.x_test), training=False))
    np.testing.assert_allclose(got, expected, atol=2e-2)  # bfloat16 inside: its rounding
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.95


def test_a_preparation_that_records_a_mean_and_std_is_served_as_it_trained(tmp_path):
    """Whichever conf/prep option made them (a user's own too): the pipeline standardizes with
    the `mean` and `std` the preparation recorded, and a record without them only scales."""
    raw = raw_data()
    splits = data.prepare(raw, [784], 10)
    for x in (splits.x_train, splits.x_val, splits.x_test):  # as a user's own fit: minus 0.5, over 0.25
        x -= 0.5
        x /= 0.25
    splits.preparation = {"name": "centered", "mean": 0.5, "std": 0.25}
    model = trained("mlp", splits)
    pipeline = serving.inference_pipeline(model, splits.preparation)
    expected = np.asarray(model(splits.x_test, training=False))
    got = np.asarray(pipeline(serving.example_input(raw.x_test), training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    augmented = data.prepare(raw, [784], 10, prep="augment")  # training batches only: the pipeline scales
    assert "standardize" not in [
        layer.name for layer in serving.inference_pipeline(model, augmented.preparation).layers
    ]
