"""The epoch loop on the stateless step (hw4/training): a member of a program equals the job
trained alone; a stopped member stops while the others go on; stops on signals; loss scaling.

In-process, on the backend the suite runs under (TensorFlow); tests/training/test_backends.py
runs them again under KERAS_BACKEND=jax, in a process of its own (all but the resume).
"""

from __future__ import annotations

import os
import signal

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from hw4 import models, names
from hw4.data import Splits
from hw4.runtime.signals import RunSignals, Stopped
from hw4.training import batches, loop, runtime, schedules

N_TRAIN, N_VAL, BATCH = 520, 100, 64  # 8 full batches and a tail of 8
BUILDERS = {
    "mlp": lambda: models.mlp([784], hidden_units=(16,)),
    "lenet_dropout_bn": lambda: models.lenet([28, 28, 1], dropout=0.5, batch_norm=True),
}


def splits(shape: tuple[int, ...]) -> Splits:
    rng = np.random.default_rng(0)
    n = N_TRAIN + 2 * N_VAL
    x = rng.random((n, *shape), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    cut = [N_TRAIN, N_TRAIN + N_VAL]
    xs, ys = np.split(x, cut), np.split(y, cut)
    return Splits(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2])


def member(
    name: str, *, seed: int, lr: float, optimizer: dict | None = None, epochs_done: int = 0, **kwargs
) -> loop.Member:
    keras.utils.set_random_seed(seed)
    model = BUILDERS[name]()
    settings = {"name": "adam", "lr": lr, "kwargs": optimizer or {}}
    runtime.compile_model(model, schedules.build_optimizer(OmegaConf.create(settings)))
    return loop.Member(model=model, callbacks=list(kwargs.pop("callbacks", [])), seed=seed, peak=lr, **kwargs)


def settings(epochs: int = 3, **kwargs) -> loop.LoopSettings:
    schedule = kwargs.pop("schedule", 1.0)
    return loop.LoopSettings(epochs=epochs, batch_size=BATCH, eval_batch_size=64, schedule=schedule, **kwargs)


def weights(m: loop.Member) -> list[np.ndarray]:
    return [np.asarray(v) for v in m.model.weights]


def shape_of(name: str) -> tuple[int, ...]:
    return (784,) if name == "mlp" else (28, 28, 1)


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=[pytest.mark.slow] if name != "mlp" else []) for name in BUILDERS]
)  # LeNet-5's compiles: 13 s
def test_a_member_of_a_program_equals_the_job_trained_alone(name):
    """Three members (own seeds, own rates, a schedule shared in shape) trained as one program
    give each the history and weights of the same job trained alone, within float tolerance.
    LeNet-5 with dropout and batch norm: the seed states and moving statistics too. On JAX the
    members' convolutions run batched (vmap), summing in another order: rounding differences
    that grow a little over epochs at rate 1e-2, hence the looser tolerance there."""
    rtol, atol = (1e-3, 1e-4) if keras.backend.backend() == "jax" else (2e-5, 1e-5)
    # Weights differ more than metrics on JAX: LeNet-5 at rate 1e-2 with dropout and batch norm on
    # random data amplifies the rounding over 27 steps (a few kernel entries by up to 5%).
    weight_atol = 1e-2 if keras.backend.backend() == "jax" else atol
    data = splits(shape_of(name))
    shape = schedules.build_schedule(
        OmegaConf.create({"_target_": "hw4.training.schedules.cosine", "name": "cosine", "warmup_epochs": 1,
                          "min_fraction": 0.1}),
        steps_per_epoch=9, epochs=3,
    )  # fmt: skip
    plan = [(0, 1e-3), (1, 3e-3), (2, 1e-2)]
    together = [member(name, seed=s, lr=lr) for s, lr in plan]
    loop.train(together, data, settings(schedule=shape), RunSignals())
    for (seed, lr), trained in zip(plan, together):
        alone = member(name, seed=seed, lr=lr)
        loop.train([alone], data, settings(schedule=shape), RunSignals())
        for key in (names.LOSS, names.VAL_LOSS, names.LEARNING_RATE):
            np.testing.assert_allclose(trained.history[key], alone.history[key], rtol=rtol, atol=atol, err_msg=key)
        # Accuracy counts samples: a near tie on the random data may flip one on JAX.
        flips = 1 / N_VAL if keras.backend.backend() == "jax" else 0
        np.testing.assert_allclose(
            trained.history[names.VAL_ACCURACY], alone.history[names.VAL_ACCURACY], atol=flips + 1e-9
        )
        for a, b in zip(weights(trained), weights(alone)):
            np.testing.assert_allclose(a, b, rtol=10 * rtol, atol=weight_atol)
    assert len({round(m.history[names.LOSS][-1], 6) for m in together}) == 3  # the members did differ


