"""The training loop and its checkpoints, in-process on tiny data."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from hw4 import data, names
from hw4.config import TrainerConfig

keras = pytest.importorskip("keras")
from fitting import fit  # noqa: E402  (needs Keras)

from hw4 import checkpoints, models  # noqa: E402
from hw4.training import batches, compile, evaluate, runtime, schedules, step  # noqa: E402
from hw4.training import callbacks as epoch_callbacks  # noqa: E402

TRAINER = OmegaConf.structured(TrainerConfig)  # the defaults, from their one place


@pytest.fixture
def splits(tiny_data_dir):
    return data.prepare(data.load(tiny_data_dir, n_classes=10), [784], n_classes=10, limit=200)


def compiled_mlp():
    model = models.mlp((784,))
    runtime.compile_model(model, keras.optimizers.Adam(1e-3))
    return model


def test_history_has_one_value_per_epoch_with_checkpoints(splits, tmp_path):
    trainer = OmegaConf.merge(TRAINER, {"epochs": 3, "verbose": 0})
    state = checkpoints.CheckpointState()
    callback = checkpoints.EpochCheckpoint(tmp_path / "ckpt", state)
    # The caller hands the checkpoint's own history as the past (as hw4.train does).
    history = fit(compiled_mlp(), splits, trainer, [callback], initial_epoch=0, past_history=state.history)
    assert {len(values) for values in history.values()} == {3}
    assert state.history["loss"] == history["loss"]


def test_resume_from_a_checkpoint_completes_the_history(splits, tmp_path):
    folder = tmp_path / "ckpt"
    first = OmegaConf.merge(TRAINER, {"epochs": 2, "verbose": 0})
    state = checkpoints.CheckpointState()
    fit(compiled_mlp(), splits, first, [checkpoints.EpochCheckpoint(folder, state)], past_history=state.history)
    # The latest epoch and, as its fallback, the one before (issue 21, item 1.6).
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["epoch-0000", "epoch-0001"]

    model, restored, _ = checkpoints.load(folder)
    assert restored.epoch == 1 and len(restored.history["loss"]) == 2
    assert int(model.optimizer.iterations) > 0  # the optimizer state came back too
    full = OmegaConf.merge(TRAINER, {"epochs": 4, "verbose": 0})
    history = fit(
        model, splits, full, [checkpoints.EpochCheckpoint(folder, restored)],
        initial_epoch=restored.epoch + 1, past_history=restored.history,
    )  # fmt: skip
    assert {len(values) for values in history.values()} == {4}
    assert history["loss"][:2] == state.history["loss"]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["epoch-0002", "epoch-0003"]  # older ones pruned


class RecordWeights(keras.callbacks.Callback):
    """The model's weights at the end of every epoch, by epoch."""

    def __init__(self, store: dict):
        super().__init__()
        self.store = store

    def on_epoch_end(self, epoch, logs=None):
        self.store[epoch] = self.model.get_weights()


def assert_same_weights(a, b):
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_restore_best_keeps_the_best_epoch_across_a_resume(splits, tmp_path):
    """Best epoch before the kill, worse epochs after it: the restored weights come from the
    checkpoint's copy of the best weights, and equal what the best epoch ended with."""
    folder, weights = tmp_path / "ckpt", {}
    first = OmegaConf.merge(TRAINER, {"epochs": 2, "verbose": 0, "restore_best": True})
    best = epoch_callbacks.BestEpoch(None, True)
    state = checkpoints.CheckpointState()
    callbacks = [best, checkpoints.EpochCheckpoint(folder, state, lambda: best.best_weights), RecordWeights(weights)]
    fit(compiled_mlp(), splits, first, callbacks, past_history=state.history)

    model, restored, kept = checkpoints.load(folder)
    assert kept is not None
    resumed = epoch_callbacks.BestEpoch(None, True, restored.history, kept)
    full = OmegaConf.merge(first, {"epochs": 4})
    history = fit(
        model, splits, full, [resumed, RecordWeights(weights)],
        initial_epoch=restored.epoch + 1, past_history=restored.history, peak=50.0,  # ruin the epochs after it
    )  # fmt: skip
    best_epoch = evaluate.best_epoch(history)[names.BEST_EPOCH]
    assert best_epoch < 2 and resumed.best_epoch == best_epoch
    assert_same_weights(model.get_weights(), weights[best_epoch])
    assert not np.array_equal(model.get_weights()[0], weights[3][0])


