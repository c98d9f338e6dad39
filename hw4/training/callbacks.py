"""fit's per-epoch duties as Keras callbacks, run by the epoch loop (hw4.training.loop) for each
member after its epoch: metrics to the store, the best epoch and early stopping, pruning, the
progress bar. The checkpoint is hw4.checkpoints.EpochCheckpoint. A stop on a signal is the
loop's own decision, made after these have seen the epoch.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import keras
import numpy as np

from hw4 import names
from hw4.training.evaluate import best_epoch

log = logging.getLogger(__name__)


class EpochMetricsLogger(keras.callbacks.Callback):
    """Hands each epoch's Keras logs to `log_metrics(metrics, step=epoch)` (one write an epoch).
    Epochs in `already_logged` are not written again: a resume that fell back to an older
    checkpoint (a damaged latest one) trains them again, and MLflow keeps each epoch once."""

    def __init__(self, log_metrics: Callable[..., None], already_logged: frozenset[int] = frozenset()):
        super().__init__()
        self.log_metrics = log_metrics
        self.already_logged = already_logged

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if logs and epoch not in self.already_logged:
            self.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch)


class BestEpoch(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping on validation accuracy, able to continue a resumed run.

    `patience=None` never stops; `restore_best=True` keeps the best epoch's weights and puts them
    back into the model when training ends. EarlyStopping forgets everything in on_train_begin,
    so a resumed run hands in what it had: the history so far and the best weights its
    checkpoint kept.
    """

    def __init__(
        self,
        patience: int | None,
        restore_best: bool,
        past_history: Mapping[str, Sequence[float]] | None = None,
        past_best_weights: list | None = None,
    ):
        super().__init__(
            monitor=names.VAL_ACCURACY,
            mode="max",
            patience=patience if patience is not None else np.inf,
            restore_best_weights=restore_best,
        )
        self.past = best_epoch(past_history or {})
        self.past_epochs = len((past_history or {}).get(names.VAL_ACCURACY, []))
        self.past_best_weights = past_best_weights

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        super().on_train_begin(logs)
        if self.past:
            self.best = self.past[names.BEST_VAL_ACCURACY]
            self.best_epoch = int(self.past[names.BEST_EPOCH])
            self.wait = self.past_epochs - 1 - self.best_epoch
            self.best_weights = self.past_best_weights if self.restore_best_weights else None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        if self.stopped_epoch:
            log.info(
                "early stopping after epoch %d: no better validation accuracy for %s epochs", epoch + 1, self.patience
            )


class EpochPruner(keras.callbacks.Callback):
    """Stops training after an epoch whose logs `decide(epoch, logs)` finds hopeless: it returns
    why (logged), or None to go on. The epoch is saved and logged first (this callback comes
    last). The decision rules: `MedianPruner` (grid sweeps, siblings read from the store) and an
    Optuna trial's pruner (hw4.sweep.study.JobTrial.decide)."""

    def __init__(self, decide: Callable[[int, Mapping[str, float]], str | None]):
        super().__init__()
        self.decide = decide
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        reason = self.decide(epoch, dict(logs or {}))
        if reason:
            self.pruned_at = epoch
            self.model.stop_training = True
            log.warning("pruned after epoch %d: %s", epoch + 1, reason)


class MedianPruner(EpochPruner):
    """Stops a sweep job whose validation accuracy falls below its siblings' median.

    `sibling_values(epoch)` returns the other jobs' validation accuracies at that epoch (read
    from the tracking store, so parallel jobs in other processes count). No decision during
    the first `after` epochs, nor with fewer than MIN_SIBLINGS values to compare with.
    """

    MIN_SIBLINGS = 2

    def __init__(self, sibling_values: Callable[[int], list[float]], after: int):
        super().__init__(self.below_median)
        self.sibling_values = sibling_values
        self.after = after

    def below_median(self, epoch: int, logs: Mapping[str, float]) -> str | None:
        if epoch + 1 < self.after or names.VAL_ACCURACY not in logs:
            return None
        values = self.sibling_values(epoch)
        if len(values) < self.MIN_SIBLINGS:
            return None
        median = float(np.median(values))
        if logs[names.VAL_ACCURACY] >= median:
            return None
        return (
            f"validation accuracy {logs[names.VAL_ACCURACY]:.4f} is below the median {median:.4f} "
            f"of {len(values)} sibling runs"
        )


class StepProgbar(keras.utils.Progbar):
    """Keras' progress bar, timing steps rather than compiled calls.

    Keras leaves the first update out of its time per step (it includes tracing) but assumes
    that update came after one step; the loop's first update comes after a chunk of
    hw4.training.loop.CHUNK_BATCHES steps, so the time per step would be divided by too many. Here the time since the first update is divided
    by the steps since the first update."""

    def _estimate_step_duration(self, current: int, now: float) -> float:
        if not current:
            return 0
        if getattr(self, "_first_update", None) is None:
            self._first_update = (current, now)
        first_step, first_time = self._first_update
        if current > first_step:
            return (now - first_time) / (current - first_step)
        return (now - self._start) / current


class StepProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, updated once a chunk of batches: the count capped at the epoch's
    steps, and time per step per step (StepProgbar)."""

    progbar: StepProgbar | None  # Keras' own attribute (None until the first update)

    def _maybe_init_progbar(self) -> None:
        if self.progbar is None:
            self.progbar = StepProgbar(
                target=self.target, verbose=self.verbose, unit_name="step", stateless_metrics=set()
            )

    def _update_progbar(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        if self.target is not None:
            batch = min(batch, self.target - 1)
        super()._update_progbar(batch, logs)
