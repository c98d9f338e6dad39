"""trainer.loop=compiled against Keras' fit, in-process on tiny data.

Without XLA the compiled epoch applies the same updates, in the same batch order, as fit over
the numpy pipeline: their histories agree to float rounding, epoch by epoch. The tiny data
leaves a smaller last batch (160 training images, batch 64) and a padded validation batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from hw4 import data, names
from hw4.config import TrainerConfig

keras = pytest.importorskip("keras")
from hw4 import compiled_loop, models, training  # noqa: E402  (needs Keras)

TRAINER = OmegaConf.structured(TrainerConfig)


@pytest.fixture(scope="module")
def flat(tiny_data_dir):
    return data.prepare(data.load(tiny_data_dir, n_classes=10), [784], n_classes=10, limit=200)


@pytest.fixture(scope="module")
def images(tiny_data_dir):
    return data.prepare(data.load(tiny_data_dir, n_classes=10), [28, 28, 1], n_classes=10, limit=200)


def train(build, splits, *, loop: str, jit_compile: str = "false", epochs: int = 3, augment=None, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = build()
    training.compile_model(model, keras.optimizers.Adam(3e-3), steps_per_execution=4)
    trainer = OmegaConf.merge(
        TRAINER,
        {"epochs": epochs, "verbose": 0, "batch_size": 64, "eval_batch_size": 30, "loop": loop,
         "jit_compile": jit_compile, "seed": seed},
    )  # fmt: skip
    return training.fit(model, splits, trainer, [], augment=augment), model


def assert_histories_agree(a, b, rtol):
    assert a.keys() == b.keys()
    for name in names.EPOCH_METRICS:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, err_msg=name)


def test_the_compiled_epoch_trains_the_mlp_as_fit_does(flat):
    fitted, _ = train(lambda: models.mlp((784,)), flat, loop="fit")
    compiled, _ = train(lambda: models.mlp((784,)), flat, loop="compiled")
    assert len(compiled[names.LOSS]) == 3
    assert_histories_agree(fitted, compiled, rtol=1e-4)


def test_xla_trains_the_mlp_alike_to_rounding(flat):
    fitted, _ = train(lambda: models.mlp((784,)), flat, loop="fit")
    compiled, _ = train(lambda: models.mlp((784,)), flat, loop="compiled", jit_compile="true")
    assert_histories_agree(fitted, compiled, rtol=1e-3)


@pytest.mark.parametrize("model", ["lenet_bn", "lenet_dropout"])
def test_batch_norm_and_dropout_train_in_the_compiled_epoch_as_in_fit(images, model):
    """Batch norm's moving statistics and dropout's seeded masks are the model's own state: the
    compiled epoch updates and draws them as fit does."""
    options = {"batch_norm": True} if model == "lenet_bn" else {"dropout": 0.5}
    build = lambda: models.lenet((28, 28, 1), **options)  # noqa: E731
    fitted, fit_model = train(build, images, loop="fit", epochs=2)
    compiled, compiled_model = train(build, images, loop="compiled", epochs=2)
    assert_histories_agree(fitted, compiled, rtol=1e-4)
    for a, b in zip(fit_model.non_trainable_weights, compiled_model.non_trainable_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_augmented_batches_are_the_numpy_pipelines(images):
    augment = training.Augment(max_shift=2, flip=True)
    build = lambda: models.lenet((28, 28, 1))  # noqa: E731
    fitted, _ = train(build, images, loop="fit", epochs=2, augment=augment)
    compiled, _ = train(build, images, loop="compiled", epochs=2, augment=augment)
    plain, _ = train(build, images, loop="compiled", epochs=2)
    assert_histories_agree(fitted, compiled, rtol=1e-4)
    assert plain[names.LOSS] != compiled[names.LOSS]  # it did augment


def test_xla_is_the_default_for_dense_models_in_runs_long_enough_to_pay_its_compile():
    mlp, lenet, long = models.mlp((784,)), models.lenet((28, 28, 1)), compiled_loop.XLA_MIN_STEPS
    assert compiled_loop.wants_xla(mlp, "auto", augment=False, steps=long)
    assert not compiled_loop.wants_xla(mlp, "auto", augment=False, steps=long - 1)  # a debug=fast run
    assert compiled_loop.wants_xla(mlp, "true", augment=False, steps=1)
    assert not compiled_loop.wants_xla(mlp, "false", augment=False, steps=long)
    assert not compiled_loop.wants_xla(lenet, "auto", augment=False, steps=long)
    assert not compiled_loop.wants_xla(mlp, "auto", augment=True, steps=long)
    assert not compiled_loop.wants_xla(mlp, "true", augment=True, steps=long)  # no XLA kernel
    assert compiled_loop.wants_xla(lenet, "true", augment=False, steps=1)


def test_a_runs_planned_batches_decide_auto_full_data_epochs_compile_and_debug_fast_does_not():
    mlp = models.mlp((784,))

    def uses_xla(epochs: int, n_train: int) -> bool:
        trainer = OmegaConf.merge(TRAINER, {"epochs": epochs, "batch_size": 128, "jit_compile": "auto"})
        return compiled_loop.run_uses_xla(mlp, trainer, n_train=n_train, augment=False)

    assert uses_xla(1, 48_000)  # one full-data epoch: 375 batches
    assert not uses_xla(2, 320)  # debug=fast: 2 x 3 batches
    steps_per_epoch = compiled_loop.XLA_MIN_STEPS // 3  # 3 epochs of whole batches reach it exactly
    assert uses_xla(3, steps_per_epoch * 128)
    assert not uses_xla(3, steps_per_epoch * 128 - 128)
    assert uses_xla(3, steps_per_epoch * 128 - 127)  # a partial batch counts


def test_a_diverging_run_stops_after_the_epoch_its_loss_became_nan(flat):
    keras.utils.set_random_seed(0)
    model = models.mlp((784,))
    training.compile_model(model, keras.optimizers.SGD(1e12))
    trainer = OmegaConf.merge(TRAINER, {"epochs": 5, "verbose": 0, "loop": "compiled"})
    with pytest.raises(training.TrainingDiverged, match="in epoch [1-4];"):  # not all 5
        training.fit(model, flat, trainer, [])


@pytest.mark.parametrize(
    "build", [lambda: models.mlp((784,)), lambda: models.mlp((784,), dropout=0.5)], ids=["mlp", "mlp_dropout"]
)
def test_a_compiled_run_resumed_from_its_checkpoint_trains_as_the_uninterrupted_one(flat, tmp_path, build):
    """Two epochs with the epoch checkpoint, then a new model from it (checkpoints.load, as a
    resumed run does) trains the third: the same as three epochs in one go. The MLP takes XLA
    (what auto gives it on real data); dropout's seed generators are state the checkpoint must
    keep (model.keras does not: without seed_states.npz the third epoch's loss differed by 11%)."""
    from hw4 import checkpoints

    config = {"loop": "compiled", "jit_compile": "true", "verbose": 0, "batch_size": 64, "eval_batch_size": 30}
    keras.utils.set_random_seed(0)
    whole = build()
    training.compile_model(whole, keras.optimizers.Adam(3e-3))
    uninterrupted = training.fit(whole, flat, OmegaConf.merge(TRAINER, {**config, "epochs": 3}), [])

    keras.utils.set_random_seed(0)
    first = build()
    training.compile_model(first, keras.optimizers.Adam(3e-3))
    saver = checkpoints.EpochCheckpoint(tmp_path)
    training.fit(first, flat, OmegaConf.merge(TRAINER, {**config, "epochs": 2}), [saver])
    keras.utils.set_random_seed(123)  # a new process draws other seeds: the checkpoint must decide
    model, state, _ = checkpoints.load(tmp_path)
    resumed = training.fit(
        model, flat, OmegaConf.merge(TRAINER, {**config, "epochs": 3}), [],
        initial_epoch=state.epoch + 1, past_history=state.history,
    )  # fmt: skip
    assert_histories_agree(uninterrupted, resumed, rtol=1e-6)
    assert len(whole.variables) == len(model.variables)
    for a, b in zip(whole.variables, model.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
