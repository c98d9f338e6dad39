"""One MLflow parent run per Hydra sweep, with every job nested under it as a child run.

`MlflowSweepCallback` is registered under `hydra.callbacks` in conf/config.yaml:

- on_multirun_start (launcher process, before any job): create the experiment and the parent run
  once (parallel jobs racing to create the experiment can log into the wrong one), and write
  their ids to `<sweep dir>/mlflow_sweep.json`, where every job finds them whatever process or
  launcher runs it.
- on_job_start (the process that runs the job, just before it): launchers hand the job this
  callback as it was after on_multirun_start, so a job on another machine (a Ray worker node
  without the launcher's disk) writes the ids into its own sweep dir.
- on_job_end (the process that ran the job): a job that failed before it could open its own run
  (a bad override, bad data) still gets a FAILED child run, so the sweep's record is complete.
- on_multirun_end, or at exit when a failed job made Hydra skip that hook: summarise the
  children on the parent (best learning rate and accuracies, how many jobs finished or failed)
  and end the parent run.

No TensorFlow here; MLflow is imported only inside the hooks.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONTEXT_FILE = "mlflow_sweep.json"
OBJECTIVE = "val_categorical_accuracy"
TEST_METRIC = "test_categorical_accuracy"
SWEEP_ID_TAG = "sweep_id"
JOB_TAG = "hydra_job_num"


@dataclass
class SweepContext:
    """What a job needs to nest its run under the sweep's parent."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str

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


def sweep_dir(hydra_cfg: DictConfig) -> Path:
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


def job_tags(context: Optional[SweepContext]) -> dict[str, Any]:
    if context is None:
        return {}
    return {SWEEP_ID_TAG: context.sweep_id, JOB_TAG: HydraConfig.get().job.num}


def jobs_at_once(n_jobs: Optional[int], cpus: int) -> int:
    """joblib's n_jobs as a count: None or 0 -> 1, -1 -> every core, -2 -> all but one, ..."""
    if not n_jobs:
        return 1
    return max(1, cpus + 1 + n_jobs) if n_jobs < 0 else int(n_jobs)


