"""What one training run leaves in MLflow besides metrics: figures, tables, texts.

Artifact names are part of the tracking schema other commands (compare, report) rely on.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hw4 import plots
from hw4.data import RawData, Splits
from hw4.tracking import RunLogger

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
        "first_dev_label": int(raw.y_dev[0]),
        "first_train_target": splits.y_train[0].tolist(),
    }


def first_sample_output(model: Any, splits: Splits) -> dict:
    """The model's softmax output on the first training sample, and its sum (1 for a softmax)."""
    probabilities = model.predict(splits.x_train[:1], verbose=0)[0]
    return {"probabilities": probabilities.tolist(), "sum": float(probabilities.sum())}


def log_sample_grids(run: RunLogger, raw: RawData, class_names: Sequence[str]) -> None:
    """Part 2: the first 25 development and test images, labelled with class names."""
    for images, labels, name, title in (
        (raw.x_dev, raw.y_dev, SAMPLES_DEV, "first development images"),
        (raw.x_test, raw.y_test, SAMPLES_TEST, "first test images"),
    ):
        titles = [class_names[int(y)] for y in labels[:GRID]]
        run.log_figure(plots.image_grid(images[:GRID], titles, title=title), name)


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
    run.log_figure(plots.learning_curves(history, title=title), CURVES)
    run.log_figure(plots.confusion_matrix(confusion, class_names, title=f"{title}: test set"), CONFUSION_PNG)
    run.log_text(confusion_table(confusion, class_names), CONFUSION_CSV)
    titles = [
        f"GT: {class_names[int(t)]}\nP: {class_names[int(p)]}"
        for t, p in zip(true_labels[:GRID], predicted[:GRID])
    ]
    run.log_figure(plots.image_grid(x_test[:GRID], titles, title=f"{title}: test predictions"), PREDICTIONS_TEST)
