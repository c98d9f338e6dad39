"""Part 1: the NumPy 2-3-1 network against the homework's numbers, finite differences and autodiff."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hw4.commands.scratch import (
    back_propagation,
    forward_propagation,
    homework_setup,
    mse_loss,
    sigmoid,
    train,
)

HOMEWORK_L = 0.1332476222330792
HOMEWORK_GRADS = {
    "b1": [0.00492577, -0.00058023, -0.00065977],
    "W2": [0.02216011, 0.02433097, 0.01797174],
    "b2": 0.029249230265318685,
}


def random_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W1": rng.normal(size=(3, 2)),
        "b1": rng.normal(size=3),
        "W2": rng.normal(size=3),
        "b2": np.asarray(rng.normal()),
    }


def test_homework_loss_and_gradients():
    setup = homework_setup()
    gradients, loss = back_propagation(setup.X, setup.Y_T, setup.weights)
    assert loss == pytest.approx(HOMEWORK_L, abs=1e-12)
    # The homework printed 8 decimals for these; b2 in full.
    np.testing.assert_allclose(gradients["b1"], HOMEWORK_GRADS["b1"], atol=5e-9)
    np.testing.assert_allclose(gradients["W2"], HOMEWORK_GRADS["W2"], atol=5e-9)
    assert float(gradients["b2"]) == pytest.approx(HOMEWORK_GRADS["b2"], abs=1e-12)


def test_gradients_have_the_weights_shapes():
    setup = homework_setup()
    gradients, _ = back_propagation(setup.X, setup.Y_T, setup.weights)
    for name, weight in setup.weights.items():
        assert np.shape(gradients[name]) == np.shape(weight), name


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_gradients_match_central_finite_differences(n):
    rng = np.random.default_rng(n)
    X, Y_T, weights = rng.normal(size=(n, 2)), rng.integers(0, 2, n).astype(float), random_weights(rng)
    gradients, _ = back_propagation(X, Y_T, weights)
    eps = 1e-5  # truncation error ~eps**2, round-off ~1e-16/eps: both far below 1e-7
    for name, weight in weights.items():
        numeric = np.zeros_like(weight, dtype=float)
        for index in np.ndindex(weight.shape):
            shifted = {k: v.copy() for k, v in weights.items()}
            shifted[name][index] = weight[index] + eps
            plus = mse_loss(forward_propagation(X, shifted)[0], Y_T)
            shifted[name][index] = weight[index] - eps
            minus = mse_loss(forward_propagation(X, shifted)[0], Y_T)
            numeric[index] = (plus - minus) / (2 * eps)
        # The usual gradient-check measure: ||num - ana|| / (||num|| + ||ana||) per weight array
        # (element-wise ratios blow up on entries that are nearly zero).
        difference = np.linalg.norm(numeric - gradients[name])
        relative = difference / (np.linalg.norm(numeric) + np.linalg.norm(gradients[name]))
        assert relative < 1e-7, (name, relative)


def test_gradients_match_tensorflow_gradient_tape():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(3)
    X, Y_T, weights = rng.normal(size=(50, 2)), rng.integers(0, 2, 50).astype(float), random_weights(rng)
    gradients, loss = back_propagation(X, Y_T, weights)

    variables = {k: tf.Variable(v, dtype=tf.float64) for k, v in weights.items()}
    with tf.GradientTape() as tape:
        hidden = tf.sigmoid(tf.constant(X) @ tf.transpose(variables["W1"]) + variables["b1"])
        output = tf.sigmoid(tf.linalg.matvec(hidden, variables["W2"]) + variables["b2"])
        tf_loss = tf.reduce_sum((output - Y_T) ** 2) / (2 * len(Y_T))
    tf_gradients = tape.gradient(tf_loss, variables)

    assert loss == pytest.approx(float(tf_loss), abs=1e-10)
    for name in weights:
        np.testing.assert_allclose(gradients[name], tf_gradients[name].numpy(), atol=1e-10)


def test_training_lowers_the_loss_monotonically():
    setup = homework_setup()
    trained, losses = train(setup.X, setup.Y_T, setup.weights, lr=0.1, steps=50)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    _, final = back_propagation(setup.X, setup.Y_T, trained)
    assert final < losses[0]
    assert setup.weights["W1"] is not trained["W1"]  # the caller's weights are untouched


def test_sigmoid_is_stable_for_large_inputs():
    with np.errstate(over="raise"):
        values = sigmoid(np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0]))
    assert values[0] == 0.0 and values[-1] == 1.0 and values[2] == 0.5
    np.testing.assert_allclose(values[1] + values[3], 1.0)


@pytest.mark.parametrize(
    "X, Y_T, message",
    [
        (np.zeros((5, 3)), np.zeros(5), "X has shape"),
        (np.zeros((5, 2)), np.zeros(4), "Y_T has shape"),
        (np.zeros(5), np.zeros(5), "X has shape"),
    ],
)
def test_shape_errors_are_clear(X, Y_T, message):
    with pytest.raises(ValueError, match=message):
        back_propagation(X, Y_T, homework_setup().weights)


def test_weight_shape_errors_are_clear():
    weights = homework_setup().weights | {"W1": np.zeros((2, 3))}
    with pytest.raises(ValueError, match=r"W1 has shape \(2, 3\), expected \(3, 2\)"):
        forward_propagation(np.zeros((4, 2)), weights)


def test_scratch_module_never_imports_tensorflow():
    code = "import sys, hw4.commands.scratch; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_hw4_scratch_command_prints_and_tracks(tracking_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    result = subprocess.run(
        ["hw4-scratch", f"tracking.uri={tracking_uri}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"L = {HOMEWORK_L!r}" in result.stdout
    assert "[ 0.00492577 -0.00058023 -0.00065977]" in result.stdout
    assert "dL/db2 = 0.029249230265318685" in result.stdout

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hw4-part1").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["L"] == pytest.approx(HOMEWORK_L, abs=1e-12)
    logged = client.download_artifacts(run.info.run_id, "gradients.json", str(tmp_path))
    import json

    assert json.load(open(logged))["dL_db2"] == pytest.approx(HOMEWORK_GRADS["b2"], abs=1e-12)