def logs(value: float) -> dict:
    return {names.VAL_ACCURACY: value, names.VAL_LOSS: 1 - value}


@pytest.mark.parametrize("resume_after", [None, 3])
def test_early_stopping_counts_epochs_without_improvement_across_a_resume(resume_after):
    accuracies = [0.5, 0.6, 0.55, 0.54, 0.7]  # patience 2: stop at epoch 3 (0-based)
    callback = epoch_callbacks.BestEpoch(2, False)
    model = compiled_mlp()
    start = 0
    if resume_after:
        past = {
            names.VAL_ACCURACY: accuracies[:resume_after],
            names.VAL_LOSS: [1 - a for a in accuracies[:resume_after]],
        }
        callback = epoch_callbacks.BestEpoch(2, False, past)
        start = resume_after
    callback.set_model(model)
    callback.on_train_begin()
    for epoch in range(start, len(accuracies)):
        callback.on_epoch_end(epoch, logs(accuracies[epoch]))
        if model.stop_training:
            break
    assert callback.stopped_epoch == 3 and callback.best_epoch == 1


def test_median_pruner_stops_below_the_siblings_median_after_the_warm_up():
    siblings = {0: [0.9, 0.95], 1: [0.5, 0.7, 0.9], 2: [0.9]}
    for epoch, value, pruned in [(0, 0.1, None), (1, 0.8, None), (1, 0.6, 1), (2, 0.1, None)]:
        pruner = epoch_callbacks.MedianPruner(lambda e: siblings[e], after=2)
        model = compiled_mlp()
        pruner.set_model(model)
        pruner.on_epoch_end(epoch, logs(value))
        assert pruner.pruned_at == pruned, (epoch, value)  # epoch 0: warm-up; epoch 2: one sibling only
        assert model.stop_training == (pruned is not None)


def test_the_batch_order_reshuffles_every_epoch_and_replays_any_epoch_alike():
    np.random.seed(0)  # the global NumPy state (Keras' seeding sets it) plays no part
    epochs = [batches.epoch_order(50, seed=3, epoch=e).tolist() for e in range(3)]
    assert all(sorted(e) == list(range(50)) for e in epochs)  # each sample once per epoch
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    np.random.seed(1)
    resumed = batches.epoch_order(50, seed=3, epoch=2)  # a new process resuming at epoch 2
    assert resumed.tolist() == epochs[2]
    assert batches.epoch_order(50, seed=4, epoch=0).tolist() != epochs[0]


class SeenRows(keras.layers.Layer):
    """Writes the first feature of every training row it is given into a non-trainable variable,
    in the order given: state the step carries and hands back, as batch norm's statistics."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(self.n,), initializer="zeros", trainable=False, name="seen")
        self.count = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="count")

    def call(self, x, training=False):
        if training:
            self.seen.assign(keras.ops.slice_update(self.seen.value, (self.count.value,), x[:, 0]))
            self.count.assign(self.count + keras.ops.shape(x)[0])
        return x


class RecordOrder(keras.callbacks.Callback):
    """Each epoch's rows as SeenRows saw them, by epoch."""

    def __init__(self, layer: SeenRows):
        super().__init__()
        self.layer, self.epochs = layer, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.layer.count.assign(0)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = [int(v) for v in keras.ops.convert_to_numpy(self.layer.seen)]


