"""Run identities hash what matters (issue 21, item 3.7): the data's content, not its path;
not the settings that leave the updates unchanged; one spelling of "unset"."""

from __future__ import annotations

import shutil

import pytest
from conftest import write_dataset

from hw4 import data, names

BASE = {"model.name": "mlp", "optimizer.lr": 1e-3, names.SEED: 0, "trainer.prune": None, names.DATA_DIGEST: "aaaa"}


def test_the_data_digest_counts_and_the_data_folder_does_not():
    moved = {**BASE, "data.dir": "/elsewhere"}
    assert names.config_key(BASE) == names.config_key(moved)
    other_data = {**BASE, names.DATA_DIGEST: "bbbb"}
    assert names.config_key(BASE) != names.config_key(other_data)
    assert names.job_key(BASE) != names.job_key(other_data)
    assert names.plan_key(BASE) == names.plan_key(other_data)  # the same planned job, on other data


@pytest.mark.parametrize(
    "key, a, b",
    [
        ("trainer.eval_batch_size", 256, 4096),
        # Retired options (issue 35) that earlier runs recorded: those runs keep their identity.
        ("trainer.steps_per_execution", 1, 64),
        ("trainer.loop", "fit", "compiled"),
        ("trainer.pipeline", "tf_data", "numpy"),
    ],
)
def test_settings_that_leave_the_updates_unchanged_do_not_split_a_configuration(key, a, b):
    assert names.config_key({**BASE, key: a}) == names.config_key({**BASE, key: b})


@pytest.mark.parametrize("spelling", ["none", "None", "null"])
def test_null_and_none_are_one_configuration(spelling):
    assert names.config_key(BASE) == names.config_key({**BASE, "trainer.prune": spelling})
    assert names.config_key(BASE) != names.config_key({**BASE, "trainer.prune": "median"})


def test_the_source_digest_follows_the_files_content_not_their_folder(tiny_data_dir, tmp_path):
    copy = shutil.copytree(tiny_data_dir, tmp_path / "copy")
    assert data.source_digest(tiny_data_dir) == data.source_digest(copy)
    other = write_dataset(tmp_path / "other", seed=1)
    assert data.source_digest(other) != data.source_digest(tiny_data_dir)
    assert data.source_digest(None) == data.KERAS_SOURCE
    with pytest.raises(data.DataError, match="data folder not found"):
        data.source_digest(tmp_path / "missing")


def test_keys_added_later_leave_earlier_runs_identity_at_their_neutral_value():
    """Issue 25: prep, schedule and lr_find joined the config; at the values every earlier run had
    in effect they are left out of the hash, so earlier runs keep their config_key."""
    neutral = {**BASE, "prep.name": "scale", "prep.max_shift": 0, "prep.flip": False, "schedule.name": "constant",
               "schedule.warmup_epochs": 0, "lr_find.enabled": False}  # fmt: skip
    assert names.config_key(neutral) == names.config_key(BASE)
    assert names.job_key(neutral) == names.job_key(BASE)
    for key, value in [("prep.name", "standardize"), ("prep.name", "augment"), ("schedule.name", "cosine"),
                       ("schedule.warmup_epochs", 2), ("prep.max_shift", 2)]:  # fmt: skip
        assert names.config_key({**neutral, key: value}) != names.config_key(BASE), key
