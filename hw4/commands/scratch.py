"""Part 1: a 2-3-1 sigmoid network with MSE loss, forward and backward pass in NumPy only.

Shapes (N samples): X (N, 2), W1 (3, 2), b1 (3,), W2 (3,), b2 scalar, Y (N,).
Loss: L = 1/(2N) * sum((Y - Y_T) ** 2).

Gradients have the shapes of the weights they belong to; the homework printed dL/dW1
transposed (2 x 3).

This module must never import TensorFlow: it is the "from scratch" answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Weights = dict[str, np.ndarray]
WEIGHT_NAMES = ("W1", "b1", "W2", "b2")
SCRATCH_RUN_NAME = "scratch-2-3-1"
N_INPUTS, N_HIDDEN = 2, 3


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large |z| (never calls exp on a large positive number)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_inputs(X: np.ndarray, weights: Weights, Y_T: np.ndarray | None = None) -> None:
    missing = [k for k in WEIGHT_NAMES if k not in weights]
    if missing:
        raise ValueError(f"weights lack {missing}; expected keys {list(WEIGHT_NAMES)}")
    expected = {"W1": (N_HIDDEN, N_INPUTS), "b1": (N_HIDDEN,), "W2": (N_HIDDEN,), "b2": ()}
    for name, shape in expected.items():
        if np.shape(weights[name]) != shape:
            raise ValueError(f"{name} has shape {np.shape(weights[name])}, expected {shape}")
    if X.ndim != 2 or X.shape[1] != N_INPUTS:
        raise ValueError(f"X has shape {X.shape}, expected (N, {N_INPUTS})")
    if X.shape[0] == 0:
        raise ValueError("X is empty: need at least one sample")
    if Y_T is not None and Y_T.shape != (X.shape[0],):
        raise ValueError(f"Y_T has shape {Y_T.shape}, expected ({X.shape[0]},) to match X")


def forward_propagation(X: np.ndarray, weights: Weights) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (Y, Z2, H, Z1): output, output pre-activation, hidden activation, hidden pre-activation."""
    X = np.asarray(X, dtype=np.float64)
    _check_inputs(X, weights)
    Z1 = X @ weights["W1"].T + weights["b1"]  # (N, 3)
    H = sigmoid(Z1)
    Z2 = H @ weights["W2"] + weights["b2"]  # (N,)
    Y = sigmoid(Z2)
    return Y, Z2, H, Z1


def mse_loss(Y: np.ndarray, Y_T: np.ndarray) -> float:
    return float(np.sum((Y - Y_T) ** 2) / (2 * Y.shape[0]))


def back_propagation(X: np.ndarray, Y_T: np.ndarray, weights: Weights) -> tuple[Weights, float]:
    """Return (gradients keyed like `weights`, loss L) for one full-batch pass."""
    X = np.asarray(X, dtype=np.float64)
    Y_T = np.asarray(Y_T, dtype=np.float64)
    _check_inputs(X, weights, Y_T)
    Y, _, H, _ = forward_propagation(X, weights)
    n = X.shape[0]

    dZ2 = (Y - Y_T) / n * Y * (1.0 - Y)  # dL/dZ2, (N,); sigmoid' = s (1 - s)
    dZ1 = np.outer(dZ2, weights["W2"]) * H * (1.0 - H)  # dL/dZ1, (N, 3)
    gradients = {
        "W1": dZ1.T @ X,  # (3, 2)
        "b1": dZ1.sum(axis=0),
        "W2": H.T @ dZ2,  # (3,)
        "b2": np.asarray(dZ2.sum()),
    }
    return gradients, mse_loss(Y, Y_T)


def train(
    X: np.ndarray, Y_T: np.ndarray, weights: Weights, lr: float = 0.5, steps: int = 100
) -> tuple[Weights, list[float]]:
    """Full-batch gradient descent; returns the trained weights and the loss before each step."""
    if lr <= 0 or steps < 1:
        raise ValueError(f"need lr > 0 and steps >= 1, got lr={lr}, steps={steps}")
    weights = {k: np.array(v, dtype=np.float64) for k, v in weights.items()}
    losses = []
    for _ in range(steps):
        gradients, loss = back_propagation(X, Y_T, weights)
        losses.append(loss)
        for k in WEIGHT_NAMES:
            weights[k] = weights[k] - lr * gradients[k]
    return weights, losses


@dataclass
class HomeworkSetup:
    X: np.ndarray
    Y_T: np.ndarray
    weights: Weights


def homework_setup(seed: int = 0, n_samples: int = 1000) -> HomeworkSetup:
    """The homework's exact data and initial weights (the order of the random draws matters)."""
    np.random.seed(seed)  # the homework uses the legacy global generator
    W1 = np.random.randn(N_HIDDEN, N_INPUTS)
    b1 = np.zeros(N_HIDDEN)
    W2 = np.random.randn(N_HIDDEN)
    b2 = np.asarray(0.0)
    X = np.random.rand(n_samples, N_INPUTS)
    Y_T = np.random.randint(0, 2, n_samples).astype(np.float64)
    return HomeworkSetup(X=X, Y_T=Y_T, weights={"W1": W1, "b1": b1, "W2": W2, "b2": b2})


def format_results(loss: float, gradients: Weights) -> str:
    with np.printoptions(precision=8, suppress=True):
        return "\n".join(
            [
                f"L = {loss!r}",
                f"dL/dW1 (homework layout, 2x3) =\n{gradients['W1'].T}",
                f"dL/db1 = {gradients['b1']}",
                f"dL/dW2 = {gradients['W2']}",
                f"dL/db2 = {float(gradients['b2'])!r}",
            ]
        )


def main() -> None:
    """Console entry point `hw4-scratch` (a Hydra app sharing hw4-train's tracking settings)."""
    from hw4 import config

    config.run_app("scratch", run)


def run(cfg) -> float:
    """Print Part 1's loss and gradients, run a short descent, and log both to MLflow."""
    from hydra.utils import get_original_cwd

    from hw4 import tracking

    setup = homework_setup(seed=cfg.seed, n_samples=cfg.n_samples)
    gradients, loss = back_propagation(setup.X, setup.Y_T, setup.weights)
    print(format_results(loss, gradients))
    _, losses = train(setup.X, setup.Y_T, setup.weights, lr=cfg.lr, steps=cfg.steps)
    print(f"gradient descent: L {losses[0]:.6f} -> {losses[-1]:.6f} in {cfg.steps} steps (lr={cfg.lr})")

    client, experiment_id = tracking.open_experiment(cfg.tracking, get_original_cwd())
    if cfg.parent_run_id:  # nested under hw4-homework's parent run, in its experiment
        experiment_id = client.get_run(cfg.parent_run_id).info.experiment_id
    with tracking.start_run(
        client, experiment_id, SCRATCH_RUN_NAME, {"part": 1}, parent_run_id=cfg.parent_run_id
    ) as run:
        run.log_params({"seed": cfg.seed, "n_samples": cfg.n_samples, "lr": cfg.lr, "steps": cfg.steps})
        run.log_metrics({"L": loss})
        for step, value in enumerate(losses):
            run.log_metrics({"train_loss": value}, step=step)
        run.log_dict(
            {
                "L": loss,
                **{f"dL_d{k}": v.tolist() for k, v in gradients.items()},
                "dL_dW1_homework_layout": gradients["W1"].T.tolist(),
            },
            "gradients.json",
        )
        run.log_text(format_results(loss, gradients), "summary.txt")
    return loss


if __name__ == "__main__":
    main()
