"""LinearWarmup: a Keras learning-rate schedule that ramps linearly from 0 up to another one.

Keras' CosineDecay has a warm-up of its own; this one serves the constant and step schedules
(hw4.training.schedules). Apart from them because it is a Keras class: the schedules' module
imports no Keras at its top, so that hw4.config checks their arguments before TensorFlow loads.
"""

from __future__ import annotations

from typing import Union

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="hw4")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """A linear ramp from 0 to `after`'s first rate over `warmup_steps`, then `after` (a rate or
    a Keras schedule, counted from the ramp's end)."""

    def __init__(self, after: Union[float, keras.optimizers.schedules.LearningRateSchedule], warmup_steps: int):
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
