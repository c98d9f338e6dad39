"""The sweep folder and the context file both sides of a sweep share.

The launcher (hw4.sweep.callback) writes `<sweep dir>/mlflow_sweep.json` once it has created or
reopened the parent run; every job (hw4.sweep.job), whatever process or machine runs it, reads
it there. The folder also holds the stop file and one mark per job that got a run.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

if TYPE_CHECKING:
    from hydra.conf import HydraConf

from hw4 import names

CONTEXT_FILE = "mlflow_sweep.json"

STOP_FILE = "stop_requested"  # written on a first SIGTERM or Ctrl-C; removed when continued

STARTED_DIR = "jobs_started"  # one empty file per job number that got a run (or found it done)


@dataclass
class SweepContext:
    """What a job needs to nest its run under the sweep's parent."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str
    # When this launch started (ms since the epoch), and its id: a run tagged with another
    # launch (or, from before launch ids, started before this launch) is an earlier attempt.
    launched_at: int = 0
    launch_id: str = ""

    def save(self, folder: Path) -> None:
        """Write atomically: jobs starting together on one node may save it at the same time."""
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{CONTEXT_FILE}.{uuid.uuid4().hex}"
        partial.write_text(json.dumps(asdict(self)))
        os.replace(partial, folder / CONTEXT_FILE)

    @classmethod
    def load(cls, folder: Path) -> Optional["SweepContext"]:
        path = folder / CONTEXT_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def sweep_dir(hydra_cfg: DictConfig | HydraConf) -> Path:
    """The sweep folder, a relative one taken from the folder the sweep was launched in.

    Ray runs jobs in its workers' folder, not the launcher's: the sweep's own relative path would
    point elsewhere there.
    """
    return Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)


def current_context() -> Optional[SweepContext]:
    """The sweep this job belongs to, or None for a single run (or a sweep without the callback)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return SweepContext.load(sweep_dir(hydra_cfg))


def stop_file() -> Optional[Path]:
    """Where this sweep's stop is asked for (signals.RunSignals), or None for a single run."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return sweep_dir(hydra_cfg) / STOP_FILE


def mark_started() -> None:
    """Record that this sweep job got a run (new, resumed or found finished) or failed: jobs
    without such a mark are counted as not run."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        folder = sweep_dir(hydra_cfg) / STARTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(hydra_cfg.job.num)).touch()


def store_uri(context: SweepContext, uri: str, launch_dir: str) -> str:
    """The sweep's store with its credentials: `uri` (the job's own tracking.uri) when it is the
    store the context names (which it holds without credentials), else the context's."""
    from hw4 import tracking

    uri = tracking.resolve_uri(uri, launch_dir)
    return uri if tracking.redact(uri) == context.tracking_uri else context.tracking_uri


def opened_in(run: Any, context: SweepContext) -> bool:
    """Whether this launch of the sweep created or reopened `run`."""
    launch = run.data.tags.get(names.LAUNCH_ID)
    if launch is not None:
        return launch == context.launch_id
    return run.info.start_time >= context.launched_at  # a run from before launch ids
