"""The training loop: runtime set-up, model and optimizer construction, fit, evaluation.

Imports TensorFlow/Keras: hw4.train imports this module only once training really starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import confusion_matrix
from tensorflow.python.framework import config as tf_framework_config  # no public way to disable determinism

from hw4 import names
from hw4.data import IMAGE_SHAPE, Splits
from hw4.errors import ConfigError, Hw4Error
from hw4.runtime import system
from hw4.runtime.signals import RunSignals, Stopped, signal_name

log = logging.getLogger(__name__)
LOSS = "categorical_crossentropy"
METRIC = names.ACCURACY


class TrainingDiverged(Hw4Error):
    """The loss became NaN or infinite."""


def configure_runtime(trainer: DictConfig, parallel_jobs: int = 1) -> int:
    """Seed Python, NumPy and TensorFlow; set thread pools; optionally make ops deterministic.

    Parallel sweep jobs share the cores: each gets cores // parallel_jobs threads unless
    trainer.threads says otherwise, so that they do not oversubscribe the machine. Returns
    TensorFlow's intra-op thread count.
    """
    # Sweep jobs sharing a process start from a clean slate. Without the full garbage collection
    # clear_session would run (0.3 s with TensorFlow loaded): an earlier job's small model is
    # freed by Python's next collection anyway.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(trainer.seed)
    keras.mixed_precision.set_global_policy(trainer.precision)
    if trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    elif tf_framework_config.is_op_determinism_enabled():  # an earlier job of this process's sweep
        tf_framework_config.disable_op_determinism()
    # TensorFlow's default counts the machine's cores, not the ones this process may use.
    threads = trainer.threads or max(1, system.usable_cores() // parallel_jobs)
    if threads != tf.config.threading.get_intra_op_parallelism_threads():
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # a reused worker process: TensorFlow already started its pools
            log.debug("thread pools already initialised; keeping them")
    return tf.config.threading.get_intra_op_parallelism_threads() or system.usable_cores()


def build_model(model: DictConfig, num_classes: int) -> keras.Model:
    """Call the builder named in `model._target_` with the model config's other fields."""
    return instantiate(model, num_classes=num_classes, _convert_="all")


@keras.saving.register_keras_serializable(package="hw4")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """A linear ramp from 0 to `after`'s first rate over `warmup_steps`, then `after` (a rate or
    a Keras schedule, counted from the ramp's end). Keras' CosineDecay has a warm-up of its
    own; this one serves the constant and step schedules. Serializable, so a checkpoint keeps it."""

    def __init__(self, after: float | keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int):
        self.after = after
        self.warmup_steps = int(warmup_steps)

    def _after(self, step: tf.Tensor) -> tf.Tensor:
        if isinstance(self.after, keras.optimizers.schedules.LearningRateSchedule):
            return tf.cast(self.after(step), tf.float32)
        return tf.constant(float(self.after), tf.float32)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        ramp = self._after(tf.constant(0.0)) * (step + 1) / self.warmup_steps
        return tf.where(step < self.warmup_steps, ramp, self._after(tf.maximum(step - self.warmup_steps, 0.0)))

    def get_config(self) -> dict:
        after = self.after
        if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = keras.saving.serialize_keras_object(after)
        return {"after": after, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config: dict) -> "LinearWarmup":
        after = config["after"]
        if isinstance(after, dict):
            after = keras.saving.deserialize_keras_object(after)
        return cls(after, config["warmup_steps"])


