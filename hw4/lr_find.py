"""The learning-rate range test (`+sweep=lr_find`): one short run whose learning rate grows
exponentially, batch by batch, from `lr_find.min_lr` to `lr_find.max_lr`, recording the loss
at each rate, until the loss explodes. The suggestion is the rate where the smoothed loss falls
fastest against log(rate) (Smith 2015, fastai's "steepest" point), with a decade either side as
the range a learning-rate grid should cover.

Imports Keras: hw4.train imports this module only once training really starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import keras
import numpy as np


@dataclass
class Suggestion:
    """The steepest point of the smoothed curve and a decade either side of it."""

    lr: float
    low: float
    high: float
    grid: list[float]  # 5 log-spaced rates over [low, high], as a sweep would run them


def suggest(
    lrs: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray, *, window: float = 0.05, skip: int = 3
) -> Optional[Suggestion]:
    """Where the loss falls fastest against log(rate): the curve smoothed by a centred moving
    average over `window` of its points (a trailing average would lag, and move the point to
    higher rates), its first and last `skip` points left out (the edges of the average, the
    explosion); None with too few points to tell."""
    from scipy.ndimage import uniform_filter1d

    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    keep = np.isfinite(losses)
    lrs, losses = lrs[keep], losses[keep]
    if len(lrs) < 2 * skip + 3:
        return None
    size = max(3, int(len(losses) * window) | 1)  # odd: centred
    curve = uniform_filter1d(losses, size=size, mode="nearest")[skip:-skip]
    logs = np.log10(lrs[skip:-skip])
    slope = np.gradient(curve, logs)
    best = float(lrs[skip:-skip][int(np.argmin(slope))])
    low, high = best / 10, best * 10
    grid = [float(f"{v:.2g}") for v in np.logspace(math.log10(low), math.log10(high), 5)]
    return Suggestion(best, low, high, grid)


@dataclass
class Curve:
    """What the range test recorded: the rate and the loss of every batch, and where it stopped."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    exploded_at: Optional[int] = None  # the batch whose smoothed loss passed `explode` x the lowest


def rate(step: int, *, min_lr: float, max_lr: float, steps: int) -> float:
    """The exponential ramp: min_lr at the first batch, max_lr at the last."""
    return min_lr * (max_lr / min_lr) ** (step / max(1, steps - 1))


def range_test(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    min_lr: float,
    max_lr: float,
    steps: int,
    explode: float = 4.0,
    beta: float = 0.9,
    seed: int = 0,
) -> Curve:
    """Train `model` (compiled) one batch at a time, the rate rising exponentially; each batch's
    own loss (train_on_batch resets the metrics), until `steps` batches or the explosion. The
    batches are drawn in an order of `seed` alone, a new permutation each pass over the data."""
    curve, average, lowest = Curve(), 0.0, math.inf
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    for step in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(x))])
        batch, order = order[:batch_size], order[batch_size:]
        lr = rate(step, min_lr=min_lr, max_lr=max_lr, steps=steps)
        model.optimizer.learning_rate.assign(lr)
        loss = float(model.train_on_batch(x[batch], y[batch], return_dict=True)["loss"])
        curve.lrs.append(lr)
        curve.losses.append(loss)
        average = beta * average + (1 - beta) * loss
        current = average / (1 - beta ** (step + 1))
        lowest = min(lowest, current)
        if not math.isfinite(loss) or (step >= 5 and current > explode * lowest):
            curve.exploded_at = step
            break
    return curve
