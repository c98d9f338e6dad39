"""One run's training in-process, as hw4.steps.fit trains it, for tests that hand in their own
model and callbacks: the run as the one member of a program (hw4.training.loop), its history
and stop read back by hw4.steps.finish_training (Stopped on a signal, TrainingDiverged)."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace
from typing import Mapping, Optional, Sequence

import keras
from omegaconf import DictConfig, OmegaConf

from hw4 import checkpoints, steps
from hw4.data import Splits
from hw4.runtime.signals import RunSignals
from hw4.training import batches, compile, loop, schedules


def settings(
    model: keras.Model,
    splits: Splits,
    trainer: DictConfig,
    *,
    augment: Optional[batches.Augment] = None,
    schedule: schedules.Schedule = 1.0,
) -> loop.LoopSettings:
    """The trainer's settings as hw4.steps.loop_settings makes them (XLA by trainer.jit_compile)."""
    steps_per_epoch = math.ceil(len(splits.x_train) / trainer.batch_size)
    return loop.LoopSettings(
        epochs=trainer.epochs, batch_size=trainer.batch_size, eval_batch_size=trainer.eval_batch_size,
        schedule=schedule, augment=augment, verbose=trainer.verbose,
        jit=compile.wants_xla(
            model, trainer.jit_compile, augment=augment is not None, steps=trainer.epochs * steps_per_epoch
        ),
    )  # fmt: skip


def fit(
    model: keras.Model,
    splits: Splits,
    trainer: DictConfig,
    callbacks: Sequence[keras.callbacks.Callback],
    *,
    initial_epoch: int = 0,
    past_history: Optional[Mapping[str, list[float]]] = None,
    signals: Optional[RunSignals] = None,
    augment: Optional[batches.Augment] = None,
    schedule: schedules.Schedule = 1.0,
    peak: Optional[float] = None,
) -> dict[str, list[float]]:
    """Train the compiled `model` from `initial_epoch` to trainer.epochs at `peak` times
    `schedule` (peak: the optimizer's learning rate unless given); returns the whole history,
    `past_history` (the epochs before `initial_epoch`) first."""
    if peak is None:
        peak = float(model.optimizer.learning_rate)  # a variable: convert_to_numpy would warn (NumPy 2)
    member = loop.Member(model=model, callbacks=list(callbacks), seed=trainer.seed, peak=peak,
                         initial_epoch=initial_epoch)  # fmt: skip
    # Copied before training: a checkpoint's state extends its own lists as epochs end.
    past = {name: list(values) for name, values in (past_history or {}).items()}
    with contextlib.ExitStack() as stack:
        if signals is None:  # no run around this training: its signals are handled here
            signals = stack.enter_context(RunSignals())
        loop.train([member], splits, settings(model, splits, trainer, augment=augment, schedule=schedule), signals)
    ctx = SimpleNamespace(signals=signals, folder=None, cfg=OmegaConf.create({"trainer": trainer}))
    start = steps.StartingPoint(model, checkpoints.CheckpointState())
    return steps.finish_training(ctx, start, steps.Training(member, past)).history