class StopAt(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


def test_a_stopped_member_stops_updating_while_the_others_go_on():
    data = splits((784,))
    ended = []
    # A decider (a pruner) stops it: the loop tells its run that training ended there.
    stopping = member("mlp", seed=0, lr=1e-3, deciders=[StopAt(0)], on_ended=lambda: ended.append(True))
    going = member("mlp", seed=1, lr=1e-3)
    loop.train([stopping, going], data, settings(epochs=3), RunSignals())
    assert len(stopping.history[names.LOSS]) == 1 and len(going.history[names.LOSS]) == 3
    assert stopping.ended_early and ended == [True] and not going.ended_early
    one_epoch = member("mlp", seed=0, lr=1e-3)
    loop.train([one_epoch], data, settings(epochs=1), RunSignals())
    for a, b in zip(weights(stopping), weights(one_epoch)):  # no update after its stop
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_signal_in_the_epoch_where_early_stopping_fires_ends_the_run_as_finished():
    """Pruning or early stopping decided the epoch: the run ended, whatever the signal says
    (a resume must not train past it); a member still going stops on the signal."""
    data = splits((784,))
    signals = RunSignals()

    class SignalDuringTheEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            signals.received = signal.SIGTERM  # as the handler records a first signal

    pruned = member("mlp", seed=0, lr=1e-3, callbacks=[SignalDuringTheEpoch(), StopAt(0)])
    other = member("mlp", seed=1, lr=1e-3)
    loop.train([pruned, other], data, settings(epochs=3), signals)
    assert pruned.ended_early and pruned.stopped_after is None
    assert other.stopped_after == 0 and not other.ended_early


def test_a_member_that_begins_later_trains_even_when_the_others_have_stopped():
    """A run resumed ahead of the others (its first epoch 2) in a group whose other members all
    stop at epoch 0: it still trains its epochs (the loop used to end with no member active)."""
    data = splits((784,))
    stopping = member("mlp", seed=0, lr=1e-3, callbacks=[StopAt(0)])
    ahead = member("mlp", seed=1, lr=1e-3, initial_epoch=2)
    loop.train([stopping, ahead], data, settings(epochs=4), RunSignals())
    assert len(stopping.history[names.LOSS]) == 1 and len(ahead.history[names.LOSS]) == 2
    assert ahead.stopped_after is None and not ahead.ended_early


def test_a_stop_before_a_member_begins_stops_it_where_it_is():
    data = splits((784,))
    signals = RunSignals()
    signals.received = signal.SIGTERM
    ahead = member("mlp", seed=1, lr=1e-3, initial_epoch=2)
    loop.train([member("mlp", seed=0, lr=1e-3), ahead], data, settings(epochs=4), signals)
    assert ahead.stopped_after == 1 and not ahead.history  # KILLED after its checkpoint's epoch 2


class SecondSignal(keras.callbacks.Callback):
    """Sends this process SIGINT twice after the first chunk of batches: a user's Ctrl-C, Ctrl-C."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(batch)
        if len(self.seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_interrupts_within_a_few_batches(monkeypatch):
    monkeypatch.setattr(loop, "CHUNK_BATCHES", 2)
    data = splits((784,))
    ctrl_c = SecondSignal()
    m = member("mlp", seed=0, lr=1e-3, callbacks=[ctrl_c])
    with RunSignals() as signals, pytest.raises(Stopped, match="again: stopped at once"):
        loop.train([m], data, settings(epochs=2), signals)
    # Stopped after the first chunk's batches, not at the end of the epoch's N_TRAIN // BATCH.
    assert ctrl_c.seen == [loop.CHUNK_BATCHES - 1] and not m.history


def test_loss_scaling_is_inside_the_gradient():
    """optimizer.kwargs.loss_scale_factor scales the loss before the gradient and divides it out
    in the update: the same training (it used to break training)."""
    data = splits((784,))
    plain = member("mlp", seed=0, lr=1e-3)
    scaled = member("mlp", seed=0, lr=1e-3, optimizer={"loss_scale_factor": 1024.0})
    for m in (plain, scaled):
        loop.train([m], data, settings(epochs=2), RunSignals())
    np.testing.assert_allclose(scaled.history[names.LOSS], plain.history[names.LOSS], rtol=1e-4)


def test_the_batch_order_and_the_augmentation_draw_from_separate_streams():
    shifts = batches.Augment(max_shift=2, flip=True)
    plain = batches.epoch_draws(100, seed=3, epoch=1, augment=None)
    augmented = batches.epoch_draws(100, seed=3, epoch=1, augment=shifts)
    np.testing.assert_array_equal(plain.order, augmented.order)
    assert augmented.flip.any() and np.abs(augmented.shift).max() == 2
    assert not np.array_equal(plain.order, batches.epoch_draws(100, seed=3, epoch=2, augment=None).order)


def test_an_augmented_image_moves_by_its_shift_and_flips():
    from hw4.training.step import augmented

    image = np.zeros((1, 28, 28), np.float32)
    image[0, 10, 3] = 1.0
    moved = keras.ops.convert_to_numpy(
        augmented(image, np.array([False]), np.array([[2, -1]], np.int32), augment=batches.Augment(2, False))
    )
    assert moved[0, 8, 4] == 1.0 and moved.sum() == 1.0  # reads (r + 2, c - 1): moves up 2, right 1
    flipped = keras.ops.convert_to_numpy(
        augmented(image, np.array([True]), np.zeros((1, 2), np.int32), augment=batches.Augment(0, True))
    )
    assert flipped[0, 10, 24] == 1.0


@pytest.mark.slow  # three programs compiled
def test_a_resumed_member_continues_as_if_never_stopped(tmp_path):
    """Two epochs, saved and loaded, then a third: equal to three epochs in one go (the seed
    states of dropout and the optimizer's step count included)."""
    data = splits((28, 28, 1))
    whole = member("lenet_dropout_bn", seed=0, lr=1e-3)
    loop.train([whole], data, settings(epochs=3), RunSignals())
    first = member("lenet_dropout_bn", seed=0, lr=1e-3)
    loop.train([first], data, settings(epochs=2), RunSignals())
    from hw4 import checkpoints

    saver = checkpoints.EpochCheckpoint(tmp_path)
    saver.set_model(first.model)
    saver.on_epoch_end(1, {})
    model, _, _ = checkpoints.load(tmp_path)
    resumed = loop.Member(model=model, callbacks=[], seed=0, peak=1e-3, initial_epoch=2)
    loop.train([resumed], data, settings(epochs=3), RunSignals())
    np.testing.assert_allclose(resumed.history[names.LOSS], whole.history[names.LOSS][2:], rtol=1e-5)
    for a, b in zip(weights(resumed), weights(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("decided_by", ["early stopping", "a pruner"])
def test_the_checkpoint_of_the_epoch_where_training_ended_says_so(tmp_path, decided_by):
    """Early stopping (a callback before the checkpoint) is in the epoch's own save; a pruner
    (a decider, after every member's epoch is saved) marks it then. A resume reads `ended` and
    trains no further (hw4.steps.prepare_training: its first epoch is the last)."""
    from hw4 import checkpoints

    data = splits((784,))
    saver = checkpoints.EpochCheckpoint(tmp_path, ended_tags=lambda: {"why": decided_by})
    if decided_by == "early stopping":
        m = member("mlp", seed=0, lr=1e-3, callbacks=[StopAt(1), saver])
    else:
        m = member("mlp", seed=0, lr=1e-3, callbacks=[saver], deciders=[StopAt(1)],
                   on_ended=lambda: saver.mark_ended({"why": decided_by}))  # fmt: skip
    loop.train([m], data, settings(epochs=4), RunSignals())
    _, state, _ = checkpoints.load(tmp_path)
    assert state.epoch == 1 and state.ended == {"why": decided_by}
    resumed = loop.Member(model=m.model, callbacks=[], seed=0, peak=1e-3, initial_epoch=4)
    loop.train([resumed], data, settings(epochs=4), RunSignals())
    assert not resumed.history and resumed.stopped_after is None
