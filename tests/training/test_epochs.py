"""The loop's epoch (hw4.training.loop on the step of hw4.training.step) against Keras' own fit
over the same batches, in-process on tiny data.

Without XLA the loop applies the same updates, in the same batch order, as Keras' fit given the
batches the loop draws (hw4.training.batches, augmented by hw4.training.step.augmented): their
histories agree to float rounding, epoch by epoch. The tiny data leaves a smaller last batch
(160 training images, batch 64) and a padded validation batch (40 images, batch 30).
"""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from hw4 import data, names
from hw4.config import TrainerConfig, option_config

keras = pytest.importorskip("keras")
from fitting import fit  # noqa: E402  (needs Keras)

from hw4 import models, steps  # noqa: E402
from hw4.errors import TrainingDiverged  # noqa: E402
from hw4.training import batches, compile, runtime, step  # noqa: E402

TRAINER = OmegaConf.structured(TrainerConfig)
BATCH, EVAL_BATCH, RATE = 64, 30, 3e-3


@pytest.fixture(scope="module")
def flat(tiny_data_dir):
    return data.prepare(data.load(tiny_data_dir, n_classes=10), [784], n_classes=10, limit=200)


@pytest.fixture(scope="module")
def images(tiny_data_dir):
    return data.prepare(data.load(tiny_data_dir, n_classes=10), [28, 28, 1], n_classes=10, limit=200)


def train(build, splits, *, jit_compile: str = "false", epochs: int = 3, augment=None, seed: int = 0):
    """The loop, as hw4 trains a run."""
    keras.utils.set_random_seed(seed)
    model = build()
    runtime.compile_model(model, keras.optimizers.Adam(RATE))
    trainer = OmegaConf.merge(
        TRAINER,
        {"epochs": epochs, "verbose": 0, "batch_size": BATCH, "eval_batch_size": EVAL_BATCH,
         "jit_compile": jit_compile, "seed": seed},
    )  # fmt: skip
    return fit(model, splits, trainer, [], augment=augment), model


def keras_fit(build, splits, *, epochs: int = 3, augment=None, seed: int = 0):
    """Keras' own fit, one epoch at a time over the batches the loop draws for (seed, epoch), in
    their order (shuffle off), from the same initial weights and seed states."""
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(RATE), loss=step.LOSS, metrics=[names.ACCURACY], jit_compile=False)
    history: dict[str, list[float]] = {}
    for epoch in range(epochs):
        draws = batches.epoch_draws(len(splits.x_train), seed=seed, epoch=epoch, augment=augment)
        x = splits.x_train[draws.order]
        if augment is not None:
            x = keras.ops.convert_to_numpy(step.augmented(x, draws.flip, draws.shift, augment=augment))
        logs = model.fit(
            x, splits.y_train[draws.order], batch_size=BATCH, shuffle=False, epochs=epoch + 1, initial_epoch=epoch,
            validation_data=(splits.x_val, splits.y_val), validation_batch_size=EVAL_BATCH, verbose=0,
        ).history  # fmt: skip
        for name, values in logs.items():
            history.setdefault(name, []).extend(values)
    return history, model


def assert_histories_agree(a, b, rtol):
    assert set(names.EPOCH_METRICS) <= a.keys() & b.keys()
    for name in names.EPOCH_METRICS:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, err_msg=name)


def test_the_loop_trains_the_mlp_as_keras_fit_does(flat):
    fitted, _ = keras_fit(lambda: models.mlp((784,)), flat)
    looped, _ = train(lambda: models.mlp((784,)), flat)
    assert len(looped[names.LOSS]) == 3 and looped[names.LEARNING_RATE] == pytest.approx([RATE] * 3)
    assert_histories_agree(fitted, looped, rtol=1e-4)


def test_xla_trains_the_mlp_alike_to_rounding(flat):
    fitted, _ = keras_fit(lambda: models.mlp((784,)), flat)
    looped, _ = train(lambda: models.mlp((784,)), flat, jit_compile="true")
    assert_histories_agree(fitted, looped, rtol=1e-3)


