"""The training loop and its checkpoints, in-process on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from hw4 import data
from hw4.config import CONFIG_DIR

keras = pytest.importorskip("keras")
from hw4 import checkpoints, models, training  # noqa: E402  (needs Keras)

TRAINER = OmegaConf.load(f"{CONFIG_DIR}/trainer/default.yaml")


@pytest.fixture
def splits(tiny_data_dir):
    return data.prepare(data.load(tiny_data_dir, n_classes=10), [784], n_classes=10, limit=200)


def compiled_mlp():
    model = models.mlp((784,))
    training.compile_model(model, keras.optimizers.Adam(1e-3), steps_per_execution=4)
    return model


def test_history_has_one_value_per_epoch_with_checkpoints(splits, tmp_path):
    trainer = OmegaConf.merge(TRAINER, {"epochs": 3, "verbose": 0})
    state = checkpoints.CheckpointState()
    callback = checkpoints.EpochCheckpoint(tmp_path / "ckpt", state)
    # The caller hands the checkpoint's own history as the past (as hw4.train does).
    history = training.fit(compiled_mlp(), splits, trainer, [callback], 0, state.history)
    assert {len(values) for values in history.values()} == {3}
    assert state.history["loss"] == history["loss"]


def test_resume_from_a_checkpoint_completes_the_history(splits, tmp_path):
    folder = tmp_path / "ckpt"
    first = OmegaConf.merge(TRAINER, {"epochs": 2, "verbose": 0})
    state = checkpoints.CheckpointState()
    training.fit(compiled_mlp(), splits, first, [checkpoints.EpochCheckpoint(folder, state)], 0, state.history)
    assert [p.name for p in folder.iterdir() if p.is_dir()] == ["epoch-0001"]  # older ones pruned

    model, restored = checkpoints.load(folder)
    assert restored.epoch == 1 and len(restored.history["loss"]) == 2
    assert int(model.optimizer.iterations) > 0  # the optimizer state came back too
    full = OmegaConf.merge(TRAINER, {"epochs": 4, "verbose": 0})
    history = training.fit(
        model, splits, full, [checkpoints.EpochCheckpoint(folder, restored)],
        restored.epoch + 1, restored.history,
    )  # fmt: skip
    assert {len(values) for values in history.values()} == {4}
    assert history["loss"][:2] == state.history["loss"]


def test_numpy_and_tf_data_pipelines_train_alike(splits):
    results = {}
    for pipeline in ("numpy", "tf_data"):
        keras.utils.set_random_seed(0)
        trainer = OmegaConf.merge(TRAINER, {"epochs": 3, "verbose": 0, "pipeline": pipeline})
        results[pipeline] = training.fit(compiled_mlp(), splits, trainer, [])
    for history in results.values():
        assert history["loss"][-1] < history["loss"][0]
        assert np.isfinite(history["val_loss"]).all()