def build_schedule(
    schedule: DictConfig, *, peak: float, steps_per_epoch: int, epochs: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate over training (conf/schedule), on Keras' own schedules; `peak` is
    optimizer.lr, so a sweep over optimizer.lr sweeps the peak. Steps are optimizer steps (batches):
    a resumed run's restored optimizer counts on from its iterations, so the schedule does too."""
    schedules = keras.optimizers.schedules
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch * schedule.warmup_epochs
    if schedule.name == "one_cycle":
        ramp = max(1, int(total * schedule.warmup_fraction))
        start = peak / schedule.start_divisor
        return schedules.CosineDecay(
            # Keras takes alpha as a fraction of the warm-up's target, the peak.
            start, decay_steps=max(1, total - ramp), alpha=1 / schedule.end_divisor,
            warmup_target=peak, warmup_steps=ramp,
        )  # fmt: skip
    if schedule.name == "cosine":
        if warmup:  # from the ramp's first step (peak / its steps, as LinearWarmup's) to the peak
            return schedules.CosineDecay(
                peak / warmup, decay_steps=max(1, total - warmup), alpha=schedule.min_fraction, warmup_target=peak,
                warmup_steps=warmup,
            )  # fmt: skip
        return schedules.CosineDecay(peak, decay_steps=total, alpha=schedule.min_fraction)
    after: float | keras.optimizers.schedules.LearningRateSchedule = peak
    if schedule.name == "step":
        every = steps_per_epoch * schedule.every
        # Keras keeps values[i] up to and including boundaries[i]: the step before each decay.
        boundaries = list(range(every - 1, total - 1, every))
        if boundaries:  # none when `every` reaches past the last epoch: the peak throughout
            values = [peak * schedule.factor**i for i in range(len(boundaries) + 1)]
            after = schedules.PiecewiseConstantDecay(boundaries, values)
    return LinearWarmup(after, warmup) if warmup else after


class LearningRateLog(keras.callbacks.Callback):
    """Adds the rate each epoch began with (the schedule's value at its first step) to the
    epoch's logs (names.LEARNING_RATE), logged and checkpointed with the others."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs[names.LEARNING_RATE] = self.rate


def build_optimizer(
    optimizer: DictConfig, *, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | None = None
) -> keras.optimizers.Optimizer:
    """The Keras optimizer `optimizer` names, at `learning_rate` (a schedule from
    build_schedule), or at optimizer.lr constant."""
    kwargs = OmegaConf.to_container(optimizer.kwargs, resolve=True)
    rate = optimizer.lr if learning_rate is None else learning_rate
    identifier = {"class_name": optimizer.name, "config": {"learning_rate": rate, **kwargs}}
    try:
        return keras.optimizers.get(identifier)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"optimizer.name={optimizer.name!r} with kwargs {kwargs} is not a Keras optimizer ({exc})"
        ) from None


class EpochMetricsLogger(keras.callbacks.Callback):
    """Hands each epoch's Keras logs to `log_metrics(metrics, step=epoch)` (one write an epoch).
    Epochs in `already_logged` are not written again: a resume that fell back to an older
    checkpoint (a damaged latest one) trains them again, and MLflow keeps each epoch once."""

    def __init__(self, log_metrics: Callable[..., None], already_logged: frozenset[int] = frozenset()):
        super().__init__()
        self.log_metrics = log_metrics
        self.already_logged = already_logged

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if logs and epoch not in self.already_logged:
            self.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch)


def best_epoch(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The best-epoch metrics of a history: highest validation accuracy (its first epoch on a
    tie, as EarlyStopping counts), its 0-based epoch, and the lowest validation loss."""
    accuracy = history.get(names.VAL_ACCURACY) or []
    if not accuracy:
        return {}
    best = int(np.argmax(accuracy))
    return {
        names.BEST_VAL_ACCURACY: float(accuracy[best]),
        names.BEST_EPOCH: best,
        names.BEST_VAL_LOSS: float(np.min(history[names.VAL_LOSS])),
    }


class BestEpoch(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping on validation accuracy, able to continue a resumed run.

    `patience=None` never stops; `restore_best=True` keeps the best epoch's weights and puts them
    back into the model when training ends. EarlyStopping forgets everything in on_train_begin,
    so a resumed run hands in what it had: the history so far and the best weights its
    checkpoint kept.
    """

    def __init__(
        self,
        patience: int | None,
        restore_best: bool,
        past_history: Mapping[str, Sequence[float]] | None = None,
        past_best_weights: list | None = None,
    ):
        super().__init__(
            monitor=names.VAL_ACCURACY,
            mode="max",
            patience=patience if patience is not None else np.inf,
            restore_best_weights=restore_best,
        )
        self.past = best_epoch(past_history or {})
        self.past_epochs = len((past_history or {}).get(names.VAL_ACCURACY, []))
        self.past_best_weights = past_best_weights

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        super().on_train_begin(logs)
        if self.past:
            self.best = self.past[names.BEST_VAL_ACCURACY]
            self.best_epoch = int(self.past[names.BEST_EPOCH])
            self.wait = self.past_epochs - 1 - self.best_epoch
            self.best_weights = self.past_best_weights if self.restore_best_weights else None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        if self.stopped_epoch:
            log.info(
                "early stopping after epoch %d: no better validation accuracy for %s epochs", epoch + 1, self.patience
            )


class EpochPruner(keras.callbacks.Callback):
    """Stops training after an epoch whose logs `decide(epoch, logs)` finds hopeless: it returns
    why (logged), or None to go on. The epoch is saved and logged first (this callback comes
    last). The decision rules: `MedianPruner` (grid sweeps, siblings read from the store) and an
    Optuna trial's pruner (hw4.sweep.study.JobTrial.decide)."""

    def __init__(self, decide: Callable[[int, Mapping[str, float]], str | None]):
        super().__init__()
        self.decide = decide
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        reason = self.decide(epoch, dict(logs or {}))
        if reason:
            self.pruned_at = epoch
            self.model.stop_training = True
            log.warning("pruned after epoch %d: %s", epoch + 1, reason)


class MedianPruner(EpochPruner):
    """Stops a sweep job whose validation accuracy falls below its siblings' median.

    `sibling_values(epoch)` returns the other jobs' validation accuracies at that epoch (read
    from the tracking store, so parallel jobs in other processes count). No decision during
    the first `after` epochs, nor with fewer than MIN_SIBLINGS values to compare with.
    """

    MIN_SIBLINGS = 2

    def __init__(self, sibling_values: Callable[[int], list[float]], after: int):
        super().__init__(self.below_median)
        self.sibling_values = sibling_values
        self.after = after

    def below_median(self, epoch: int, logs: Mapping[str, float]) -> str | None:
        if epoch + 1 < self.after or names.VAL_ACCURACY not in logs:
            return None
        values = self.sibling_values(epoch)
        if len(values) < self.MIN_SIBLINGS:
            return None
        median = float(np.median(values))
        if logs[names.VAL_ACCURACY] >= median:
            return None
        return (
            f"validation accuracy {logs[names.VAL_ACCURACY]:.4f} is below the median {median:.4f} "
            f"of {len(values)} sibling runs"
        )


class StepProgbar(keras.utils.Progbar):
    """Keras' progress bar, timing steps rather than compiled calls.

    Keras leaves the first update out of its time per step (it includes tracing) but assumes
    that update came after one step; with steps_per_execution=16 it came after 16, so the time
    per step was divided by 15 steps too many. Here the time since the first update is divided
    by the steps since the first update."""

    def _estimate_step_duration(self, current: int, now: float) -> float:
        if not current:
            return 0
        if getattr(self, "_first_update", None) is None:
            self._first_update = (current, now)
        first_step, first_time = self._first_update
        if current > first_step:
            return (now - first_time) / (current - first_step)
        return (now - self._start) / current


class StepProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar with honest counts under steps_per_execution.

    Keras reports each compiled call as its last step, call start + steps_per_execution - 1, also
    for the epoch's last call, which runs fewer steps: the bar read 384/375, then 375/375. The
    count is capped at the epoch's steps, and time per step is per step (StepProgbar)."""

    def _maybe_init_progbar(self) -> None:
        if self.progbar is None:
            self.progbar = StepProgbar(
                target=self.target, verbose=self.verbose, unit_name="step", stateless_metrics=set()
            )

    def _update_progbar(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        if self.target is not None:
            batch = min(batch, self.target - 1)
        super()._update_progbar(batch, logs)


class StopOnSignal(keras.callbacks.Callback):
    """After a first Ctrl-C or SIGTERM (recorded by `signals`, or in a sweep its stop file), stop
    at the end of the current epoch, so that its checkpoint and metrics are whole. In the last
    epoch there is nothing to stop: training completes, and `stopped_after` stays None."""

    def __init__(self, signals: RunSignals) -> None:
        super().__init__()
        self.signals = signals
        self.stopped_after: int | None = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if self.signals.stop_requested and epoch + 1 < self.params.get("epochs", epoch + 1):
            self.model.stop_training = True
            self.stopped_after = epoch


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


@dataclass(frozen=True)
class Augment:
    """prep=augment: each training image shifted by up to `max_shift` pixels each way and, with
    `flip`, flipped left-right, at random."""

    max_shift: int
    flip: bool


def augmented(images: tf.Tensor, *, seed: tf.Tensor, augment: Augment) -> tf.Tensor:
    """A batch of images, each shifted and flipped at random by stateless ops of `seed` alone
    (a [2] tensor): the same seed, the same batch, however often it is drawn."""
    shape = tf.shape(images)
    height, width = IMAGE_SHAPE
    x = tf.reshape(images, [-1, height, width, 1])
    flip_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augment.flip:
        x = tf.image.stateless_random_flip_left_right(x, seed=flip_seed)  # each image on its own
    if augment.max_shift:
        n = tf.shape(x)[0]
        shifts = tf.random.stateless_uniform(
            [n, 2], seed=shift_seed, minval=-augment.max_shift, maxval=augment.max_shift + 1, dtype=tf.int32
        )
        offsets = tf.cast(shifts, tf.float32)
        ones, zeros = tf.ones([n], tf.float32), tf.zeros([n], tf.float32)
        # Each output pixel (x, y) reads input pixel (x + dx, y + dy): the image moves by -d.
        transforms = tf.stack([ones, zeros, offsets[:, 0], zeros, ones, offsets[:, 1], zeros, zeros], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=tf.constant([height, width]), fill_value=0.0,
            interpolation="NEAREST", fill_mode="CONSTANT",
        )  # fmt: skip
    return tf.reshape(x, shape)


def epoch_permutation(n: int, seed: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    """Epoch `epoch`'s order of n training samples: a function of (seed, epoch) alone."""
    order_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=order_seed)


def batch_seed(seed: tf.Tensor, epoch: tf.Tensor, batch: tf.Tensor, *, n_batches: int) -> tf.Tensor:
    """The augmentation seed of one batch: (seed, epoch x batches + batch)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * n_batches + tf.cast(batch, tf.int64)])


class EpochOrder(keras.callbacks.Callback):
    """In-memory training batches in an order that is a function of (seed, epoch) alone.

    Keras' own shuffle of NumPy inputs draws its permutation inside a tf.data function from
    TensorFlow's global seed: once a seed is set (trainer.seed), every epoch sees the same batch
    order, and a resumed run replays epoch 0's order (tests/test_training.py shows both). Here
    each epoch draws a stateless permutation of (seed, epoch): a new order every epoch, and the
    same order for epoch k whether or not the run was interrupted before it. The batches are
    gathered from the arrays in memory, as Keras' own adapter does. As a callback it tells the
    dataset which epoch begins; fit makes a new iterator, and so a new permutation, per epoch.
    With `augment`, each batch's images are shifted and flipped by a seed of (seed, epoch, batch).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, *, augment: Augment | None = None):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        n = len(x)
        seed_value = tf.constant(seed, dtype=tf.int64)

        def permutation(_: tf.Tensor) -> tf.Tensor:
            return epoch_permutation(n, seed_value, self.epoch.read_value())

        indices = (
            tf.data.Dataset.range(1)
            .map(permutation)
            .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
            .apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))
        )
        arrays = tf.data.Dataset.from_tensors((tf.convert_to_tensor(x), tf.convert_to_tensor(y))).repeat()
        # Under op determinism tf.data runs a parallel map sequentially anyway, and its rewrite
        # prints a spurious C++ error line (see evaluate()): ask for the sequential map then.
        parallel = None if tf_framework_config.is_op_determinism_enabled() else tf.data.AUTOTUNE
        n_batches = math.ceil(n / batch_size)

        def gathered(batch: tf.Tensor, index: tf.Tensor, data: tuple) -> tuple[tf.Tensor, tf.Tensor]:
            images, labels = tf.gather(data[0], index), tf.gather(data[1], index)
            if augment is not None:
                seed_ = batch_seed(seed_value, self.epoch.read_value(), batch, n_batches=n_batches)
                images = augmented(images, seed=seed_, augment=augment)
            return images, labels

        batches = tf.data.Dataset.zip((indices.enumerate(), arrays)).map(
            lambda numbered, data: gathered(numbered[0], numbered[1], data), num_parallel_calls=parallel
        )
        options = tf.data.Options()
        # As Keras does for arrays: no graph rewrites (serialising the arrays would copy them),
        # and the epoch variable is state the pipeline may read.
        options.experimental_optimization.apply_default_optimizations = False
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        self.dataset = batches.with_options(options).prefetch(tf.data.AUTOTUNE)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.epoch.assign(epoch)


def as_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
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
    *,
    initial_epoch: int = 0,
    past_history: Mapping[str, list[float]] | None = None,
    signals: RunSignals | None = None,
    augment: Augment | None = None,
) -> dict[str, list[float]]:
    """Train the compiled model from `initial_epoch`; returns the history of every epoch.

    `past_history` holds the epochs before `initial_epoch` (a resumed run); `augment` shifts and
    flips the training batches (prep=augment). Raises TrainingDiverged when the loss becomes NaN
    or infinite.
    """
    # Copied before training: callbacks (the checkpoint's state) may extend the caller's lists.
    history = {name: list(values) for name, values in (past_history or {}).items()}
    compiled = trainer.loop == "compiled"
    if compiled:
        inputs = {}  # the compiled programs hold the data
    elif trainer.pipeline == "tf_data":
        # The shuffle seed moves with the epoch, so a resumed run does not replay epoch 0's order.
        train = as_dataset(splits.x_train, splits.y_train, trainer.batch_size, trainer.seed + initial_epoch)
        val = as_dataset(splits.x_val, splits.y_val, trainer.eval_batch_size)
        inputs = {"x": train, "validation_data": val, "shuffle": False}  # the dataset shuffles
    else:
        order = EpochOrder(splits.x_train, splits.y_train, trainer.batch_size, trainer.seed, augment=augment)
        inputs = {
            "x": order.dataset,
            # A dataset, not arrays: see evaluate() (the same batches, without the spurious line).
            "validation_data": as_dataset(splits.x_val, splits.y_val, trainer.eval_batch_size),
            "shuffle": False,  # the dataset orders itself
        }
        callbacks = [order, *callbacks]  # first: the epoch is set before its batches are drawn
    callbacks = [LearningRateLog(), *callbacks]  # first at the epoch's end: the others see the rate
    with contextlib.ExitStack() as stack:
        if signals is None:  # no run around this fit (a benchmark, a test): handle them here
            signals = stack.enter_context(RunSignals())
        stopper = StopOnSignal(signals)  # after the checkpoint and metric callbacks: the epoch is saved first
        progress = [StepProgress()] if trainer.verbose else []  # verbose 2 is one line per epoch
        if compiled:
            from hw4 import compiled_loop

            programs = compiled_loop.CompiledEpochs(
                model, splits, batch_size=trainer.batch_size, eval_batch_size=trainer.eval_batch_size,
                seed=trainer.seed, augment=augment,
                jit_compile=compiled_loop.run_uses_xla(
                    model, trainer, n_train=len(splits.x_train), augment=augment is not None
                ),
            )  # fmt: skip
            new = compiled_loop.run_epochs(
                programs, [*callbacks, stopper, *progress],
                epochs=trainer.epochs, initial_epoch=initial_epoch, verbose=trainer.verbose,
            )  # fmt: skip
        else:
            new = model.fit(
                **inputs,
                epochs=trainer.epochs,
                initial_epoch=initial_epoch,
                verbose=trainer.verbose,
                callbacks=[*callbacks, stopper, keras.callbacks.TerminateOnNaN(), *progress],
            ).history
    for name, values in new.items():
        history.setdefault(name, []).extend(float(v) for v in values)
    if stopper.stopped_after is not None:
        signum = signals.signum()
        raise Stopped(signum, f"{signal_name(signum)}: stopped after epoch {stopper.stopped_after + 1}")
    losses = history.get(names.LOSS, [])
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"loss became {losses[-1]} in epoch {len(losses)}; training stopped (lower optimizer.lr?)"
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
        return {names.TEST_LOSS: self.test_loss, names.TEST_ACCURACY: self.test_accuracy}


def evaluate(model: keras.Model, splits: Splits, batch_size: int) -> Evaluation:
    """Test loss, accuracy and confusion matrix from one pass of predictions over the test set
    (model.evaluate would make a second pass, and trace a second function)."""
    # A dataset, not the array: Keras' adapter for arrays maps in parallel, and under op
    # determinism TensorFlow 2.21's rewrite of that map prints a spurious C++ error line
    # ("NodeDef mentions attribute use_unbounded_threadpool"). Same predictions, no slower.
    batches = tf.data.Dataset.from_tensor_slices(splits.x_test).batch(batch_size)
    probabilities = model.predict(batches, verbose=0)
    predicted = probabilities.argmax(axis=1)
    labels = splits.test_labels
    # The loss the model was compiled with, averaged over the test images as evaluate() does.
    loss = keras.losses.get(LOSS)(keras.ops.convert_to_tensor(splits.y_test), probabilities)
    n_classes = splits.y_test.shape[1]
    return Evaluation(
        test_loss=float(keras.ops.mean(loss)),
        test_accuracy=float(np.mean(predicted == labels)),
        probabilities=probabilities,
        predicted=predicted,
        confusion=confusion_matrix(labels, predicted, labels=list(range(n_classes))),
    )