@pytest.mark.parametrize("model", ["lenet_bn", "lenet_dropout"])
def test_batch_norm_and_dropout_train_in_the_loop_as_in_keras_fit(images, model):
    """Batch norm's moving statistics and dropout's seeded masks are the model's own state: the
    loop's stateless step updates and draws them as Keras' fit does."""
    options = {"batch_norm": True} if model == "lenet_bn" else {"dropout": 0.5}
    build = lambda: models.lenet((28, 28, 1), **options)  # noqa: E731
    fitted, fit_model = keras_fit(build, images, epochs=2)
    looped, looped_model = train(build, images, epochs=2)
    assert_histories_agree(fitted, looped, rtol=1e-4)
    for a, b in zip(fit_model.non_trainable_weights, looped_model.non_trainable_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # LeNet-5 compiled three times (with XLA: 11 s)
@pytest.mark.parametrize("jit_compile", ["false", "true"])
def test_augmented_batches_are_the_drawn_ones(images, jit_compile):
    """The loop augments, inside its compiled epoch (with XLA too: keras.ops only), the batches
    hw4.training.batches draws, as step.augmented moves them."""
    augment = batches.Augment(max_shift=2, flip=True)
    build = lambda: models.lenet((28, 28, 1))  # noqa: E731
    fitted, _ = keras_fit(build, images, epochs=2, augment=augment)
    looped, _ = train(build, images, epochs=2, augment=augment, jit_compile=jit_compile)
    plain, _ = train(build, images, epochs=2, jit_compile=jit_compile)
    assert_histories_agree(fitted, looped, rtol=1e-4 if jit_compile == "false" else 1e-3)
    assert plain[names.LOSS] != looped[names.LOSS]  # it did augment


def test_xla_is_the_default_for_dense_models_in_runs_long_enough_to_pay_its_compile():
    mlp, lenet, long = models.mlp((784,)), models.lenet((28, 28, 1)), compile.XLA_MIN_STEPS
    assert compile.wants_xla(mlp, "auto", augment=False, steps=long)
    assert not compile.wants_xla(mlp, "auto", augment=False, steps=long - 1)  # a debug=fast run
    assert compile.wants_xla(mlp, "true", augment=False, steps=1)
    assert not compile.wants_xla(mlp, "false", augment=False, steps=long)
    assert not compile.wants_xla(lenet, "auto", augment=False, steps=long)
    assert not compile.wants_xla(mlp, "auto", augment=True, steps=long)
    # The augmentation is keras.ops now, which XLA compiles: "true" is honoured with it (trained
    # alike in test_augmented_batches_are_the_drawn_ones).
    assert compile.wants_xla(mlp, "true", augment=True, steps=long)
    assert compile.wants_xla(lenet, "true", augment=False, steps=1)


def test_a_runs_planned_batches_decide_auto_full_data_epochs_compile_and_debug_fast_does_not():
    mlp = models.mlp((784,))

    def uses_xla(epochs: int, n_train: int) -> bool:
        cfg = OmegaConf.create({
            "trainer": OmegaConf.merge(TRAINER, {"epochs": epochs, "batch_size": 128, "jit_compile": "auto"}),
            "prep": option_config("prep", "scale"),
            "schedule": option_config("schedule", "constant"),
        })  # fmt: skip
        return steps.loop_settings(cfg, mlp, n_train).jit  # what a run trains with and tags

    assert uses_xla(1, 48_000)  # one full-data epoch: 375 batches
    assert not uses_xla(2, 320)  # debug=fast: 2 x 3 batches
    steps_per_epoch = compile.XLA_MIN_STEPS // 3  # 3 epochs of whole batches reach it exactly
    assert uses_xla(3, steps_per_epoch * 128)
    assert not uses_xla(3, steps_per_epoch * 128 - 128)
    assert uses_xla(3, steps_per_epoch * 128 - 127)  # a partial batch counts


def test_a_diverging_run_stops_after_the_epoch_its_loss_became_nan(flat):
    keras.utils.set_random_seed(0)
    model = models.mlp((784,))
    runtime.compile_model(model, keras.optimizers.SGD(1e12))
    trainer = OmegaConf.merge(TRAINER, {"epochs": 5, "verbose": 0})
    with pytest.raises(TrainingDiverged, match="in epoch [1-4];"):  # not all 5
        fit(model, flat, trainer, [])


@pytest.mark.parametrize(
    "build", [lambda: models.mlp((784,)), lambda: models.mlp((784,), dropout=0.5)], ids=["mlp", "mlp_dropout"]
)
@pytest.mark.slow  # 8 to 10 s each
def test_a_run_resumed_from_its_checkpoint_trains_as_the_uninterrupted_one(flat, tmp_path, build):
    """Two epochs with the epoch checkpoint, then a new model from it (checkpoints.load, as a
    resumed run does) trains the third: the same as three epochs in one go. The MLP takes XLA
    (what auto gives it on real data); dropout's seed generators are state the checkpoint must
    keep (model.keras does not: without seed_states.npz the third epoch's loss differed by 11%)."""
    from hw4 import checkpoints

    config = {"jit_compile": "true", "verbose": 0, "batch_size": BATCH, "eval_batch_size": EVAL_BATCH}
    keras.utils.set_random_seed(0)
    whole = build()
    runtime.compile_model(whole, keras.optimizers.Adam(RATE))
    uninterrupted = fit(whole, flat, OmegaConf.merge(TRAINER, {**config, "epochs": 3}), [])

    keras.utils.set_random_seed(0)
    first = build()
    runtime.compile_model(first, keras.optimizers.Adam(RATE))
    saver = checkpoints.EpochCheckpoint(tmp_path)
    fit(first, flat, OmegaConf.merge(TRAINER, {**config, "epochs": 2}), [saver])
    keras.utils.set_random_seed(123)  # a new process draws other seeds: the checkpoint must decide
    model, state, _ = checkpoints.load(tmp_path)
    resumed = fit(
        model, flat, OmegaConf.merge(TRAINER, {**config, "epochs": 3}), [],
        initial_epoch=state.epoch + 1, past_history=state.history,
    )  # fmt: skip
    assert uninterrupted.keys() == resumed.keys()
    assert_histories_agree(uninterrupted, resumed, rtol=1e-6)
    assert len(whole.variables) == len(model.variables)
    for a, b in zip(whole.variables, model.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