def test_the_loop_trains_every_epoch_in_a_new_batch_order_that_a_resume_replays():
    """The loop's own batches, read back from inside the model: each sample once an epoch (the
    smaller last batch too), a new order every epoch, the seed's order (hw4.training.batches),
    and a run resumed at epoch 2 draws the uninterrupted run's epoch 2."""
    n = 44  # batch 8: five whole batches and a last one of 4
    rows = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 4), dtype=np.float32)
    labels = np.eye(10, dtype=np.float32)[np.arange(n) % 10]
    splits = data.Splits(rows, labels, rows[:10], labels[:10], rows[:10], labels[:10])
    trainer = OmegaConf.merge(TRAINER, {"epochs": 3, "verbose": 0, "batch_size": 8, "seed": 1})

    def recorded(initial_epoch: int) -> dict[int, list[int]]:
        keras.utils.set_random_seed(1)  # as hw4 seeds every run
        layer = SeenRows(n)
        model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(10, activation="softmax")])
        runtime.compile_model(model, keras.optimizers.Adam(1e-3))
        recorder = RecordOrder(layer)
        fit(model, splits, trainer, [recorder], initial_epoch=initial_epoch)
        return recorder.epochs

    epochs = recorded(0)
    assert [sorted(epochs[e]) for e in range(3)] == [list(range(n))] * 3
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    assert all(epochs[e] == batches.epoch_order(n, seed=1, epoch=e).tolist() for e in range(3))
    assert recorded(2) == {2: epochs[2]}


def test_progress_never_counts_past_the_epoch_and_times_single_steps():
    progress = epoch_callbacks.StepProgress()
    progress.set_params({"verbose": 1, "epochs": 1, "steps": 20})
    progress.on_epoch_begin(0)
    progress.on_train_batch_end(15)  # a compiled call of 16 steps
    progress.on_train_batch_end(31)  # the last call: Keras names step 32 of 20
    assert progress.seen == 20
    bar = epoch_callbacks.StepProgbar(target=375)
    bar._start = 0.0
    assert bar._estimate_step_duration(16, 1.6) == pytest.approx(0.1)  # first call: 16 steps
    assert bar._estimate_step_duration(32, 3.2) == pytest.approx(0.1)  # not 1.6 s / 31 steps


def test_evaluate_gives_keras_evaluate_numbers_from_one_pass_of_predictions(splits):
    model = compiled_mlp()
    fit(model, splits, OmegaConf.merge(TRAINER, {"epochs": 1, "verbose": 0}), [])
    evaluation = evaluate.evaluate(model, splits, batch_size=64)
    expected = model.evaluate(splits.x_test, splits.y_test, batch_size=64, verbose=0, return_dict=True)
    assert evaluation.test_loss == pytest.approx(expected["loss"], rel=1e-5)
    assert evaluation.test_accuracy == pytest.approx(expected[names.ACCURACY], abs=1e-7)
    assert np.trace(evaluation.confusion) / len(splits.x_test) == evaluation.test_accuracy
    assert (evaluation.predicted == evaluation.probabilities.argmax(axis=1)).all()


class SendSignals(keras.callbacks.Callback):
    """Sends this process `count` SIGTERMs when epoch `at` begins."""

    def __init__(self, at: int, count: int = 1):
        super().__init__()
        self.at, self.count = at, count

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            for _ in range(self.count):
                os.kill(os.getpid(), signal.SIGTERM)


def fit_with_signals(splits, epochs: int, at: int, count: int = 1, signals=None):
    state = checkpoints.CheckpointState()
    counter = EpochCounter(state)
    trainer = OmegaConf.merge(TRAINER, {"epochs": epochs, "verbose": 0})
    history = fit(compiled_mlp(), splits, trainer, [SendSignals(at, count), counter], signals=signals)
    return history, state


class EpochCounter(keras.callbacks.Callback):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        self.state.append(epoch, logs or {})


def test_a_signal_stops_training_after_the_epoch_it_came_in(splits):
    state = checkpoints.CheckpointState()
    trainer = OmegaConf.merge(TRAINER, {"epochs": 4, "verbose": 0})
    with pytest.raises(KeyboardInterrupt, match="SIGTERM: stopped after epoch 1$"):
        fit(compiled_mlp(), splits, trainer, [SendSignals(at=0), EpochCounter(state)])
    assert state.epoch == 0  # epoch 0 ended whole (its checkpoint and metrics), no other began


