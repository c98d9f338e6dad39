"""Per-epoch checkpoints, so that a killed run can resume in the same MLflow run.

Each epoch writes, atomically, the model with its optimizer state (`model.keras`), the states
of its random seed generators (`seed_states.npz`: dropout's masks go on from there) and the
per-epoch history so far (`state.json`). The checkpoint is written *before* the epoch's metrics
go to MLflow: after a kill at any point, the checkpoint holds every epoch MLflow may hold, so
resuming can log the missing ones and never logs an epoch twice.

Imports Keras: used only once training starts.
"""

from __future__ import annotations

import json
import logging
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
SEEDS_FILE = "seed_states.npz"  # the layers' SeedGenerator states, which model.keras leaves out
LATEST = "LATEST"
log = logging.getLogger(__name__)


@dataclass
class CheckpointState:
    """The last completed epoch (0-based) and the history of every epoch up to it."""

    epoch: int = -1
    history: dict[str, list[float]] = field(default_factory=dict)
    # Set when training ended before its last epoch (early stopping, pruning): the tags saying
    # why. A resume then evaluates and logs; it never trains past the stop.
    ended: Optional[dict] = None

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.epoch = epoch
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))

    def epoch_logs(self, epoch: int) -> dict[str, float]:
        return {name: values[epoch] for name, values in self.history.items()}


def seed_states(model: keras.Model) -> list:
    """The variables of the model's random seed generators (dropout's): in `model.variables`,
    not in `model.weights`, so not in a saved model. Without them a resumed run would draw the
    masks of its first epochs again."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model, optimizer state and history at the end of every epoch.

    Each epoch goes to its own folder, flushed to the disk; the pointer file LATEST then
    switches to it with an atomic rename, so a kill or a power loss at any moment leaves one
    complete, consistent checkpoint. The epoch before stays as a fallback until the next one is
    complete and durable.
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
        ended_tags: Optional[Callable[[], dict]] = None,
    ):
        super().__init__()
        self.folder = Path(folder)
        self.state = state or CheckpointState()
        self.best_weights = best_weights
        self.ended_tags = ended_tags  # why training ended, when a callback before this one ended it

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.state.append(epoch, logs or {})
        if self.ended_tags is not None and self.model.stop_training:  # early stopping: in this save
            self.state.ended = self.ended_tags()
        epoch_dir = self.folder / f"epoch-{epoch:04d}"
        epoch_dir.mkdir(parents=True, exist_ok=True)
        self.model.save(epoch_dir / MODEL_FILE)
        if seeds := seed_states(self.model):
            np.savez(epoch_dir / SEEDS_FILE, *(np.asarray(v) for v in seeds))
        best = self.best_weights() if self.best_weights else None
        if best is not None:
            np.savez(epoch_dir / BEST_FILE, *best)
        (epoch_dir / STATE_FILE).write_text(json.dumps(self.state.__dict__))
        # Durable before LATEST points at it: after a power loss LATEST must not name files
        # whose data never reached the disk.
        for path in epoch_dir.iterdir():
            _fsync(path)
        _fsync(epoch_dir)
        previous = _latest_dir(self.folder)
        pointer_tmp = self.folder / f".{LATEST}.tmp"
        pointer_tmp.write_text(epoch_dir.name)
        _fsync(pointer_tmp)
        os.replace(pointer_tmp, self.folder / LATEST)
        _fsync(self.folder)
        # Keep the epoch before this one as the fallback (`load`); older ones go.
        for old in self.folder.glob("epoch-*"):
            if old not in (epoch_dir, previous):
                shutil.rmtree(old, ignore_errors=True)

    def mark_ended(self, tags: dict) -> None:
        """Record in the latest checkpoint that training ended here, and why (`tags`)."""
        self.state.ended = dict(tags)
        epoch_dir = _latest_dir(self.folder)
        if epoch_dir is None:
            return
        tmp = epoch_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state.__dict__))
        _fsync(tmp)
        os.replace(tmp, epoch_dir / STATE_FILE)
        _fsync(epoch_dir)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _latest_dir(folder: Path) -> Optional[Path]:
    pointer = Path(folder) / LATEST
    try:
        name = pointer.read_text().strip()
    except OSError:
        return None
    return Path(folder) / name if name else None


def _epoch_dirs(folder: Path) -> list[Path]:
    """The epoch folders to try, best first: the one LATEST names, then the others, newest first."""
    latest = _latest_dir(folder)
    others = sorted((d for d in Path(folder).glob("epoch-*") if d != latest), reverse=True)
    return ([latest] if latest is not None and latest.is_dir() else []) + others


def exists(folder: Path) -> bool:
    return bool(_epoch_dirs(folder))


def load(folder: Path) -> tuple[keras.Model, CheckpointState, Optional[list]]:
    """The compiled model (optimizer state included), the history, and the best epoch's weights
    (None unless they were kept) of the latest checkpoint that reads back whole; a damaged one
    (a zero-length file after a power loss) falls back to the epoch before it."""
    # A checkpoint saved before issue 35 holds LinearWarmup in its optimizer: registered here, so
    # that it loads and the resume refuses it in one line (steps.restore_or_build).
    from hw4.training import warmup  # noqa: F401

    problems = []
    for epoch_dir in _epoch_dirs(folder):
        try:
            return _load_epoch(epoch_dir)
        except Exception as exc:  # any damage: truncated zip, bad JSON, missing file
            problems.append(f"{epoch_dir.name}: {type(exc).__name__}: {str(exc)[:200]}")
            log.warning("checkpoint %s cannot be read (%s); trying the one before", epoch_dir, problems[-1])
    raise FileNotFoundError(f"no readable checkpoint in {folder}" + (f" ({'; '.join(problems)})" if problems else ""))


def _load_epoch(epoch_dir: Path) -> tuple[keras.Model, CheckpointState, Optional[list]]:
    state = CheckpointState(**json.loads((epoch_dir / STATE_FILE).read_text()))
    if not epoch_dir.name.endswith(f"{state.epoch:04d}"):
        raise ValueError(f"its state is of epoch {state.epoch}")
    best = None
    if (epoch_dir / BEST_FILE).is_file():
        with np.load(epoch_dir / BEST_FILE) as arrays:
            best = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    model = keras.models.load_model(epoch_dir / MODEL_FILE)
    if (epoch_dir / SEEDS_FILE).is_file():  # absent: no dropout, or a checkpoint from before
        with np.load(epoch_dir / SEEDS_FILE) as arrays:
            saved, seeds = [arrays[f"arr_{i}"] for i in range(len(arrays.files))], seed_states(model)
        if len(saved) == len(seeds):
            for variable, value in zip(seeds, saved):
                variable.assign(value)
        else:  # not damage: another Keras made the model's seed generators differently
            log.warning(
                "checkpoint %s holds %d seed states, its model has %d: dropout's masks start afresh",
                epoch_dir, len(saved), len(seeds),
            )  # fmt: skip
    return model, state, best


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
