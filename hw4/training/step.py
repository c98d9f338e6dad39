"""The training step, written once on Keras 3's stateless API, and the programs built from it.

A run's state is plain arrays: the model's trainable and non-trainable values (batch norm's
statistics, dropout's seed states) and the optimizer's values. `model.stateless_call` and
`optimizer.stateless_apply` turn a state and a batch into the next state, so the same function
trains on TensorFlow and on JAX (hw4.training.compile says how each backend compiles it and how
it runs several members side by side). The loss, the weight penalties, loss scaling and the
accuracy are computed here and nowhere else, for training and for validation.

The learning rate is the member's peak (optimizer.lr) times the schedule's unit-peak value at
the optimizer's step (hw4.training.schedules), written into the optimizer's own `learning_rate`
before each update: members of one program differ in their peak, not in their program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras
from keras import ops

from hw4.data import IMAGE_SHAPE
from hw4.training.batches import Augment

LOSS = "categorical_crossentropy"
ITERATIONS = 0  # position in optimizer.variables (Keras' base optimizer)


def learning_rate_position(optimizer: keras.optimizers.Optimizer) -> int | None:
    """Where the optimizer's `learning_rate` variable sits in its variables; None when its rate is
    a schedule object (optimizers saved before the step set the rate: no variable to set)."""
    rate = getattr(optimizer, "_learning_rate", None)  # Keras keeps the variable here, unexposed
    if not optimizer.built:
        return None if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) else 1
    return next((i for i, v in enumerate(optimizer.variables) if v is rate), None)


@dataclass
class State:
    """One member's values: a pytree of arrays (JAX stacks members on a first axis)."""

    trainable: list
    non_trainable: list
    optimizer: list

    def tree(self) -> tuple[list, list, list]:
        return (self.trainable, self.non_trainable, self.optimizer)


