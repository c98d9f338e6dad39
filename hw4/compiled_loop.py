"""trainer.loop=compiled: each epoch as one compiled program over data resident as tensors.

Keras' fit runs a Python iteration per compiled call (steps_per_execution batches) and feeds
each call from a tf.data iterator; for models as small as the homework's, that dispatch, not the
arithmetic, is most of an epoch. Here an epoch is one tf.function: a loop over the epoch's
batches, gathered from the training arrays (passed in once as tensors) by the epoch's
permutation, the same stateless (seed, epoch) order as hw4.training.EpochOrder, so runs,
resumes and seeds repeat alike. Validation is a second compiled call. XLA compiles both where it
wins (dense models; XLA's CPU convolutions are slower than oneDNN's: BENCHMARKS.md).

The step is Keras' own pieces (the model's call, its trainable variables, its compiled
optimizer's `apply`), so the model, its optimizer state and its checkpoints are the ones fit
would make. The callbacks are fit's: a CallbackList sees every epoch's logs as fit reports them
(training loss and accuracy averaged over the epoch's samples, then validation), and
`model.stop_training` ends training after an epoch, as in fit.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from hw4 import names
from hw4.data import Splits
from hw4.models import has_convolutions
from hw4.training import LOSS, Augment, augmented, batch_seed, epoch_permutation

# XLA's compile costs 0.6 to 1 s more than tracing without it and saves about 0.9 ms an MLP
# step (0.22 s against 0.50 to 0.67 s an epoch of 375 steps): cold, it pays back after about 700
# to 1100 steps; with its disk cache warm (a later run of the same shapes), at once. "auto"
# leaves it out of runs shorter than one full-data epoch (375 steps), such as debug=fast
# (6 steps), and keeps every full-data run on it as before (BENCHMARKS.md, the compiled epoch).
XLA_MIN_STEPS = 300


def wants_xla(model: keras.Model, jit_compile: str, *, augment: bool, steps: int) -> bool:
    """trainer.jit_compile for the compiled loop: "auto" is XLA for models without convolutions
    (measured faster: the MLP's epoch) that train at least XLA_MIN_STEPS batches (`steps`: the
    run's planned epochs times its batches an epoch, resumed or not, so a resume compiles as
    the run did), and without augmentation (its image transform has no XLA kernel on the CPU)."""
    if augment:  # the image transform has no XLA kernel on the CPU, whatever the setting
        return False
    setting = str(jit_compile).lower()
    if setting in ("true", "false"):
        return setting == "true"
    return not has_convolutions(model) and steps >= XLA_MIN_STEPS


def run_uses_xla(model: keras.Model, trainer: DictConfig, *, n_train: int, augment: bool) -> bool:
    """`wants_xla` for a run's trainer config and training-set size (the run's `xla` tag)."""
    steps = trainer.epochs * math.ceil(n_train / trainer.batch_size)
    return wants_xla(model, trainer.jit_compile, augment=augment, steps=steps)


class CompiledEpochs:
    """The compiled programs of one run: `train(epoch)` trains one epoch and returns its
    training loss and accuracy; `validate()` returns the validation ones."""

    def __init__(
        self,
        model: keras.Model,
        splits: Splits,
        *,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        jit_compile: bool,
        augment: Augment | None = None,
    ):
        self.model = model
        self.batch_size = batch_size
        self.n_train = len(splits.x_train)
        self.n_full, self.tail = divmod(self.n_train, batch_size)
        self.n_batches = math.ceil(self.n_train / batch_size)
        self.seed = tf.constant(seed, tf.int64)
        self.x_train = tf.convert_to_tensor(splits.x_train)
        self.y_train = tf.convert_to_tensor(splits.y_train)
        # Validation in batches of eval_batch_size, the last one padded with weight 0: one shape,
        # one compiled call.
        n_val = len(splits.x_val)
        padded = math.ceil(n_val / eval_batch_size) * eval_batch_size
        index = np.concatenate([np.arange(n_val), np.zeros(padded - n_val, np.int64)])
        self.x_val = tf.convert_to_tensor(splits.x_val[index].reshape(-1, eval_batch_size, *splits.x_val.shape[1:]))
        self.y_val = tf.convert_to_tensor(splits.y_val[index].reshape(-1, eval_batch_size, *splits.y_val.shape[1:]))
        self.val_weight = tf.convert_to_tensor(
            (np.arange(padded) < n_val).astype(np.float32).reshape(-1, eval_batch_size)
        )
        self.n_val = n_val
        self.loss_fn = keras.losses.get(LOSS)
        optimizer = model.optimizer
        if not optimizer.built:  # a new model; a restored one's optimizer holds its state
            optimizer.build(model.trainable_variables)

        def step(images, labels, batch_seed):
            if augment is not None:  # the numpy pipeline's augmentation, the same seeds
                images = augmented(images, seed=batch_seed, augment=augment)
            with tf.GradientTape() as tape:
                predicted = tf.cast(model(images, training=True), tf.float32)
                loss = tf.reduce_mean(self.loss_fn(labels, predicted))
                regularization = model.losses
                total = loss + tf.add_n(regularization) if regularization else loss
            # As Keras' train_step: apply() divides by a configured loss_scale_factor.
            gradients = tape.gradient(optimizer.scale_loss(total), model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(predicted, 1), tf.argmax(labels, 1)), tf.float32))
            n = tf.cast(tf.shape(images)[0], tf.float32)
            return total * n, correct

        def full_batches(x, y, order, epoch):
            # order: this epoch's first n_full * batch_size indices, one row per batch.
            loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
            for i in tf.range(self.n_full):
                index = order[i]
                loss, correct = step(
                    tf.gather(x, index), tf.gather(y, index), batch_seed(self.seed, epoch, i, n_batches=self.n_batches)
                )
                loss_sum += loss
                correct_sum += correct
            return loss_sum, correct_sum

        def tail_batch(x, y, index, epoch):
            return step(
                tf.gather(x, index),
                tf.gather(y, index),
                batch_seed(self.seed, epoch, self.n_full, n_batches=self.n_batches),
            )

        def validation(x, y, weight):
            loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
            for i in tf.range(tf.shape(x)[0]):
                predicted = tf.cast(model(x[i], training=False), tf.float32)
                loss_sum += tf.reduce_sum(self.loss_fn(y[i], predicted) * weight[i])
                hits = tf.cast(tf.equal(tf.argmax(predicted, 1), tf.argmax(y[i], 1)), tf.float32)
                correct_sum += tf.reduce_sum(hits * weight[i])
            return loss_sum, correct_sum

        compile_ = {"jit_compile": jit_compile, "reduce_retracing": True}
        self._full_batches = tf.function(full_batches, **compile_)
        self._tail_batch = tf.function(tail_batch, **compile_)
        self._validation = tf.function(validation, **compile_)

    def permutation(self, epoch: int) -> tf.Tensor:
        """Epoch `epoch`'s order of the training samples: a function of (seed, epoch) alone."""
        return epoch_permutation(self.n_train, self.seed, tf.constant(epoch, tf.int64))

    def train(self, epoch: int) -> dict[str, float]:
        order = self.permutation(epoch)
        epoch_t = tf.constant(epoch, tf.int64)
        full = tf.reshape(order[: self.n_full * self.batch_size], [self.n_full, self.batch_size])
        loss_sum, correct_sum = self._full_batches(self.x_train, self.y_train, full, epoch_t)
        if self.tail:  # the epoch's last, smaller batch: its own (once traced) program
            tail_loss, tail_correct = self._tail_batch(
                self.x_train, self.y_train, order[self.n_full * self.batch_size :], epoch_t
            )
            loss_sum, correct_sum = loss_sum + tail_loss, correct_sum + tail_correct
        return {names.LOSS: float(loss_sum) / self.n_train, names.ACCURACY: float(correct_sum) / self.n_train}

    def validate(self) -> dict[str, float]:
        loss_sum, correct_sum = self._validation(self.x_val, self.y_val, self.val_weight)
        # As Keras' test_step, the weight penalties count (the weights do not change here).
        penalty = sum(float(loss) for loss in self.model.losses)
        return {
            names.VAL_LOSS: float(loss_sum) / self.n_val + penalty,
            names.VAL_ACCURACY: float(correct_sum) / self.n_val,
        }


def run_epochs(
    programs: CompiledEpochs,
    callbacks: Sequence[keras.callbacks.Callback],
    *,
    epochs: int,
    initial_epoch: int,
    verbose: int,
) -> Mapping[str, list[float]]:
    """fit's epoch loop over the compiled programs, with fit's callback calls; returns the
    history of the epochs it ran (as fit's History)."""
    model = programs.model
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=False, model=model,
        verbose=verbose, epochs=epochs, steps=programs.n_batches,
    )  # fmt: skip
    model.stop_training = False
    callback_list.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        logs = programs.train(epoch)
        # Progress bars see one update, after the epoch's last batch.
        callback_list.on_train_batch_end(programs.n_batches - 1, dict(logs))
        logs.update(programs.validate())
        callback_list.on_epoch_end(epoch, logs)
        if not np.isfinite(logs[names.LOSS]):  # as TerminateOnNaN, though after the epoch
            model.stop_training = True
        if model.stop_training:
            break
    if epochs > initial_epoch:  # as fit: an optimizer's EMA weights, before BestEpoch's restore
        model.optimizer.finalize_variable_values(model.trainable_variables)
    callback_list.on_train_end(logs)
    return model.history.history
