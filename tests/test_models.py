"""Model builders, built from the project's own model YAML files."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from hw4.config import CONFIG_DIR, register_configs

keras = pytest.importorskip("keras")
from hw4 import models  # noqa: E402  (needs Keras)
from hw4.training import runtime, schedules  # noqa: E402

register_configs()


def build(model_name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model_name}", *overrides])
    return runtime.build_model(cfg.model, num_classes=10)


def test_mlp_has_the_homework_parameter_count():
    model = build("mlp")
    assert model.count_params() == 109_386
    assert [layer.units for layer in model.layers] == [128, 64, 10]


def test_lenet_has_the_homework_shapes_and_parameter_count():
    model = build("lenet", "model.c5_as_dense=false")
    assert model.count_params() == 61_706
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert shapes == [
        (28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (1, 1, 120), (120,), (84,), (10,),
    ]  # fmt: skip


def test_c5_as_dense_flattens_before_c5():
    model = build("lenet")
    assert model.count_params() == 61_706
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert shapes == [(28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (400,), (120,), (84,), (10,)]


@pytest.mark.parametrize("model_name", ["lenet", "lenet_dropout", "lenet_bn"])
def test_c5_as_dense_is_the_same_network_as_the_convolution(model_name):
    """Same seed: the same initial weights (reshaped) and the same outputs, in every variant."""
    keras.utils.set_random_seed(0)
    conv = build(model_name, "model.c5_as_dense=false")
    keras.utils.set_random_seed(0)
    dense = build(model_name)
    c5_conv = [layer for layer in conv.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    c5_dense = [layer for layer in dense.layers if isinstance(layer, keras.layers.Dense)][0]
    assert c5_conv.kernel.shape == (5, 5, 16, 120) and c5_dense.kernel.shape == (400, 120)
    np.testing.assert_array_equal(c5_conv.kernel.numpy().reshape(400, 120), c5_dense.kernel.numpy())
    x = np.random.default_rng(1).random((8, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(dense.predict(x, verbose=0), conv.predict(x, verbose=0), atol=1e-6)


def test_c5_as_dense_is_a_lenet_only_option():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="c5_as_dense"):
        build("mlp", "model.c5_as_dense=false")


def test_dropout_follows_every_hidden_layer():
    model = build("lenet_dropout")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Dropout") == 4  # C1, C3, C5 and the 84-unit dense layer
    for index, kind in enumerate(kinds):
        if kind == "Dropout":
            assert kinds[index - 1] in ("Conv2D", "Dense")
    assert {layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)} == {0.5}
    assert model.count_params() == 61_706  # dropout adds no weights


def test_dropout_rate_comes_from_config():
    model = build("lenet_dropout", "model.dropout=0.3")
    assert {layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)} == {0.3}


def test_batch_norm_follows_every_hidden_layer():
    model = build("lenet_bn")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNormalization") == 4
    # BN normalises each hidden layer's output: (linear + ReLU) -> BN.
    for index, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.BatchNormalization):
            previous = model.layers[index - 1]
            assert isinstance(previous, (keras.layers.Conv2D, keras.layers.Dense))
            assert previous.activation is keras.activations.relu
            assert layer.momentum == 0.9
    # 2 trainable (gamma, beta) + 2 moving statistics per channel: 6 + 16 + 120 + 84 channels.
    assert model.count_params() == 61_706 + 4 * (6 + 16 + 120 + 84)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_mlp_computes_relu_relu_softmax_as_the_homework_describes():
    """The forward pass in NumPy from the model's own weights: 784 -> 128 ReLU -> 64 ReLU ->
    10 softmax. A wrong activation, a missing layer or a dropped bias changes the output."""
    model = build("mlp")
    x = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    w1, b1, w2, b2, w3, b3 = model.get_weights()
    assert (w1.shape, w2.shape, w3.shape) == ((784, 128), (128, 64), (64, 10))
    hidden = np.maximum(np.maximum(x @ w1 + b1, 0) @ w2 + b2, 0)
    np.testing.assert_allclose(model.predict(x, verbose=0), softmax(hidden @ w3 + b3), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["lenet", "lenet_dropout", "lenet_bn"])
def test_lenet_outputs_the_softmax_of_its_last_layers_logits(model_name):
    """Inference output = softmax(features @ W + b) of the last Dense layer, one distribution
    per image, and different images get different distributions."""
    model = build(model_name)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    last = model.layers[-1]
    # Built on the model's one input tensor, not the list `inputs`: then called with one array, as built.
    features = keras.Model(model.inputs[0], last.input)(x, training=False).numpy()
    weights, bias = last.get_weights()
    probabilities = model.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities, softmax(features @ weights + bias), rtol=1e-4, atol=1e-6)
    assert not np.allclose(probabilities[0], probabilities[1])  # the input matters


def test_summary_lists_layers_and_parameters():
    text = models.summary_text(build("lenet", "model.c5_as_dense=false"))
    assert "Total params: 61,706" in text
    assert "1x1x120" in text and "48120" in text


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_optimizers_take_the_learning_rate(name):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"optimizer={name}", "optimizer.lr=0.0123"])
    optimizer = schedules.build_optimizer(cfg.optimizer)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.0123)


def test_unknown_optimizer_name_is_a_clear_error():
    from hw4.errors import ConfigError

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["optimizer.name=adamx"])
    with pytest.raises(ConfigError, match="optimizer.name='adamx' .* is not a Keras optimizer"):
        schedules.build_optimizer(cfg.optimizer)
