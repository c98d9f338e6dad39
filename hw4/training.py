"""The training loop: runtime set-up, model and optimizer construction, fit, evaluation.

Imports TensorFlow/Keras: hw4.train imports this module only once training really starts.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import confusion_matrix

from hw4.data import Splits
from hw4.errors import ConfigError, Hw4Error

log = logging.getLogger(__name__)
LOSS = "categorical_crossentropy"
METRIC = "categorical_accuracy"


class TrainingDiverged(Hw4Error):
    """The loss became NaN or infinite."""


def configure_runtime(trainer: DictConfig, parallel_jobs: int = 1) -> int:
    """Seed Python, NumPy and TensorFlow; set thread pools; optionally make ops deterministic.

    Parallel sweep jobs share the cores: each gets cores // parallel_jobs threads unless
    trainer.threads says otherwise, so that they do not oversubscribe the machine. Returns
    TensorFlow's intra-op thread count.
    """
    keras.backend.clear_session()  # sweep jobs sharing a process start from a clean slate
    keras.utils.set_random_seed(trainer.seed)
    keras.mixed_precision.set_global_policy(trainer.precision)
    if trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    threads = trainer.threads
    if threads is None and parallel_jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel_jobs)
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # a reused worker process: TensorFlow already started its pools
            log.debug("thread pools already initialised; keeping them")
    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1


def build_model(model: DictConfig, num_classes: int) -> keras.Model:
    """Call the builder named in `model._target_` with the model config's other fields."""
    return instantiate(model, num_classes=num_classes, _convert_="all")


def build_optimizer(optimizer: DictConfig) -> keras.optimizers.Optimizer:
    kwargs = OmegaConf.to_container(optimizer.kwargs, resolve=True)
    identifier = {"class_name": optimizer.name, "config": {"learning_rate": optimizer.lr, **kwargs}}
    try:
        return keras.optimizers.get(identifier)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"optimizer.name={optimizer.name!r} with kwargs {kwargs} is not a Keras optimizer ({exc})"
        ) from None


class EpochMetricsLogger(keras.callbacks.Callback):
    """Hands each epoch's Keras logs to `log_metrics(metrics, step=epoch)` (one write an epoch)."""

    def __init__(self, log_metrics: Callable[..., None]):
        super().__init__()
        self.log_metrics = log_metrics

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if logs:
            self.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch)


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C or SIGTERM during training: finish the current epoch, then stop.

    The epoch's checkpoint and metrics are then whole, and no store write is cut in half (an
    interrupted sqlite write can leave the store locked for the run's own final status). A
    second signal interrupts at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        self.received = signum
        log.warning("signal %d: stopping after this epoch (again to stop at once)", signum)

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if self.received is not None:
            self.model.stop_training = True

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def compile_model(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    jit_compile: str = "auto",
    steps_per_execution: int = 1,
) -> None:
    jit = {"auto": "auto", "true": True, "false": False}[str(jit_compile).lower()]
    model.compile(
        optimizer=optimizer,
        loss=LOSS,
        metrics=[METRIC],
        jit_compile=jit,
        steps_per_execution=steps_per_execution,
    )


def as_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None
) -> tf.data.Dataset:
    """Batches from memory, reshuffled every epoch with a seeded order, prefetched."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit(
    model: keras.Model,
    splits: Splits,
    trainer: DictConfig,
    callbacks: list[keras.callbacks.Callback],
    initial_epoch: int = 0,
    past_history: Mapping[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Train the compiled model from `initial_epoch`; returns the history of every epoch.

    `past_history` holds the epochs before `initial_epoch` (a resumed run). Raises
    TrainingDiverged when the loss becomes NaN or infinite.
    """
    # Copied before training: callbacks (the checkpoint's state) may extend the caller's lists.
    history = {name: list(values) for name, values in (past_history or {}).items()}
    if trainer.pipeline == "tf_data":
        # The shuffle seed moves with the epoch, so a resumed run does not replay epoch 0's order.
        train = as_dataset(splits.x_train, splits.y_train, trainer.batch_size, trainer.seed + initial_epoch)
        val = as_dataset(splits.x_val, splits.y_val, trainer.eval_batch_size)
        inputs = {"x": train, "validation_data": val, "shuffle": False}  # the dataset shuffles
    else:
        inputs = {
            "x": splits.x_train,
            "y": splits.y_train,
            "validation_data": (splits.x_val, splits.y_val),
            "batch_size": trainer.batch_size,
            "validation_batch_size": trainer.eval_batch_size,
            "shuffle": True,
        }
    stopper = StopOnSignal()  # after the checkpoint and metric callbacks: the epoch is saved first
    new = model.fit(
        **inputs,
        epochs=trainer.epochs,
        initial_epoch=initial_epoch,
        verbose=trainer.verbose,
        callbacks=[*callbacks, stopper, keras.callbacks.TerminateOnNaN()],
    ).history
    for name, values in new.items():
        history.setdefault(name, []).extend(float(v) for v in values)
    if stopper.received is not None:
        raise KeyboardInterrupt(f"signal {stopper.received} after epoch {len(history.get('loss', []))}")
    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"loss became {losses[-1]} in epoch {len(losses)}; training stopped "
            "(lower optimizer.lr?)"
        )
    return history


@dataclass
class Evaluation:
    test_loss: float
    test_accuracy: float
    probabilities: np.ndarray
    predicted: np.ndarray
    confusion: np.ndarray

    def metrics(self) -> dict[str, float]:
        return {"test_loss": self.test_loss, f"test_{METRIC}": self.test_accuracy}


def evaluate(model: keras.Model, splits: Splits, batch_size: int) -> Evaluation:
    results = model.evaluate(
        splits.x_test, splits.y_test, batch_size=batch_size, verbose=0, return_dict=True
    )
    probabilities = model.predict(splits.x_test, batch_size=batch_size, verbose=0)
    predicted = probabilities.argmax(axis=1)
    n_classes = splits.y_test.shape[1]
    return Evaluation(
        test_loss=float(results["loss"]),
        test_accuracy=float(results[METRIC]),
        probabilities=probabilities,
        predicted=predicted,
        confusion=confusion_matrix(splits.test_labels, predicted, labels=list(range(n_classes))),
    )
