"""One MLflow parent run per Hydra sweep, with every job nested under it as a child run.

`MlflowSweepCallback` is registered under `hydra.callbacks` in conf/config.yaml:

- on_multirun_start (launcher process, before any job): create the experiment and the parent run
  once (parallel jobs racing to create the experiment can log into the wrong one), and write
  their ids to `<sweep dir>/mlflow_sweep.json`, where every job finds them whatever process or
  launcher runs it. A sweep folder that already holds that file is an earlier sweep being
  continued: its parent run is reopened, and each job (`open_job`) looks for an earlier attempt
  at its configuration and seed: FINISHED is skipped, KILLED or dead RUNNING resumes, FAILED
  trains again in a new child.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hw4 import names, system

log = logging.getLogger(__name__)

CONTEXT_FILE = "mlflow_sweep.json"
SUMMARY_FILE = "sweep_summary.json"
CONFIGS_FILE = "sweep_configurations.csv"
SWEEP_ID_TAG = names.SWEEP_ID
JOB_TAG = names.JOB_NUM


@dataclass
class SweepContext:
    """What a job needs to nest its run under the sweep's parent."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str
    # When this launch started (ms since the epoch): runs older than that are earlier attempts.
    launched_at: int = 0

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
    cpus = system.usable_cores()
    if "ray" in launcher:
        cpus_per_job = (launcher.ray.get("remote") or {}).get("num_cpus") or 1
        return max(1, int(cpus // cpus_per_job))
    return jobs_at_once(launcher.get("n_jobs"), cpus)


@dataclass
class Job:
    """Where this job's run goes, and what an earlier attempt at it (a continued sweep) left."""

    client: Any
    experiment_id: str
    parent_run_id: Optional[str] = None
    tags: dict = field(default_factory=dict)
    context: Optional[SweepContext] = None
    finished: Any = None  # a FINISHED earlier attempt: nothing to train
    resume_run_id: Optional[str] = None  # a KILLED (or dead RUNNING) attempt to continue
    supersedes: Optional[str] = None  # a FAILED attempt that the new run replaces


def open_job(settings: DictConfig, launch_dir: str, params: dict) -> Job:
    """The tracking store, experiment and parent run of this job, checked before data loads.

    In a sweep the callback already chose the store, the experiment and the parent run.
    """
    from hw4 import tracking

    context = current_context()
    if context is None:
        client, experiment_id = tracking.open_experiment(settings, launch_dir)
        return Job(client, experiment_id)
    client = tracking.connect(context.tracking_uri)
    job = Job(client, context.experiment_id, context.parent_run_id, job_tags(context), context)
    previous = latest_attempt(client, context, names.job_key(params))
    if previous is not None:
        status = previous.info.status
        if status == "FINISHED":
            job.finished = previous
        elif status in ("KILLED", "RUNNING"):  # RUNNING: the run lock tells a dead process
            job.resume_run_id = previous.info.run_id
        else:
            job.supersedes = previous.info.run_id
    return job


def latest_attempt(client: Any, context: SweepContext, job_key: str) -> Any:
    """The newest child run with this job key from an earlier launch of the sweep that no later
    attempt replaced, or None. Runs of this launch do not count: jobs that differ only in
    bookkeeping (say tracking.run_name=a,b) are meant to run each."""
    runs = client.search_runs(
        [context.experiment_id],
        filter_string=(
            f"{names.children_filter(context.parent_run_id)} and tags.{names.JOB_KEY} = '{job_key}' "
            f"and attributes.start_time < {context.launched_at}"
        ),
        order_by=["attributes.start_time DESC"],
    )
    current = [r for r in runs if names.SUPERSEDED_BY not in r.data.tags]
    return current[0] if current else None


def sibling_values(client: Any, job: Job, run_id: str) -> Any:
    """For pruning: `values(epoch)` gives the validation accuracy at that epoch of every other
    child of the sweep (failed and replaced runs left out). Finished runs are read once."""
    finished: dict[str, dict[int, float]] = {}

    def values(epoch: int) -> list[float]:
        found = []
        for run in client.search_runs(
            [job.experiment_id], filter_string=names.children_filter(job.parent_run_id), max_results=10_000
        ):
            other = run.info.run_id
            if other == run_id or run.info.status == "FAILED" or names.SUPERSEDED_BY in run.data.tags:
                continue
            history = finished.get(other)
            if history is None:
                history = {m.step: m.value for m in client.get_metric_history(other, names.VAL_ACCURACY)}
                if run.info.status == "FINISHED":
                    finished[other] = history
            if epoch in history:
                found.append(history[epoch])
        return found

    return values


def summarize(client: Any, context: SweepContext) -> tuple[dict[str, Any], Any]:
    """Counts by status, the best configuration by its mean over seeds and its best seed, and
    the per-configuration table. Ranked by best-epoch validation accuracy (names.OBJECTIVE);
    runs replaced by a later attempt are left out."""
    from hw4 import runs

    children = runs.training_runs(client, context.experiment_id, context.parent_run_id)
    statuses = [run.info.status for run in children]
    frame = runs.table(children)
    summary: dict[str, Any] = {
        "jobs": len(children),
        "jobs_finished": statuses.count("FINISHED"),
        "jobs_failed": statuses.count("FAILED"),
        "jobs_killed": statuses.count("KILLED"),
        "jobs_pruned": int(frame["pruned"].sum()) if not frame.empty else 0,
        "ranked_by": names.OBJECTIVE,
    }
    configurations = runs.group(frame)
    best = runs.best_run(frame, names.OBJECTIVE)
    if best is not None:
        summary.update(
            best_run_id=best["run_id"],
            best_run_name=best["run"],
            best_lr=float(best["lr"]),
            best_model=best["model"],
            best_config_key=best["config_key"],
            best_config_runs=int(configurations.loc[best["config_key"], "n"]),
            best_config_mean_val_categorical_accuracy=float(
                configurations.loc[best["config_key"], "best_val_accuracy_mean"]
            ),
            best_config_mean_test_categorical_accuracy=float(
                configurations.loc[best["config_key"], "test_accuracy_mean"]
            ),
            best_val_categorical_accuracy=float(best["best_val_accuracy"]),
            best_test_categorical_accuracy=float(best["test_accuracy"]),
        )
    return summary, configurations


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.context: Optional[SweepContext] = None
        self._finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:

        folder = sweep_dir(config.hydra)
        earlier = SweepContext.load(folder)
        if earlier is not None:
            self.context = self._reopen(earlier)
        if self.context is None:
            self.context = self._create_parent(config)
        self.context.launched_at = int(time.time() * 1000)
        self.context.save(folder)
        atexit.register(self._finish)  # Hydra skips on_multirun_end when a job failed

    def _create_parent(self, config: DictConfig) -> SweepContext:
        from hw4 import tracking

        # Hydra has not changed directory yet: this is the folder the user launched from.
        client, experiment_id = tracking.open_experiment(config.tracking, os.getcwd())
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        definition = {
            "overrides": list(config.hydra.overrides.task),
            "sweeper": OmegaConf.to_container(config.hydra.sweeper, resolve=False),
            "launcher": OmegaConf.to_container(config.hydra.launcher, resolve=False),
        }
        parent = tracking.create_run(
            client,
            experiment_id,
            f"sweep-{sweep_id}",
            {
                **tracking.source_tags("hw4-train -m", os.getcwd()),
                SWEEP_ID_TAG: sweep_id,
                names.SWEEP_ROLE: "parent",
                "overrides": " ".join(config.hydra.overrides.task),
                "launcher": str(config.hydra.launcher.get("_target_", "")),
            },
        )
        tracking.retry(lambda: client.log_dict(parent.info.run_id, definition, "sweep.json"), "sweep.json")
        log.info("MLflow parent run %s (sweep %s)", parent.info.run_id, sweep_id)
        return SweepContext(client.tracking_uri, experiment_id, parent.info.run_id, sweep_id)

    @staticmethod
    def _reopen(earlier: SweepContext) -> Optional[SweepContext]:
        """Continue the sweep of an existing folder under its parent run, if the store has it."""
        from hw4 import tracking

        client = tracking.connect(earlier.tracking_uri)
        try:
            parent = client.get_run(earlier.parent_run_id)
        except Exception:
            log.warning("sweep folder names parent run %s, which %s does not hold: new parent",
                        earlier.parent_run_id, earlier.tracking_uri)
            return None
        tracking.retry(lambda: client.update_run(parent.info.run_id, status="RUNNING"), "reopen parent")
        log.info("continuing sweep %s under parent run %s", earlier.sweep_id, earlier.parent_run_id)
        return earlier

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
                f"{names.children_filter(context.parent_run_id)} and tags.{JOB_TAG} = '{job_num}' "
                f"and attributes.start_time >= {context.launched_at}"
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
            names.PARENT_RUN: context.parent_run_id,
            names.ERROR: f"{type(error).__name__}: {error}"[:5000],
        }
        if params:
            tags.update({names.CONFIG_KEY: names.config_key(params), names.JOB_KEY: names.job_key(params)})
            earlier = latest_attempt(client, context, tags[names.JOB_KEY])
        else:
            earlier = None
        run = tracking.create_run(client, context.experiment_id, f"job-{job_num}", tags)
        if earlier is not None:
            client.set_tag(earlier.info.run_id, names.SUPERSEDED_BY, run.info.run_id)
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
        summary, configurations = summarize(client, self.context)
        logger = tracking.RunLogger(client, parent_id)
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.set_tags({k: v for k, v in summary.items() if isinstance(v, str)})
        logger.log_dict(summary, SUMMARY_FILE)
        if not configurations.empty:
            logger.log_text(configurations.to_csv(), CONFIGS_FILE)
        status = RunStatus.FINISHED if summary["jobs_finished"] else RunStatus.FAILED
        tracking.retry(
            lambda: client.set_terminated(parent_id, RunStatus.to_string(status)), "end parent"
        )
        log.info("sweep %s: %s", self.context.sweep_id, summary)
        print(f"sweep {self.context.sweep_id} (parent run {parent_id}): " + tracking.where_to_see(
            self.context.tracking_uri, self.context.experiment_id
        ) + f" and expand the parent run; or: hw4-compare parent={parent_id}")
