"""Figures from plain arrays and histories (no TensorFlow, no pyplot global state).

Each function returns a matplotlib Figure built directly (not through pyplot), so nothing has to
be closed and no display backend is needed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from hw4 import names


def learning_curves(history: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """Two panels: train vs validation loss, train vs validation accuracy, per epoch."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, metric, label in zip(
        fig.subplots(1, 2), (names.LOSS, names.ACCURACY), ("loss", "accuracy")
    ):
        for prefix, split in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values is not None:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """Counts with class names on the true (rows) and predicted (columns) axes."""
    fig = Figure(figsize=(9, 8), layout="constrained")
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", xticks_rotation=45, colorbar=True, values_format="d")
    ax.set(xlabel="predicted label", ylabel="true label", title=title or "confusion matrix (test)")
    return fig


def image_grid(
    images: np.ndarray, titles: Sequence[str], rows: int = 5, cols: int = 5, title: str = ""
) -> Figure:
    """The first rows*cols images (28x28, any scale) in a grid, each with its title."""
    n = min(rows * cols, len(images))
    fig = Figure(figsize=(2 * cols, 2.2 * rows), layout="constrained")
    for ax, image, label in zip(fig.subplots(rows, cols).flat, images[:n], titles[:n]):
        ax.imshow(np.asarray(image).reshape(28, 28), cmap="gray_r")
        ax.set_title(label, fontsize=9)
    for ax in fig.axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def overlaid_curves(curves: Mapping[str, tuple], ylabel: str) -> Figure:
    """One line per label: a metric's mean against the epoch, with a ±1 std band where the
    label stands for several runs (`curves[label] = (mean, std or None)`)."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    for label, (mean, std) in sorted(curves.items()):
        epochs = np.arange(1, len(mean) + 1)
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
        if std is not None:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    banded = any(std is not None for _, std in curves.values())
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{ylabel} per epoch" + (" (mean ± std over seeds)" if banded else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def metric_vs_lr(frame, metric: str, group: Sequence[str] = ("model", "optimizer")) -> Figure:
    """`metric` against the learning rate on a log axis, one line per combination of `group`:
    the mean over the runs at each learning rate, with ±1 std error bars where there are repeats."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for name, rows in frame.dropna(subset=[metric]).groupby(list(group)):
        stats = rows.groupby("lr")[metric].agg(["mean", "std"]).sort_index()
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                    label="/".join(map(str, name)))
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=metric.replace("_", " "), title=f"{metric} vs learning rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="/".join(group))
    return fig