def test_a_signal_in_the_last_epoch_lets_training_complete(splits):
    from hw4.runtime.signals import RunSignals

    with RunSignals() as signals:
        history, state = fit_with_signals(splits, epochs=3, at=2, signals=signals)
    assert len(history[names.LOSS]) == 3 and state.epoch == 2
    assert signals.received == signal.SIGTERM  # left for the caller: the run ends FINISHED, then stops
    with pytest.raises(KeyboardInterrupt):
        signals.check()


def test_a_second_signal_interrupts_at_once(splits):
    with pytest.raises(KeyboardInterrupt, match="SIGTERM again: stopped at once$"):
        fit_with_signals(splits, epochs=3, at=0, count=2)


class RequestStop(keras.callbacks.Callback):
    """What another process of the sweep (its launcher, another job) does: write the stop file."""

    def __init__(self, stop_file, at: int):
        super().__init__()
        self.stop_file, self.at = stop_file, at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            self.stop_file.write_text(f"{signal.SIGTERM}\n")


def test_a_sweeps_stop_file_stops_training_after_the_epoch_like_a_signal(splits, tmp_path):
    from hw4.runtime.signals import RunSignals

    stop_file = tmp_path / "stop_requested"
    state = checkpoints.CheckpointState()
    trainer = OmegaConf.merge(TRAINER, {"epochs": 4, "verbose": 0})
    with RunSignals(stop_file) as signals:
        assert not signals.stop_requested
        with pytest.raises(KeyboardInterrupt, match="SIGTERM: stopped after epoch 2$") as stopped:
            fit(compiled_mlp(), splits, trainer, [RequestStop(stop_file, at=1), EpochCounter(state)], signals=signals)
    assert state.epoch == 1 and stopped.value.signum == signal.SIGTERM  # named by the launcher
    assert signals.received is None  # no signal came to this process


def test_a_first_signal_in_a_sweep_job_asks_the_whole_sweep_to_stop(tmp_path):
    from hw4.runtime.signals import RunSignals

    stop_file = tmp_path / "sweep" / "stop_requested"
    with RunSignals(stop_file) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT
    assert stop_file.read_text().strip() == str(int(signal.SIGINT))  # every other job reads it


def test_run_signals_restore_the_handlers_they_replaced():
    from hw4.runtime.signals import RunSignals

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    sigint_before = signal.getsignal(signal.SIGINT)  # default, or ignored in a background job
    try:
        with RunSignals():
            assert signal.getsignal(signal.SIGTERM) is not mine
            assert signal.getsignal(signal.SIGINT) is not sigint_before
        assert signal.getsignal(signal.SIGTERM) is mine  # a reused worker gets its own back
        assert signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_resuming_logs_the_epoch_a_kill_cut_off_between_its_checkpoint_and_its_metrics(splits, tmp_path, tracking_uri):
    """The checkpoint is written before the epoch's metrics go to MLflow. A kill between the two
    leaves the store one epoch behind: resuming logs that epoch from the checkpoint, once."""
    from hw4 import steps, tracking

    trainer = OmegaConf.merge(TRAINER, {"epochs": 3, "verbose": 0})
    folder = tmp_path / "ckpt"
    state = checkpoints.CheckpointState()
    fit(compiled_mlp(), splits, trainer, [checkpoints.EpochCheckpoint(folder, state)], past_history=state.history)
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "gap", None)
    with pytest.raises(KeyboardInterrupt):
        with tracking.start_run(client, experiment_id, "r") as run:
            for epoch in (0, 1):  # epoch 2's metrics never reached the store
                run.log_metrics(state.epoch_logs(epoch), step=epoch)
            raise KeyboardInterrupt
    with tracking.start_run(client, experiment_id, "r", run_id=run.run_id) as reopened:
        ctx = steps.RunContext(
            cfg=None, job=None, launch_dir=str(tmp_path), params={}, raw=None, splits=splits, signals=None,
            clock=None, verbose=0, resume_id=run.run_id, run=reopened, folder=folder,
        )  # fmt: skip
        start = steps.restore_or_build(ctx)
    model, restored = start.model, start.state
    assert restored.epoch == 2 and model is not None
    for name in (names.LOSS, names.VAL_LOSS):
        history = client.get_metric_history(run.run_id, name)
        assert sorted(m.step for m in history) == [0, 1, 2], name  # the gap filled, nothing twice
        assert {m.step: m.value for m in history}[2] == pytest.approx(state.history[name][2])


