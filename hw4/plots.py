"""Figures from plain arrays and histories (no TensorFlow, no pyplot global state).

Each function returns a matplotlib Figure built directly (not through pyplot), so nothing has to
be closed and no display backend is needed.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from hw4 import names

IMAGE_SIDE = 28  # Fashion-MNIST images are 28x28


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG, as MLflow's log_figure would save it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def learning_curves(history: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """Two panels: train vs validation loss, train vs validation accuracy, per epoch."""
    # Fixed margins: figures every run draws skip the constrained layout's cost (half the time).
    fig = Figure(figsize=(11, 4))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.84 if title else 0.9, wspace=0.2)
    for ax, metric, label in zip(fig.subplots(1, 2), (names.LOSS, names.ACCURACY), ("loss", "accuracy")):
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
    fig = Figure(figsize=(9, 8))
    fig.subplots_adjust(left=0.17, bottom=0.17, right=0.97, top=0.94)  # room for the class names
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", xticks_rotation=45, colorbar=True, values_format="d")
    ax.set(xlabel="predicted label", ylabel="true label", title=title or "confusion matrix (test)")
    return fig


def image_grid(images: np.ndarray, titles: Sequence[str], rows: int = 5, cols: int = 5, title: str = "") -> Figure:
    """The first rows*cols images (28x28, any scale) in a grid, each with its title below it.

    One image (a mosaic with white gaps for the titles) on one axes: drawing 25 subplots, each
    with its own title and layout, cost about 1 s per figure.
    """
    n = min(rows * cols, len(images))
    lines = max((str(t).count("\n") + 1 for t in titles[:n]), default=1)
    side, gap = IMAGE_SIDE, 2  # in image pixels
    cell_w, cell_h = side + 2 * gap, side + gap + 4 * lines  # 4 pixels per title line
    mosaic = np.zeros((rows * cell_h, cols * cell_w), dtype=np.float32)
    tiles = np.asarray(images[:n], dtype=np.float32).reshape(n, side, side)
    if n and tiles.max() > 1:  # uint8 pixels: the same scale as prepared ones
        tiles = tiles / 255.0
    top_margin = 0.5 if title else 0.0  # inches for the title
    width = 2 * cols
    fig = Figure(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + top_margin))
    ax = fig.add_axes((0, 0, 1, 1 - top_margin / fig.get_figheight()))
    for i, (tile, text) in enumerate(zip(tiles, titles[:n])):
        top, left = (i // cols) * cell_h, (i % cols) * cell_w + gap
        mosaic[top : top + side, left : left + side] = tile
        ax.text(left + side / 2, top + side + gap / 2, text, ha="center", va="top", fontsize=9)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
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


def lr_range_test(lrs: Sequence[float], losses: Sequence[float], suggested: float | None) -> Figure:
    """The range test's loss against the learning rate (log axis), the suggestion marked."""
    fig = Figure(figsize=(7, 4))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.9)
    ax = fig.subplots()
    ax.plot(lrs, losses, linewidth=1, label="loss per batch")
    ax.set_xscale("log")
    if suggested is not None:
        ax.axvline(suggested, color="tab:red", linestyle="--", label=f"steepest: {suggested:.2g}")
        ax.axvspan(suggested / 10, suggested * 10, color="tab:red", alpha=0.08, label="a decade either side")
    finite = [v for v in losses if np.isfinite(v)]
    if finite:  # the explosion would flatten the rest
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * np.median(finite)) * 1.1)
    ax.set(xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def metric_vs_lr(points, metric: str) -> Figure:
    """`metric` against the learning rate on a log axis: one marker per configuration (the mean
    over its seeds, ±1 std error bars where there are repeats; open when incomplete), a line per
    `points["line"]`. `points` has columns line, lr, mean, std and complete (hw4.commands.compare.lr_points)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for line, rows in points.groupby("line", sort=True):
        rows = rows.sort_values("lr")
        (drawn, *_) = ax.errorbar(
            rows["lr"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3, label=line
        )
        if "complete" in rows:  # open markers: failed, killed, pruned or missing seeds
            open_ = rows[~rows["complete"].astype(bool)]
            ax.plot(open_["lr"], open_["mean"], "o", color=drawn.get_color(), markerfacecolor="white", zorder=3)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=metric.replace("_", " "), title=f"{metric} vs learning rate")
    ax.grid(alpha=0.3, which="both")
    if len(points):
        ax.legend(title="mean ± std over seeds (open: incomplete)")
    return fig