def parallel_jobs() -> int:
    """How many jobs share this machine's cores at once.

    joblib: its n_jobs. Ray: cores // the CPUs Ray reserves per job (`ray.remote.num_cpus`, Ray's
    default 1), so each job's TensorFlow uses the cores it was given. Otherwise 1.
    """
    launcher = HydraConfig.get().launcher
    cpus = os.cpu_count() or 1
    if "ray" in launcher:
        cpus_per_job = (launcher.ray.get("remote") or {}).get("num_cpus") or 1
        return max(1, int(cpus // cpus_per_job))
    return jobs_at_once(launcher.get("n_jobs"), cpus)


def open_tracking(settings: DictConfig, launch_dir: str) -> tuple[Any, str, Optional[str], dict]:
    """(client, experiment id, parent run id, extra tags) for this job's run.

    In a sweep the callback already chose the store, the experiment and the parent run.
    """
    from hw4 import tracking

    context = current_context()
    if context is None:
        client, experiment_id = tracking.open_experiment(settings, launch_dir)
        return client, experiment_id, None, {}
    client = tracking.connect(context.tracking_uri)
    return client, context.experiment_id, context.parent_run_id, job_tags(context)


def summarize(client: Any, context: SweepContext) -> dict[str, Any]:
    """Counts by status and the best finished child by final validation accuracy."""
    children = client.search_runs(
        [context.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{context.parent_run_id}'",
        max_results=10_000,
    )
    statuses = [run.info.status for run in children]
    summary: dict[str, Any] = {
        "jobs": len(children),
        "jobs_finished": statuses.count("FINISHED"),
        "jobs_failed": statuses.count("FAILED"),
        "jobs_killed": statuses.count("KILLED"),
    }
    finished = [r for r in children if r.info.status == "FINISHED" and OBJECTIVE in r.data.metrics]
    if finished:
        best = max(finished, key=lambda run: run.data.metrics[OBJECTIVE])
        summary.update(
            best_run_id=best.info.run_id,
            best_run_name=best.info.run_name,
            best_lr=float(best.data.params.get("optimizer.lr", "nan")),
            best_model=best.data.params.get("model.name", ""),
            best_val_categorical_accuracy=best.data.metrics[OBJECTIVE],
            best_test_categorical_accuracy=best.data.metrics.get(TEST_METRIC, float("nan")),
        )
    return summary


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.context: Optional[SweepContext] = None
        self._finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hw4 import tracking

        # Hydra has not changed directory yet: this is the folder the user launched from.
        client, experiment_id = tracking.open_experiment(config.tracking, os.getcwd())
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        definition = {
            "overrides": list(config.hydra.overrides.task),
            "sweeper": OmegaConf.to_container(config.hydra.sweeper, resolve=False),
            "launcher": OmegaConf.to_container(config.hydra.launcher, resolve=False),
        }
        parent = tracking.retry(
            lambda: client.create_run(
                experiment_id,
                run_name=f"sweep-{sweep_id}",
                tags={
                    SWEEP_ID_TAG: sweep_id,
                    "sweep": "parent",
                    "overrides": " ".join(config.hydra.overrides.task),
                    "launcher": str(config.hydra.launcher.get("_target_", "")),
                },
            ),
            "create parent run",
        )
        tracking.retry(lambda: client.log_dict(parent.info.run_id, definition, "sweep.json"), "sweep.json")
        self.context = SweepContext(
            client.tracking_uri, experiment_id, parent.info.run_id, sweep_id
        )
        self.context.save(sweep_dir(config.hydra))
        atexit.register(self._finish)  # Hydra skips on_multirun_end when a job failed
        log.info("MLflow parent run %s (sweep %s)", parent.info.run_id, sweep_id)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.context is None or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        folder = sweep_dir(config.hydra)
        if SweepContext.load(folder) is None:  # a machine that does not share the launcher's disk
            self.context.save(folder)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        context = SweepContext.load(sweep_dir(config.hydra))
        if context is None:
            return
        from mlflow.tracking import MlflowClient

        from hw4 import tracking

        client = MlflowClient(context.tracking_uri)
        job_num = config.hydra.job.num
        existing = client.search_runs(
            [context.experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{context.parent_run_id}' "
                f"and tags.{JOB_TAG} = '{job_num}'"
            ),
        )
        if existing:  # the job's own run already ended FAILED with its error
            return
        error = job_return._return_value  # the exception; .return_value would re-raise it
        job_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            params = tracking.flatten(OmegaConf.to_container(job_cfg, resolve=True))
        except Exception:  # the job may have failed because its config does not resolve
            params = {}
        tags = {
            "overrides": " ".join(job_return.overrides or []),
            SWEEP_ID_TAG: context.sweep_id,
            JOB_TAG: job_num,
            "mlflow.parentRunId": context.parent_run_id,
            "error": f"{type(error).__name__}: {error}"[:5000],
        }
        run = tracking.retry(
            lambda: client.create_run(context.experiment_id, run_name=f"job-{job_num}", tags=tags),
            "record failed job",
        )
        tracking.RunLogger(client, run.info.run_id).log_params(params)
        tracking.retry(lambda: client.set_terminated(run.info.run_id, "FAILED"), "end failed job")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._finished or self.context is None:
            return
        self._finished = True
        from mlflow.entities import RunStatus
        from mlflow.tracking import MlflowClient

        from hw4 import tracking

        client = MlflowClient(self.context.tracking_uri)
        parent_id = self.context.parent_run_id
        summary = summarize(client, self.context)
        logger = tracking.RunLogger(client, parent_id)
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.set_tags({k: v for k, v in summary.items() if isinstance(v, str)})
        logger.log_dict(summary, "sweep_summary.json")
        status = RunStatus.FINISHED if summary["jobs_finished"] else RunStatus.FAILED
        tracking.retry(
            lambda: client.set_terminated(parent_id, RunStatus.to_string(status)), "end parent"
        )
        log.info("sweep %s: %s", self.context.sweep_id, summary)