def test_op_determinism_does_not_leak_into_the_next_job_of_a_process():
    """An in-process sweep: a deterministic job, then one that is not. TensorFlow's switch is
    process-wide; the second job must get the faster nondeterministic ops back."""
    if compile.is_jax():
        pytest.skip("TensorFlow's switch: JAX's CPU ops are deterministic already")
    from tensorflow.python.framework import config as tf_config

    settings = {"seed": 0, "precision": "float32", "threads": None}
    try:
        runtime.configure_runtime(OmegaConf.create({**settings, "deterministic": True}))
        assert tf_config.is_op_determinism_enabled()
        runtime.configure_runtime(OmegaConf.create({**settings, "deterministic": False}))
        assert not tf_config.is_op_determinism_enabled()
    finally:
        tf_config.disable_op_determinism()


def test_a_damaged_latest_checkpoint_falls_back_to_the_epoch_before(splits, tmp_path):
    """After a power loss LATEST may name an epoch whose model file is empty (issue 21, 1.6)."""
    folder = tmp_path / "ckpt"
    trainer = OmegaConf.merge(TRAINER, {"epochs": 2, "verbose": 0})
    state = checkpoints.CheckpointState()
    fit(compiled_mlp(), splits, trainer, [checkpoints.EpochCheckpoint(folder, state)], past_history=state.history)
    assert (folder / "LATEST").read_text() == "epoch-0001"
    (folder / "epoch-0001" / checkpoints.MODEL_FILE).write_bytes(b"")  # what a lost write leaves
    model, restored, _ = checkpoints.load(folder)
    assert restored.epoch == 0 and len(restored.history["loss"]) == 1
    assert int(model.optimizer.iterations) > 0
    (folder / "epoch-0000" / checkpoints.STATE_FILE).write_text("{")  # both damaged: one clear error
    with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
        checkpoints.load(folder)


def test_a_checkpoint_is_flushed_to_disk_before_latest_names_it(splits, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    order = []
    real_fsync, real_replace = checkpoints._fsync, checkpoints.os.replace
    monkeypatch.setattr(
        checkpoints, "_fsync", lambda path: (order.append(("fsync", Path(path).name)), real_fsync(path))
    )
    monkeypatch.setattr(
        checkpoints.os, "replace", lambda a, b: (order.append(("replace", Path(b).name)), real_replace(a, b))
    )
    trainer = OmegaConf.merge(TRAINER, {"epochs": 1, "verbose": 0})
    state = checkpoints.CheckpointState()
    fit(compiled_mlp(), splits, trainer, [checkpoints.EpochCheckpoint(folder, state)], past_history=state.history)
    switched = order.index(("replace", "LATEST"))
    flushed = {name for kind, name in order[:switched] if kind == "fsync"}
    assert {checkpoints.MODEL_FILE, checkpoints.STATE_FILE, "epoch-0000"} <= flushed
    assert ("fsync", "ckpt") in order[switched:]  # the rename itself made durable


# --- issue 25: schedules, augmentation, the range test -------------------------------------


def schedule(name: str, **settings):
    """conf/schedule/<name>.yaml with `settings` over it."""
    from hw4.config import option_config

    return OmegaConf.merge(option_config("schedule", name), settings)


def rates(learning_rate, steps):
    return [float(learning_rate(step)) if callable(learning_rate) else learning_rate for step in steps]


def test_the_schedules_peak_at_optimizer_lr_and_decay_as_configured():
    spe, epochs, peak = 10, 4, 0.1  # 10 steps an epoch, 40 in all
    cosine = schedules.build_schedule(
        schedule("cosine", min_fraction=0.1), peak=peak, steps_per_epoch=spe, epochs=epochs
    )
    assert rates(cosine, [0, 20, 40]) == pytest.approx([0.1, 0.055, 0.01])
    warm = schedules.build_schedule(schedule("cosine", warmup_epochs=1), peak=peak, steps_per_epoch=spe, epochs=epochs)
    assert rates(warm, [0, 5, 10]) == pytest.approx([0.01, 0.055, 0.1])  # a linear ramp, then the peak
    never = schedules.build_schedule(
        schedule("step", every=5, factor=0.5), peak=peak, steps_per_epoch=spe, epochs=epochs
    )
    assert never == peak  # `every` past the last epoch: no decay (Keras refuses empty boundaries)
    step = schedules.build_schedule(
        schedule("step", every=1, factor=0.5), peak=peak, steps_per_epoch=spe, epochs=epochs
    )
    assert rates(step, [0, 9, 10, 25, 39]) == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125])  # halved per epoch
    cycle = schedules.build_schedule(
        schedule("one_cycle", warmup_fraction=0.3, start_divisor=25, end_divisor=25e4),
        peak=peak, steps_per_epoch=spe, epochs=epochs,
    )  # fmt: skip
    assert rates(cycle, [0, 12, 40]) == pytest.approx([0.004, 0.1, 0.1 / 25e4], rel=1e-3)
    constant = schedules.build_schedule(
        schedule("constant", warmup_epochs=1), peak=peak, steps_per_epoch=spe, epochs=epochs
    )
    assert rates(constant, [0, 4, 9, 30]) == pytest.approx([0.01, 0.05, 0.1, 0.1])
    assert schedules.build_schedule(schedule("constant"), peak=peak, steps_per_epoch=spe, epochs=epochs) == peak
    # What the step uses: the unit shape (peak 1) times the run's peak, at the optimizer's step.
    unit = schedules.build_schedule(schedule("cosine", warmup_epochs=1), steps_per_epoch=spe, epochs=epochs)
    assert [schedules.rate_at(unit, peak, s) for s in (0, 5, 10, 40)] == pytest.approx(rates(warm, [0, 5, 10, 40]))


