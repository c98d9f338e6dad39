"""`hw4-clean`: delete the per-epoch checkpoints that no run will resume.

    hw4-clean dry_run=true     # list what would go
    hw4-clean                  # FINISHED, FAILED, superseded and deleted runs
    hw4-clean killed=true      # also KILLED runs, and RUNNING ones whose process died

hw4-train removes a run's checkpoint itself when the run finishes, when it diverges (its last
weights are NaN: nothing to resume) and when a continued sweep replaces a FAILED run with a new
one. What is left belongs to runs that were stopped or failed; this command clears it. A
checkpoint whose run a live process trains (its lock held) is never touched, nor a folder the
store does not know (another store's runs may share the folder).

No TensorFlow.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig

from hw4 import config, names
from hw4.runtime import locks

if TYPE_CHECKING:
    from mlflow import MlflowClient

RESUMABLE = ("KILLED", "RUNNING")  # RUNNING here means its process died: the lock is free


@dataclass
class Checkpoint:
    run_id: str
    folder: Path
    size_bytes: int
    delete: bool
    why: str


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def judge(client: MlflowClient, root: Path, run_id: str, killed: bool) -> tuple[bool, str]:
    """(delete?, why) for the checkpoint of `run_id` under `root`."""
    from hw4 import tracking

    if locks.is_held(locks.lock_path(root, run_id)):
        return False, "being trained by a live process"
    run = tracking.get_run_or_none(client, run_id)  # a store error stops hw4-clean: nothing is deleted on a guess
    if run is None:
        return False, f"not a run of {tracking.redact(client.tracking_uri)}"
    status = run.info.status
    if run.info.lifecycle_stage == "deleted":
        return True, f"{status}, deleted run"
    if names.SUPERSEDED_BY in run.data.tags:
        return True, f"{status}, superseded by run {run.data.tags[names.SUPERSEDED_BY]}"
    if status in RESUMABLE:
        return (True, f"{status}, resumable") if killed else (False, f"{status}: resumable (killed=true deletes it)")
    return True, status  # FINISHED (its model is logged) or FAILED


def checkpoints(client: MlflowClient, root: Path, killed: bool) -> list[Checkpoint]:
    """Every run's checkpoint under `root`, with the verdict."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        delete, why = judge(client, root, folder.name, killed)
        found.append(Checkpoint(folder.name, folder, folder_size(folder), delete, why))
    return found


def clean(client: MlflowClient, root: Path, killed: bool = False, dry_run: bool = False) -> list[Checkpoint]:
    """Delete the checkpoints no run will resume (all of them listed, deleted or not)."""
    found = checkpoints(client, root, killed)
    if not dry_run:
        for checkpoint in found:
            if checkpoint.delete:
                shutil.rmtree(checkpoint.folder, ignore_errors=True)
                locks.lock_path(root, checkpoint.run_id).unlink(missing_ok=True)  # left by a dead process
    return found


def main() -> None:
    config.run_app("clean", run)


def run(cfg: DictConfig) -> Optional[list[Checkpoint]]:
    from hydra.utils import get_original_cwd

    from hw4 import tracking

    root = Path(get_original_cwd(), cfg.trainer.checkpoint_dir)
    if not root.is_dir():
        print(f"no checkpoints: {root} does not exist")
        return None
    client = tracking.connect(tracking.resolve_uri(cfg.tracking.uri, get_original_cwd()))
    found = clean(client, root, cfg.killed, cfg.dry_run)
    verb = "would delete" if cfg.dry_run else "deleted"
    for checkpoint in found:
        action = verb if checkpoint.delete else "kept"
        print(f"{action:>12}  {checkpoint.run_id}  {checkpoint.size_bytes / 1e6:8.1f} MB  {checkpoint.why}")
    freed = sum(c.size_bytes for c in found if c.delete)
    print(f"{len([c for c in found if c.delete])} of {len(found)} checkpoints, {freed / 1e6:.1f} MB: {verb} ({root})")
    return found