def read_state(model: keras.Model) -> tuple[list, list, list]:
    """The model's and its optimizer's current values (the optimizer built if new)."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )


def write_state(model: keras.Model, state: tuple[list, list, list]) -> None:
    """Put a state's values back into the model's and optimizer's variables (for callbacks,
    checkpoints and the logged model)."""
    trainable, non_trainable, optimizer = state
    for variables, values in (
        (model.trainable_variables, trainable),
        (model.non_trainable_variables, non_trainable),
        (model.optimizer.variables, optimizer),
    ):
        for variable, value in zip(variables, values):
            variable.assign(value)


def augmented(images: Any, flip: Any, shift: Any, *, augment: Augment) -> Any:
    """A batch of images, each flipped left-right where `flip` and moved by `shift` (rows,
    columns; pixels moved in are 0), as keras.ops: the same draws, the same batch on any backend."""
    height, width = IMAGE_SHAPE
    shape = ops.shape(images)
    x = ops.reshape(images, (-1, height, width))
    if augment.flip:
        x = ops.where(ops.reshape(flip, (-1, 1, 1)), ops.flip(x, axis=2), x)
    if augment.max_shift:
        n = ops.shape(x)[0]
        # Output pixel (r, c) reads input pixel (r + dr, c + dc): the image moves by -d.
        rows = ops.arange(height, dtype="int32")[None, :] + shift[:, :1]
        cols = ops.arange(width, dtype="int32")[None, :] + shift[:, 1:]
        x = ops.take_along_axis(x, ops.broadcast_to(ops.clip(rows, 0, height - 1)[:, :, None], (n, height, width)), 1)
        x = ops.take_along_axis(x, ops.broadcast_to(ops.clip(cols, 0, width - 1)[:, None, :], (n, height, width)), 2)
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        x = ops.where(inside, x, ops.zeros_like(x))
    return ops.reshape(x, shape)


def _loss_and_hits(labels: Any, outputs: Any) -> tuple[Any, Any]:
    """Per-sample loss and hits (1.0 where the top class is the label), in float32."""
    predicted = ops.cast(outputs, "float32")
    loss = keras.losses.get(LOSS)(labels, predicted)
    hits = ops.cast(ops.equal(ops.argmax(predicted, 1), ops.argmax(labels, 1)), "float32")
    return loss, hits


@dataclass(frozen=True)
class Programs:
    """The pure functions of one architecture, each of (state, arrays) to arrays.

    `train_batches(state, peak, order, flip, shift, x, y, start, stop)` trains batches
    [start, stop) of `order` (rows of batch indices) and returns the new state and the sums of
    the batch losses times their sizes and of hits; `validate(state, x, y, weight)` sums
    weighted losses and hits over stacked batches; `predict(state, x)` gives probabilities of
    stacked batches."""

    train_batches: Callable[..., Any]
    validate: Callable[..., Any]
    predict: Callable[..., Any]


def programs(
    model: keras.Model,
    *,
    schedule: Any,
    augment: Augment | None,
    value_and_grad: Callable[..., Any],
    stateful: bool = False,
) -> Programs:
    """The programs of `model`'s architecture. `schedule`: the unit-peak learning rate, a float
    or a Keras schedule of the step; `value_and_grad`: the backend's (hw4.training.compile).

    Pure (`stateful` false, JAX): the model is a template, its own variables never read; a
    state goes in and the next comes out. `stateful` (TensorFlow, whose optimizers refuse
    `stateless_apply`: "incompatible with tf.distribute"): the state is the model's own
    variables, read at each step and updated in place by the same optimizer's `apply`; the
    programs take and return an empty state. The step is the same function either way."""
    optimizer = model.optimizer
    rate_at = learning_rate_position(optimizer) if optimizer is not None else None

    def current(state: Any) -> tuple[list, list, list]:
        if not stateful:
            return state
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )

    def step(state: Any, peak: Any, images: Any, labels: Any) -> tuple[Any, Any, Any]:
        trainable, non_trainable, optimizer_values = current(state)

        def objective(trainable: list) -> tuple[Any, tuple]:
            outputs, new_non_trainable, losses = model.stateless_call(
                trainable, non_trainable, images, training=True, return_losses=True
            )
            loss, hits = _loss_and_hits(labels, outputs)
            total = ops.mean(loss) + _penalty(losses)
            # Loss scaling inside the gradient; the optimizer divides it out again.
            return optimizer.scale_loss(total), (total, ops.sum(hits), new_non_trainable)

        (_, (total, hits, non_trainable)), grads = value_and_grad(objective)(trainable)
        assert rate_at is not None, "the optimizer has no learning-rate variable for the step to set"
        iterations = optimizer_values[ITERATIONS]
        rate = peak * (schedule(iterations) if callable(schedule) else schedule)
        rate = ops.cast(rate, optimizer_values[rate_at].dtype)
        n = ops.cast(ops.shape(images)[0], "float32")
        if stateful:
            optimizer.variables[rate_at].assign(rate)
            optimizer.apply(grads, model.trainable_variables)
            for variable, value in zip(model.non_trainable_variables, non_trainable):
                variable.assign(value)
            return state, total * n, hits
        optimizer_values = [rate if i == rate_at else v for i, v in enumerate(optimizer_values)]
        trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable)
        return (trainable, non_trainable, optimizer_values), total * n, hits

    def train_batches(state, peak, order, flip, shift, x, y, start, stop):
        def body(i, carry):
            state, loss_sum, hit_sum = carry
            index = order[i]
            images = ops.take(x, index, axis=0)
            if augment is not None:
                images = augmented(images, flip[i], shift[i], augment=augment)
            state, loss, hits = step(state, peak, images, ops.take(y, index, axis=0))
            return state, loss_sum + loss, hit_sum + hits

        zero = ops.zeros((), "float32")
        if stateful:  # the state is in the variables: the loop carries the sums alone
            sums = ops.fori_loop(start, stop, lambda i, sums: body(i, (state, *sums))[1:], (zero, zero))
            return (state, *sums)
        return ops.fori_loop(start, stop, body, (state, zero, zero))

    def validate(state, x, y, weight):
        trainable, non_trainable, _ = current(state)

        def body(i, sums):
            outputs, _, losses = model.stateless_call(
                trainable, non_trainable, x[i], training=False, return_losses=True
            )
            loss, hits = _loss_and_hits(y[i], outputs)
            loss = loss + _penalty(losses)  # as Keras' test_step, the weight penalties count
            return sums[0] + ops.sum(loss * weight[i]), sums[1] + ops.sum(hits * weight[i])

        zero = ops.zeros((), "float32")
        return ops.fori_loop(0, ops.shape(x)[0], body, (zero, zero))

    def predict(state, x):
        trainable, non_trainable, _ = current(state)

        def body(i, out):
            outputs, _ = model.stateless_call(trainable, non_trainable, x[i], training=False)
            return ops.slice_update(out, (i, 0, 0), ops.cast(outputs, "float32")[None])

        n_classes = model.output_shape[-1]
        return ops.fori_loop(0, ops.shape(x)[0], body, ops.zeros((ops.shape(x)[0], ops.shape(x)[1], n_classes)))

    return Programs(train_batches, validate, predict)


def _penalty(losses: list) -> Any:
    """The model's weight penalties (regularizers), summed; 0 without any."""
    return ops.sum(ops.stack([ops.cast(x, "float32") for x in losses])) if losses else 0.0