def test_a_warmed_up_step_schedule_survives_a_checkpoint_and_continues_at_its_step(splits, tmp_path):
    """The rate of each epoch is logged (learning_rate); a resumed run's optimizer counts on from
    its iterations, so its schedule continues where it stopped rather than starting over."""
    spe = math.ceil(len(splits.x_train) / TRAINER.batch_size)
    # The unit shape (peak 1) the loop multiplies by each run's peak, optimizer.lr, as hw4.steps does.
    shape = schedules.build_schedule(
        schedule("step", warmup_epochs=1, every=1, factor=0.5), steps_per_epoch=spe, epochs=4
    )
    model = models.mlp((784,))
    runtime.compile_model(
        model, schedules.build_optimizer(OmegaConf.create({"name": "adam", "lr": 0.01, "kwargs": {}}))
    )
    state, folder = checkpoints.CheckpointState(), tmp_path / "ckpt"
    first = OmegaConf.merge(TRAINER, {"epochs": 2, "verbose": 0})
    fit(
        model, splits, first, [checkpoints.EpochCheckpoint(folder, state)], past_history=state.history,
        schedule=shape, peak=0.01,
    )  # fmt: skip
    restored, restored_state, _ = checkpoints.load(folder)
    full = OmegaConf.merge(TRAINER, {"epochs": 4, "verbose": 0})
    history = fit(
        restored, splits, full, [], initial_epoch=restored_state.epoch + 1, past_history=restored_state.history,
        schedule=shape, peak=0.01,
    )  # fmt: skip
    # Each epoch's first rate: the ramp's first step (0.01 / its steps), the peak once the ramp
    # is over, then halved every epoch, resumed or not.
    assert history[names.LEARNING_RATE] == pytest.approx([0.01 / spe, 0.01, 0.005, 0.0025])


def augment_batches(splits, epoch: int, augment):
    """An epoch's training batches of 64 as the step draws them (hw4.training.batches) and moves
    them (hw4.training.step.augmented)."""
    n = len(splits.x_train)
    draws = batches.epoch_draws(n, seed=0, epoch=epoch, augment=augment)  # keyword
    out = []
    for rows in np.array_split(np.arange(n), range(64, n, 64)):
        index = draws.order[rows]
        x = splits.x_train[index]
        if augment is not None:
            x = keras.ops.convert_to_numpy(step.augmented(x, draws.flip[rows], draws.shift[rows], augment=augment))
        out.append((x, splits.y_train[index]))
    return out


