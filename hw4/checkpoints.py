"""Per-epoch checkpoints, so that a killed run can resume in the same MLflow run.

Each epoch writes, atomically, the model with its optimizer state (`model.keras`) and the
per-epoch history so far (`state.json`). The checkpoint is written *before* the epoch's metrics
go to MLflow: after a kill at any point, the checkpoint holds every epoch MLflow may hold, so
resuming can log the missing ones and never logs an epoch twice.

Imports Keras: used only once training starts.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import keras
import numpy as np


MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
BEST_FILE = "best_weights.npz"  # the best validation epoch's weights (trainer.restore_best)
LATEST = "LATEST"


@dataclass
class CheckpointState:
    """The last completed epoch (0-based) and the history of every epoch up to it."""

    epoch: int = -1
    history: dict[str, list[float]] = field(default_factory=dict)

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.epoch = epoch
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))

    def epoch_logs(self, epoch: int) -> dict[str, float]:
        return {name: values[epoch] for name, values in self.history.items()}


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model, optimizer state and history at the end of every epoch.

    Each epoch goes to its own folder; the pointer file LATEST then switches to it with an
    atomic rename, so a kill at any moment leaves one complete, consistent checkpoint.
    `best_weights()`, when given, returns the weights of the best epoch so far (a list of arrays,
    or None), which the epoch's folder keeps too, so that restoring the best epoch survives a resume.

    Not keras.callbacks.BackupAndRestore: that one keeps no history (MLflow needs it to fill
    gaps), no best weights, and deletes its backup when training ends, before the test metrics
    and the logged model are written.
    """

    def __init__(
        self,
        folder: Path,
        state: Optional[CheckpointState] = None,
        best_weights: Optional[Callable[[], Optional[list]]] = None,
    ):
        super().__init__()
        self.folder = Path(folder)
        self.state = state or CheckpointState()
        self.best_weights = best_weights

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.state.append(epoch, logs or {})
        epoch_dir = self.folder / f"epoch-{epoch:04d}"
        epoch_dir.mkdir(parents=True, exist_ok=True)
        self.model.save(epoch_dir / MODEL_FILE)
        best = self.best_weights() if self.best_weights else None
        if best is not None:
            np.savez(epoch_dir / BEST_FILE, *best)
        (epoch_dir / STATE_FILE).write_text(json.dumps(self.state.__dict__))
        previous = _latest_dir(self.folder)
        pointer_tmp = self.folder / f".{LATEST}.tmp"
        pointer_tmp.write_text(epoch_dir.name)
        os.replace(pointer_tmp, self.folder / LATEST)
        if previous is not None and previous != epoch_dir:
            shutil.rmtree(previous, ignore_errors=True)


def _latest_dir(folder: Path) -> Optional[Path]:
    pointer = Path(folder) / LATEST
    return Path(folder) / pointer.read_text().strip() if pointer.is_file() else None


def exists(folder: Path) -> bool:
    return _latest_dir(folder) is not None


def load(folder: Path) -> tuple[keras.Model, CheckpointState, Optional[list]]:
    """The compiled model (optimizer state included), the history, and the best epoch's weights
    (None unless they were kept) of the latest checkpoint."""
    epoch_dir = _latest_dir(folder)
    if epoch_dir is None:
        raise FileNotFoundError(f"no checkpoint in {folder}")
    state = CheckpointState(**json.loads((epoch_dir / STATE_FILE).read_text()))
    best = None
    if (epoch_dir / BEST_FILE).is_file():
        with np.load(epoch_dir / BEST_FILE) as arrays:
            best = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    return keras.models.load_model(epoch_dir / MODEL_FILE), state, best


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
