"""The learning rate over training (conf/schedule) and the optimizer (conf/optimizer).

Every schedule is the peak (optimizer.lr) times a unit-peak shape on Keras' own schedules, so the
members of a sweep program share one shape and differ only in their peak (hw4.training.step
multiplies them). Steps are optimizer steps (batches): a resumed run's restored optimizer counts
on from its iterations, so the schedule does too.
"""

from __future__ import annotations

from typing import Union

import keras
from keras import ops
from omegaconf import DictConfig, OmegaConf

from hw4.errors import ConfigError

Schedule = Union[float, keras.optimizers.schedules.LearningRateSchedule]


@keras.saving.register_keras_serializable(package="hw4")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """A linear ramp from 0 to `after`'s first rate over `warmup_steps`, then `after` (a rate or
    a Keras schedule, counted from the ramp's end). Keras' CosineDecay has a warm-up of its
    own; this one serves the constant and step schedules."""

    def __init__(self, after: Schedule, warmup_steps: int):
        self.after = after
        self.warmup_steps = int(warmup_steps)

    def _after(self, step):
        if isinstance(self.after, keras.optimizers.schedules.LearningRateSchedule):
            return ops.cast(self.after(step), "float32")
        return ops.convert_to_tensor(float(self.after), "float32")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        ramp = self._after(ops.convert_to_tensor(0.0)) * (step + 1) / self.warmup_steps
        return ops.where(step < self.warmup_steps, ramp, self._after(ops.maximum(step - self.warmup_steps, 0.0)))

    def get_config(self) -> dict:
        after = self.after
        if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = keras.saving.serialize_keras_object(after)
        return {"after": after, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config: dict) -> "LinearWarmup":
        after = config["after"]
        if isinstance(after, dict):
            after = keras.saving.deserialize_keras_object(after)
        return cls(after, config["warmup_steps"])


def build_schedule(schedule: DictConfig, *, peak: float = 1.0, steps_per_epoch: int, epochs: int) -> Schedule:
    """The learning rate over training at `peak` (1.0: the unit shape the step multiplies)."""
    schedules = keras.optimizers.schedules
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch * schedule.warmup_epochs
    if schedule.name == "one_cycle":
        ramp = max(1, int(total * schedule.warmup_fraction))
        start = peak / schedule.start_divisor
        return schedules.CosineDecay(
            # Keras takes alpha as a fraction of the warm-up's target, the peak.
            start, decay_steps=max(1, total - ramp), alpha=1 / schedule.end_divisor,
            warmup_target=peak, warmup_steps=ramp,
        )  # fmt: skip
    if schedule.name == "cosine":
        if warmup:  # from the ramp's first step (peak / its steps, as LinearWarmup's) to the peak
            return schedules.CosineDecay(
                peak / warmup, decay_steps=max(1, total - warmup), alpha=schedule.min_fraction, warmup_target=peak,
                warmup_steps=warmup,
            )  # fmt: skip
        return schedules.CosineDecay(peak, decay_steps=total, alpha=schedule.min_fraction)
    after: Schedule = peak
    if schedule.name == "step":
        every = steps_per_epoch * schedule.every
        # Keras keeps values[i] up to and including boundaries[i]: the step before each decay.
        boundaries = list(range(every - 1, total - 1, every))
        if boundaries:  # none when `every` reaches past the last epoch: the peak throughout
            values = [peak * schedule.factor**i for i in range(len(boundaries) + 1)]
            after = schedules.PiecewiseConstantDecay(boundaries, values)
    return LinearWarmup(after, warmup) if warmup else after


def rate_at(schedule: Schedule, peak: float, step: int) -> float:
    """The learning rate at optimizer step `step`, as the training step computes it."""
    unit = schedule(step) if callable(schedule) else schedule
    return float(keras.ops.convert_to_numpy(peak * unit))


def build_optimizer(optimizer: DictConfig, *, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    """The Keras optimizer `optimizer` names, at `learning_rate` (default optimizer.lr). Its
    `learning_rate` is a variable the training step sets before each update (the schedule)."""
    kwargs = OmegaConf.to_container(optimizer.kwargs, resolve=True)
    rate = optimizer.lr if learning_rate is None else learning_rate
    identifier = {"class_name": optimizer.name, "config": {"learning_rate": rate, **kwargs}}
    try:
        return keras.optimizers.get(identifier)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"optimizer.name={optimizer.name!r} with kwargs {kwargs} is not a Keras optimizer ({exc})"
        ) from None