def test_augmentation_draws_the_same_batches_for_the_same_seed_and_epoch(splits):
    augment = batches.Augment(max_shift=2, flip=True)
    plain, first, again, later = (
        augment_batches(splits, e, a) for e, a in ((0, None), (0, augment), (0, augment), (1, augment))
    )
    for (x0, y0), (x1, y1), (x2, _) in zip(plain, first, again):
        np.testing.assert_array_equal(y0, y1)  # the same samples in the same order, labels untouched
        assert not np.array_equal(x0, x1)  # shifted and flipped
        np.testing.assert_array_equal(x1, x2)  # a resume draws them again alike
        assert x1.shape == x0.shape and x1.min() >= 0 and x1.max() <= 1
    assert not np.array_equal(first[0][0], later[0][0])  # another epoch, other shifts


def test_augmentation_leaves_validation_alone(splits):
    """The validation loss fit reports is that of the plain validation images."""
    keras.utils.set_random_seed(0)
    model = compiled_mlp()
    trainer = OmegaConf.merge(TRAINER, {"epochs": 1, "verbose": 0})
    history = fit(model, splits, trainer, [], augment=batches.Augment(max_shift=3, flip=True))
    plain = model.evaluate(splits.x_val, splits.y_val, verbose=0, return_dict=True)
    assert history["val_loss"][0] == pytest.approx(plain["loss"], rel=1e-5)


def test_the_range_test_suggests_the_steepest_descent_and_stops_when_the_loss_explodes():
    from hw4 import lr_find

    lrs = np.logspace(-6, 0, 120)
    # A synthetic curve: flat, a descent steepest at 1e-3, a floor, then an explosion past 1e-1.
    losses = 2.3 - 2.0 / (1 + np.exp(-4 * (np.log10(lrs) + 3))) + np.where(lrs > 0.1, (lrs / 0.1) ** 3, 0)
    suggestion = lr_find.suggest(lrs, losses)
    assert suggestion.lr == pytest.approx(1e-3, rel=0.35)
    assert suggestion.low == pytest.approx(suggestion.lr / 10) and suggestion.high == pytest.approx(suggestion.lr * 10)
    assert len(suggestion.grid) == 5 and suggestion.grid[0] < suggestion.lr < suggestion.grid[-1]
    assert lr_find.suggest(lrs[:5], losses[:5]) is None  # too short to tell


def test_the_range_test_stops_once_the_loss_explodes(splits):
    from hw4 import lr_find

    model = compiled_mlp()
    curve = lr_find.range_test(model, splits.x_train, splits.y_train, batch_size=32, min_lr=1e-4, max_lr=1e3, steps=60)
    assert curve.exploded_at is not None and len(curve.lrs) == curve.exploded_at + 1 < 60
    assert curve.lrs == sorted(curve.lrs) and curve.lrs[0] == pytest.approx(1e-4)


@pytest.mark.slow  # a fresh process imports TensorFlow
def test_a_checkpoint_with_the_old_warm_up_in_its_optimizer_loads_in_a_fresh_process(tmp_path):
    """A checkpoint saved before the step set the rate holds LinearWarmup inside its optimizer: a
    fresh process (nothing of hw4.training imported) must load it, so that the resume refuses it
    in one line (steps.restore_or_build) rather than failing on Keras' unknown class."""
    import subprocess
    import sys

    from hw4.training.warmup import LinearWarmup

    model = models.mlp((784,))
    runtime.compile_model(model, keras.optimizers.Adam(LinearWarmup(1e-3, 10)))
    model.build((None, 784))
    saver = checkpoints.EpochCheckpoint(tmp_path / "ckpt")
    saver.set_model(model)
    saver.on_epoch_end(0, {"loss": 1.0})
    script = (
        "import sys\nfrom hw4 import checkpoints\n"
        "model, state, _ = checkpoints.load(checkpoints.Path(sys.argv[1]))\n"
        "from hw4.training import step\n"
        "print(state.epoch, step.learning_rate_position(model.optimizer))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "None"]  # loaded; no rate variable for the step: refused
