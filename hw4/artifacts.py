"""What one training run leaves in MLflow besides metrics: figures, tables, texts.

Artifact names are part of the tracking schema other commands (compare, report) rely on.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from hw4.data import RawData, Splits
from hw4.runtime import timing
from hw4.tracking import RunLogger

log = logging.getLogger(__name__)

CURVES = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
SAMPLES_DEV = "samples_dev.png"
SAMPLES_TEST = "samples_test.png"
PREDICTIONS_TEST = "predictions_test.png"
SUMMARY = "summary.txt"
DATA_SUMMARY = "data_summary.json"
FIRST_SAMPLE = "first_sample_output.json"
GRID = 25  # the homework's 5x5 grids
MODEL_EXAMPLES = 5  # test images whose input and output give the logged model its signature
# The sample grids depend on the data alone: drawn once per process and dataset, then each run
# logs the same PNG (a sweep's later jobs draw nothing). Keyed by (data digest, class names).
_sample_grid_pngs: dict[tuple, dict[str, bytes]] = {}
_sample_grid_lock = threading.Lock()


class Background:
    """A run's figures, drawn and logged on one worker thread while the main thread trains,
    evaluates or logs the model (TensorFlow releases the GIL while it computes).

    One thread: matplotlib is not thread-safe, and every figure of a run goes through this one.
    `wait()` blocks until all submitted work is done and re-raises the first error, so a figure
    that fails still fails the run. Leaving the block with an exception cancels work not yet
    started and waits for the running piece (under a second), so nothing writes to a run after
    it has ended.
    """

    def __init__(self, timings: Optional[timing.Timings] = None):
        self.timings = timings or timing.Timings()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hw4-figures")
        self.futures: list[Future] = []

    def submit(self, step: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        def timed() -> None:
            with self.timings.step(step, background=True):
                function(*args, **kwargs)

        self.futures.append(self.executor.submit(timed))

    def wait(self) -> None:
        futures, self.futures = self.futures, []
        errors = [f.exception() for f in futures]  # waits for each
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.wait()
            finally:
                self.executor.shutdown(wait=True)
            return
        self.executor.shutdown(wait=True, cancel_futures=True)
        for future in self.futures:  # the run already failed: its figures' errors come second
            if not future.cancelled() and future.exception() is not None:
                log.warning("a figure failed too: %s", future.exception())


def confusion_table(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The matrix as CSV, rows = true class, columns = predicted class."""
    frame = pd.DataFrame(matrix, index=list(class_names), columns=list(class_names))
    frame.index.name = "true \\ predicted"
    return frame.to_csv()


def data_summary(raw: RawData, splits: Splits) -> dict:
    """Part 3's data questions: shapes before and after preparation, the label encoding."""
    return {
        "raw_shapes": {k: list(getattr(raw, k).shape) for k in ("x_dev", "y_dev", "x_test", "y_test")},
        "prepared_shapes": {k: list(v) for k, v in splits.describe().items()},
        "dtype": str(splits.x_train.dtype),
        "pixel_range": [float(splits.x_train.min()), float(splits.x_train.max())],
        "encoding": "one-hot (sklearn label_binarize), float32",
        "preparation": splits.preparation,
        "first_dev_label": int(raw.y_dev[0]),
        "first_train_target": splits.y_train[0].tolist(),
    }


def first_sample_output(model: Any, splits: Splits) -> dict:
    """The model's softmax output on the first training sample, and its sum (1 for a softmax)."""
    # A direct call: predict() would trace a new function for a batch of one.
    probabilities = np.asarray(model(splits.x_train[:1], training=False))[0]
    return {"probabilities": probabilities.tolist(), "sum": float(probabilities.sum())}


def sample_grid_pngs(raw: RawData, digest: str, class_names: Sequence[str]) -> dict[str, bytes]:
    """Part 2: the first 25 development and test images, labelled with class names, as PNGs
    by artifact name; drawn once per process and dataset."""
    from hw4 import plots  # here, on the figure thread: matplotlib loads while training runs

    key = (digest, tuple(class_names))
    with _sample_grid_lock:
        if key not in _sample_grid_pngs:
            pngs = {}
            for images, labels, name, title in (
                (raw.x_dev, raw.y_dev, SAMPLES_DEV, "first development images"),
                (raw.x_test, raw.y_test, SAMPLES_TEST, "first test images"),
            ):
                titles = [class_names[int(y)] for y in labels[:GRID]]
                pngs[name] = plots.png_bytes(plots.image_grid(images[:GRID], titles, title=title))
            _sample_grid_pngs[key] = pngs
        return _sample_grid_pngs[key]


def log_sample_grids(run: RunLogger, raw: RawData, digest: str, class_names: Sequence[str]) -> None:
    for name, png in sample_grid_pngs(raw, digest, class_names).items():
        run.log_bytes(png, name)


def log_evaluation(
    run: RunLogger,
    history: Mapping[str, Sequence[float]],
    x_test: np.ndarray,
    true_labels: np.ndarray,
    predicted: np.ndarray,
    confusion: np.ndarray,
    class_names: Sequence[str],
    title: str,
) -> None:
    """Learning curves, confusion matrix (PNG + CSV) and the GT/P grid of the first test images."""
    from hw4 import plots

    run.log_figure(plots.learning_curves(history, title=title), CURVES)
    run.log_figure(plots.confusion_matrix(confusion, class_names, title=f"{title}: test set"), CONFUSION_PNG)
    run.log_text(confusion_table(confusion, class_names), CONFUSION_CSV)
    titles = [
        f"GT: {class_names[int(t)]}\nP: {class_names[int(p)]}" for t, p in zip(true_labels[:GRID], predicted[:GRID])
    ]
    run.log_figure(plots.image_grid(x_test[:GRID], titles, title=f"{title}: test predictions"), PREDICTIONS_TEST)
