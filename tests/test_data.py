"""Reading, validating and preparing Fashion-MNIST (tiny synthetic IDX files)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes, write_idx

from hw4 import data
from hw4.data import IDX_FILES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from hw4.errors import DataError

TRAIN_IMAGES, TRAIN_LABELS = IDX_FILES["x_dev"], IDX_FILES["y_dev"]


def test_reads_idx_files(tiny_data_dir):
    raw = data.load_idx_dir(tiny_data_dir)
    assert raw.x_dev.shape == (400, 28, 28) and raw.x_dev.dtype == np.uint8
    assert raw.x_test.shape == (100, 28, 28)
    assert np.bincount(raw.y_dev).tolist() == [40] * 10


def test_prepare_scales_reshapes_and_one_hot_encodes(tiny_data_dir):
    raw = data.load_idx_dir(tiny_data_dir)
    for input_shape in ([784], [28, 28, 1]):
        splits = data.prepare(raw, input_shape, n_classes=10)
        assert splits.x_train.shape == (320, *input_shape)
        assert splits.x_val.shape == (80, *input_shape)
        assert splits.x_test.shape == (100, *input_shape)
        for x in (splits.x_train, splits.x_val, splits.x_test):
            assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
        for y in (splits.y_train, splits.y_val, splits.y_test):
            assert y.dtype == np.float32 and y.shape[1] == 10
            np.testing.assert_array_equal(y.sum(axis=1), 1.0)
        np.testing.assert_array_equal(splits.test_labels, raw.y_test)
        # The test images keep their order and scale exactly by 1/255.
        np.testing.assert_allclose(splits.x_test.reshape(-1, 28, 28), raw.x_test / 255.0, rtol=1e-6)


def test_split_is_stratified_and_seeded(tiny_data_dir):
    raw = data.load_idx_dir(tiny_data_dir)
    a = data.prepare(raw, [784], n_classes=10, seed=1)
    b = data.prepare(raw, [784], n_classes=10, seed=1)
    c = data.prepare(raw, [784], n_classes=10, seed=2)
    assert a.y_val.sum(axis=0).tolist() == [8] * 10  # 20% of 40 per class
    assert a.y_train.sum(axis=0).tolist() == [32] * 10
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)


def test_limit_takes_a_stratified_subset(tiny_data_dir):
    raw = data.load_idx_dir(tiny_data_dir)
    splits = data.prepare(raw, [784], n_classes=10, limit=200)
    assert len(splits.x_train) + len(splits.x_val) == 200
    assert splits.y_train.sum(axis=0).tolist() == [16] * 10
    assert len(splits.x_test) == 100  # the test set is smaller than the limit: kept whole


@pytest.mark.parametrize(
    "limit, message",
    [(401, "larger than the development set"), (20, "cannot be split")],
)
def test_bad_limit_is_a_clear_error(tiny_data_dir, limit, message):
    raw = data.load_idx_dir(tiny_data_dir)
    with pytest.raises(DataError, match=message):
        data.prepare(raw, [784], n_classes=10, limit=limit)


def test_input_shape_must_hold_an_image(tiny_data_dir):
    with pytest.raises(DataError, match="does not hold a 28x28 image"):
        data.prepare(data.load_idx_dir(tiny_data_dir), [100], n_classes=10)


def damage_truncate_gzip(folder: Path) -> None:
    path = folder / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:1000])


def damage_not_gzip(folder: Path) -> None:
    (folder / TRAIN_IMAGES).write_bytes(b"this is not gzip data at all")


def damage_wrong_magic(folder: Path) -> None:
    write_idx(folder / TRAIN_IMAGES, np.zeros((400, 28, 28), np.uint8), IDX_LABELS_MAGIC + 1)


def damage_truncated_idx(folder: Path) -> None:
    payload = idx_bytes(np.zeros((400, 28, 28), np.uint8), IDX_IMAGES_MAGIC)
    (folder / TRAIN_IMAGES).write_bytes(gzip.compress(payload[:-100]))


def damage_count_mismatch(folder: Path) -> None:
    write_idx(folder / TRAIN_LABELS, np.zeros(399, np.uint8), IDX_LABELS_MAGIC)


def damage_label_range(folder: Path) -> None:
    write_idx(folder / TRAIN_LABELS, np.full(400, 10, np.uint8), IDX_LABELS_MAGIC)


def damage_image_size(folder: Path) -> None:
    write_idx(folder / TRAIN_IMAGES, np.zeros((400, 32, 32), np.uint8), IDX_IMAGES_MAGIC)


def damage_missing_file(folder: Path) -> None:
    (folder / TRAIN_LABELS).unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (damage_missing_file, f"{TRAIN_LABELS}: file not found"),
        (damage_truncate_gzip, f"{TRAIN_IMAGES}: not a complete gzip file"),
        (damage_not_gzip, f"{TRAIN_IMAGES}: not a complete gzip file"),
        (damage_wrong_magic, f"{TRAIN_IMAGES}: wrong IDX magic number 2050, expected 2051"),
        (damage_truncated_idx, f"{TRAIN_IMAGES}: truncated or padded IDX data"),
        (damage_count_mismatch, "has 400 images but .* has 399 labels"),
        (damage_label_range, f"{TRAIN_LABELS}: labels must be in 0-9, found 10"),
        (damage_image_size, "images must be 28x28"),
    ],
)
def test_bad_data_is_a_clear_error(data_copy, damage, message):
    damage(data_copy)
    with pytest.raises(DataError, match=message):
        data.load(data_copy, n_classes=10)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        data.load(tmp_path / "nowhere", n_classes=10)


@pytest.mark.real_data
def test_real_fashion_mnist(real_data_dir):
    raw = data.load(real_data_dir, n_classes=10)
    assert raw.x_dev.shape == (60000, 28, 28) and raw.x_test.shape == (10000, 28, 28)
    assert np.bincount(raw.y_dev).tolist() == [6000] * 10
    assert np.bincount(raw.y_test).tolist() == [1000] * 10
    splits = data.prepare(raw, [28, 28, 1], n_classes=10)
    assert (len(splits.x_train), len(splits.x_val)) == (48000, 12000)
    assert math.isclose(float(splits.x_train.max()), 1.0)


def test_prepared_data_is_kept_for_the_next_job_until_the_files_change(data_copy):
    data._load_prepared.cache_clear()
    raw, splits = data.load_prepared(data_copy, [784], n_classes=10)
    again_raw, again = data.load_prepared(data_copy, [784], n_classes=10)
    assert again is splits and again_raw is raw  # the same arrays, not read again
    assert not splits.x_train.flags.writeable and not raw.x_dev.flags.writeable  # shared: read-only
    other = data.load_prepared(data_copy, [28, 28, 1], n_classes=10)[1]  # other settings: prepared anew
    assert other.x_train.shape[1:] == (28, 28, 1)

    # A rewritten file (here: a different test set) is read again.
    write_idx(data_copy / IDX_FILES["y_test"], np.roll(raw.y_test, 1), IDX_LABELS_MAGIC)
    _, changed = data.load_prepared(data_copy, [28, 28, 1], n_classes=10)
    assert changed is not other
    assert (changed.test_labels == np.roll(raw.y_test, 1)).all()


def test_standardize_takes_its_statistics_from_the_training_split_only(tiny_data_dir):
    """Issue 25: mean and std of the training images alone, applied alike to all three splits."""
    raw = data.load_idx_dir(tiny_data_dir)
    scaled = data.prepare(raw, [784], n_classes=10)
    standardized = data.prepare(raw, [784], n_classes=10, prep="standardize")
    mean, std = float(scaled.x_train.mean(dtype=np.float64)), float(scaled.x_train.std(dtype=np.float64))
    everything = np.concatenate([scaled.x_train, scaled.x_val, scaled.x_test])
    assert not math.isclose(mean, float(everything.mean()), rel_tol=1e-4)  # the tiny splits differ: a leak shows
    assert standardized.preparation == {"name": "standardize", "mean": pytest.approx(mean), "std": pytest.approx(std),
                                        "from": "training split"}  # fmt: skip
    for name in ("x_train", "x_val", "x_test"):
        np.testing.assert_allclose(getattr(standardized, name), (getattr(scaled, name) - mean) / std, atol=1e-5)
    assert abs(float(standardized.x_train.mean())) < 1e-4 and abs(float(standardized.x_train.std()) - 1) < 1e-4
    np.testing.assert_array_equal(standardized.y_train, scaled.y_train)  # the targets untouched
