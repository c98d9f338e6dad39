"""The learning rate over training (conf/schedule) and the optimizer (conf/optimizer).

Each option of conf/schedule names its factory here in `_target_`: a function of the YAML's
arguments and the run's epochs that checks them (ConfigError) and returns the schedule's shape, a
function of the steps per epoch. Adding a schedule is one such function and one YAML file; hw4.config
calls the factory to check the config before TensorFlow loads, so this module imports Keras only
inside the shapes.

Every schedule is the peak (optimizer.lr) times a unit-peak shape on Keras' own schedules, so the
members of a sweep program share one shape and differ only in their peak (hw4.training.step
multiplies them). Steps are optimizer steps (batches): a resumed run's restored optimizer counts
on from its iterations, so the schedule does too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Union, cast

from omegaconf import DictConfig, OmegaConf

from hw4 import config
from hw4.errors import ConfigError

if TYPE_CHECKING:
    import keras

Schedule = Union[float, "keras.optimizers.schedules.LearningRateSchedule"]
# A factory's result: (steps_per_epoch, peak=1.0) -> the schedule, at `peak` (1.0: the unit shape).
Shape = Callable[..., Schedule]


def build_schedule(schedule: DictConfig, *, peak: float = 1.0, steps_per_epoch: int, epochs: int) -> Schedule:
    """The learning rate over training at `peak` (1.0: the unit shape the step multiplies), as the
    schedule option `schedule` (cfg.schedule) shapes it."""
    shape = config.option("schedule", schedule, epochs=epochs)
    return shape(steps_per_epoch=steps_per_epoch, peak=peak)


def _warmup_epochs(warmup_epochs: int, epochs: int) -> int:
    if not 0 <= warmup_epochs < epochs:
        raise ConfigError(f"schedule.warmup_epochs must be 0 to trainer.epochs - 1, got {warmup_epochs}")
    return warmup_epochs


def _warmed_up(after: Schedule, warmup_steps: int) -> Schedule:
    from hw4.training.warmup import LinearWarmup

    return LinearWarmup(after, warmup_steps) if warmup_steps else after


def constant(*, epochs: int, warmup_epochs: int) -> Shape:
    """One rate, the peak, throughout; with warmup_epochs, a linear ramp up to it first."""
    _warmup_epochs(warmup_epochs, epochs)

    def shape(*, steps_per_epoch: int, peak: float = 1.0) -> Schedule:
        return _warmed_up(peak, steps_per_epoch * warmup_epochs)

    return shape


def cosine(*, epochs: int, warmup_epochs: int, min_fraction: float) -> Shape:
    """Keras' CosineDecay: from the peak (after an optional linear warm-up) down to min_fraction x
    the peak at the last step."""
    _warmup_epochs(warmup_epochs, epochs)
    if not 0 <= min_fraction <= 1:
        raise ConfigError(f"schedule.min_fraction must be in [0, 1], got {min_fraction}")

    def shape(*, steps_per_epoch: int, peak: float = 1.0) -> Schedule:
        from keras.optimizers import schedules

        total, warmup = steps_per_epoch * epochs, steps_per_epoch * warmup_epochs
        if warmup:  # from the ramp's first step (peak / its steps, as LinearWarmup's) to the peak
            return schedules.CosineDecay(
                peak / warmup, decay_steps=max(1, total - warmup), alpha=min_fraction, warmup_target=peak,
                warmup_steps=warmup,
            )  # fmt: skip
        return schedules.CosineDecay(peak, decay_steps=total, alpha=min_fraction)

    return shape


def step(*, epochs: int, warmup_epochs: int, every: int, factor: float) -> Shape:
    """Keras' PiecewiseConstantDecay: the peak, times `factor` every `every` epochs (after an
    optional linear warm-up)."""
    _warmup_epochs(warmup_epochs, epochs)
    if not (every >= 1 and 0 < factor <= 1):
        raise ConfigError(f"schedule.every must be >= 1 and factor in (0, 1], got {every}, {factor}")

    def shape(*, steps_per_epoch: int, peak: float = 1.0) -> Schedule:
        from keras.optimizers import schedules

        total, stride = steps_per_epoch * epochs, steps_per_epoch * every
        # Keras keeps values[i] up to and including boundaries[i]: the step before each decay.
        boundaries = list(range(stride - 1, total - 1, stride))
        after: Schedule = peak  # no boundaries when `every` reaches past the last epoch: the peak throughout
        if boundaries:
            after = schedules.PiecewiseConstantDecay(boundaries, [peak * factor**i for i in range(len(boundaries) + 1)])
        return _warmed_up(after, steps_per_epoch * warmup_epochs)

    return shape


def one_cycle(*, epochs: int, warmup_fraction: float, start_divisor: float, end_divisor: float) -> Shape:
    """One cycle (Smith 2018) on Keras' CosineDecay: a linear ramp over the first warmup_fraction
    of the steps from the peak / start_divisor up to the peak, then a cosine down to the peak /
    end_divisor. It ramps up by itself: it takes no warmup_epochs."""
    if not 0 <= warmup_fraction < 1:
        raise ConfigError(f"schedule.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not (start_divisor >= 1 and end_divisor >= 1):
        raise ConfigError(f"schedule.start_divisor and end_divisor must be >= 1, got {start_divisor}, {end_divisor}")

    def shape(*, steps_per_epoch: int, peak: float = 1.0) -> Schedule:
        from keras.optimizers import schedules

        total = steps_per_epoch * epochs
        ramp = max(1, int(total * warmup_fraction))
        return schedules.CosineDecay(
            # Keras takes alpha as a fraction of the warm-up's target, the peak.
            peak / start_divisor, decay_steps=max(1, total - ramp), alpha=1 / end_divisor,
            warmup_target=peak, warmup_steps=ramp,
        )  # fmt: skip

    return shape


def rate_at(schedule: Schedule, peak: float, step: int) -> float:
    """The learning rate at optimizer step `step`, as the training step computes it."""
    import keras

    unit = schedule(step) if callable(schedule) else schedule
    return float(keras.ops.convert_to_numpy(peak * unit))


def build_optimizer(optimizer: DictConfig, *, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    """The Keras optimizer `optimizer` names, at `learning_rate` (default optimizer.lr). Its
    `learning_rate` is a variable the training step sets before each update (the schedule)."""
    import keras

    kwargs = cast(dict, OmegaConf.to_container(optimizer.kwargs, resolve=True))
    rate = optimizer.lr if learning_rate is None else learning_rate
    identifier = {"class_name": optimizer.name, "config": {"learning_rate": rate, **kwargs}}
    try:
        return keras.optimizers.get(identifier)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"optimizer.name={optimizer.name!r} with kwargs {kwargs} is not a Keras optimizer ({exc})"
        ) from None
