"""The schedule options (conf/schedule) are factories of hw4.training.schedules named in their
YAML's `_target_`: a schedule of one's own is one function and one YAML file, found through a
config folder of one's own (--config-dir, hydra.searchpath), checked, built and trained like
hw4's. The built-in shapes' rates: tests/test_training.py."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir

from hw4 import config, names
from hw4.errors import ConfigError

keras = pytest.importorskip("keras")
from hw4.training import schedules  # noqa: E402

config.register_configs()

# A user's module: a linear decay from the peak down to end_fraction x the peak at the last step.
OWN_SCHEDULE = '''
from hw4.errors import ConfigError


def linear(*, epochs: int, end_fraction: float):
    """The peak, down in a straight line to end_fraction x the peak at the last step."""
    if not 0 <= end_fraction <= 1:
        raise ConfigError(f"schedule.end_fraction must be in [0, 1], got {end_fraction}")

    def shape(*, steps_per_epoch: int, peak: float = 1.0):
        from keras.optimizers import schedules

        return schedules.PolynomialDecay(peak, steps_per_epoch * epochs, end_learning_rate=peak * end_fraction)

    return shape
'''


def linear_rate(peak: float, end_fraction: float, step: int, total: int) -> float:
    return peak * (1 - (1 - end_fraction) * min(step, total) / total)


@pytest.fixture
def own_schedule(tmp_path, monkeypatch):
    """A config folder of one's own holding one schedule option, and its module on the path."""
    from conftest import own_option

    yaml = "_target_: my_schedules.linear\nname: linear\nend_fraction: 0.1\n"
    return own_option(tmp_path, monkeypatch, group="schedule", module="my_schedules", source=OWN_SCHEDULE, yaml=yaml)


def make(*overrides: str):
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_a_schedule_of_ones_own_is_one_function_and_one_yaml(own_schedule):
    searchpath = f"hydra.searchpath=[file://{own_schedule}]"
    cfg = make(searchpath, "schedule=linear", "trainer.epochs=4")
    config.check(cfg)
    spe, peak = 10, 0.1
    unit = schedules.build_schedule(cfg.schedule, steps_per_epoch=spe, epochs=cfg.trainer.epochs)
    total = spe * cfg.trainer.epochs
    for step in (0, 7, 20, 40):
        assert schedules.rate_at(unit, peak, step) == pytest.approx(linear_rate(peak, 0.1, step, total))
    # Its own check, before anything is built; and an override of its argument.
    with pytest.raises(ConfigError, match=r"schedule.end_fraction must be in \[0, 1\], got 3"):
        config.check(make(searchpath, "schedule=linear", "schedule.end_fraction=3"))
    half = make(searchpath, "schedule=linear", "trainer.epochs=4", "schedule.end_fraction=0.5")
    halved = schedules.build_schedule(half.schedule, steps_per_epoch=spe, epochs=4)
    assert schedules.rate_at(halved, peak, total) == pytest.approx(peak * 0.5)


@pytest.mark.slow
def test_a_schedule_of_ones_own_trains_a_run_that_records_it(own_schedule, tiny_data_dir, tracking_uri):
    """hw4-train's own path (hw4.api.train): each epoch begins at the user's schedule's rate, and
    the run records the option by its name and its argument."""
    from mlflow.tracking import MlflowClient

    from hw4 import api

    result = api.train([
        f"hydra.searchpath=[file://{own_schedule}]", "schedule=linear", "schedule.end_fraction=0.2",
        f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}", "data.limit=200", "trainer.epochs=2",
        "trainer.batch_size=32", "trainer.verbose=0", "trainer.checkpoint=false", "tracking.log_model=false",
        "optimizer.lr=0.01",
    ])  # fmt: skip
    spe = math.ceil(160 / 32)  # data.limit=200: 160 training images
    expected = [linear_rate(0.01, 0.2, epoch * spe, 2 * spe) for epoch in range(2)]
    assert result.history[names.LEARNING_RATE] == pytest.approx(expected, rel=1e-5)
    params = MlflowClient(tracking_uri).get_run(result.run_id).data.params
    assert (params["schedule.name"], params["schedule.end_fraction"]) == ("linear", "0.2")
