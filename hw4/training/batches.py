"""Which samples each training batch holds, and how prep=augment moves them: NumPy draws on the
host, a function of (trainer.seed, epoch) alone.

A run, its resume and a member of a sweep program draw the same batches from the same seed, on
any backend: the draws are made here, before the compiled epoch, and passed in as arrays. The
batch order and the augmentation draw from separate streams of one seed (a NumPy SeedSequence's
spawn keys), so changing prep leaves the order alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORDER_STREAM = 0
AUGMENT_STREAM = 1


@dataclass(frozen=True)
class Augment:
    """prep=augment: each training image shifted by up to `max_shift` pixels each way and, with
    `flip`, flipped left-right, at random."""

    max_shift: int
    flip: bool


@dataclass(frozen=True)
class EpochDraws:
    """One epoch's batches for one run: `order` the sample indices in training order; `flip`
    and `shift` (rows as `order`'s) the augmentation of each, none without prep=augment."""

    order: np.ndarray  # (n,) int32
    flip: np.ndarray  # (n,) bool
    shift: np.ndarray  # (n, 2) int32: rows, columns


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(stream, int(epoch)))))


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of n training samples: a function of (seed, epoch) alone."""
    return _rng(seed, epoch, ORDER_STREAM).permutation(n).astype(np.int32)


def epoch_draws(n: int, *, seed: int, epoch: int, augment: Augment | None) -> EpochDraws:
    """The order, and the flips and shifts of each sample in that order (zeros without augment)."""
    order = epoch_order(n, seed=seed, epoch=epoch)
    if augment is None:
        return EpochDraws(order, np.zeros(n, bool), np.zeros((n, 2), np.int32))
    rng = _rng(seed, epoch, AUGMENT_STREAM)
    flip = rng.random(n) < 0.5 if augment.flip else np.zeros(n, bool)
    shift = rng.integers(-augment.max_shift, augment.max_shift + 1, size=(n, 2), dtype=np.int32)
    return EpochDraws(order, flip, shift)


@dataclass(frozen=True)
class StackedBatches:
    """Arrays cut into equal batches, stacked (n_batches, batch_size, ...), the last one padded
    with weight 0: one shape, one compiled program, whatever the count."""

    x: np.ndarray
    y: np.ndarray | None
    weight: np.ndarray  # (n_batches, batch_size) float32: 1 for real samples, 0 for padding
    n: int


def stacked(x: np.ndarray, y: np.ndarray | None, batch_size: int) -> StackedBatches:
    n = len(x)
    padded = -(-n // batch_size) * batch_size
    index = np.concatenate([np.arange(n), np.zeros(padded - n, np.int64)])

    def cut(a: np.ndarray) -> np.ndarray:
        return a[index].reshape(-1, batch_size, *a.shape[1:])

    weight = (np.arange(padded) < n).astype(np.float32).reshape(-1, batch_size)
    return StackedBatches(cut(x), None if y is None else cut(y), weight, n)
