"""The job side of a sweep: what a job finds in the sweep before it trains.

Runs in the process that runs the job (the launcher's own for the basic launcher, a joblib
worker, a Ray worker on another machine): where its run goes (`open_job`), what earlier
launches of a continued sweep left of it (`find_earlier_attempts`), the FAILED attempts it
replaces (`supersede`), its siblings' curves for pruning (`sibling_values`), and how many jobs
share the machine's cores (`parallel_jobs`).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hw4 import names
from hw4.runtime import system
from hw4.sweep import study
from hw4.sweep.context import SweepContext, current_context, opened_in, store_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


def leave_ctrl_c_to_the_launcher() -> None:
    """In a joblib (loky) worker: ignore SIGINT from now on. A Ctrl-C in a terminal reaches every
    process of the sweep; the launcher then asks every job to stop through the stop file, and a
    job's own handlers (RunSignals) still see the Ctrl-C while it runs. Left to loky, a worker that
    is idle between jobs would die of it, and joblib would then kill the other workers at once,
    in the middle of their runs. Only SIGINT, only in loky's workers: SIGTERM stays the worker's.
    """
    import multiprocessing
    import threading

    in_loky_worker = multiprocessing.current_process().name.startswith("LokyProcess")
    if in_loky_worker and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def job_tags(context: Optional[SweepContext]) -> dict[str, Any]:
    if context is None:
        return {}
    return {
        names.SWEEP_ID: context.sweep_id,
        names.JOB_NUM: HydraConfig.get().job.num,
        names.LAUNCH_ID: context.launch_id,
    }


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

    client: MlflowClient
    experiment_id: str
    parent_run_id: Optional[str] = None
    tags: dict = field(default_factory=dict)
    context: Optional[SweepContext] = None
    finished: Any = None  # a FINISHED earlier attempt: nothing to train
    resume_run_id: Optional[str] = None  # a KILLED (or dead RUNNING) attempt to continue
    supersedes: list[str] = field(default_factory=list)  # FAILED attempts the new run replaces
    run_id: Optional[str] = None  # the run this job opened, once it exists
    trial: Optional[study.JobTrial] = None  # an Optuna search's trial, reported to every epoch


def open_job(settings: DictConfig, launch_dir: str) -> Job:
    """The tracking store, experiment and parent run of this job, checked before data loads.

    In a sweep the callback already chose the store, the experiment and the parent run. The
    context file holds the store's URI without credentials: the job connects with its own
    config's URI, which is the sweep's own.
    """
    from hw4 import tracking

    context = current_context()
    if context is None:
        client, experiment_id = tracking.open_experiment(settings, launch_dir)
        return Job(client, experiment_id)
    # The launcher checked the store already: a job that starts while it blinks waits for it
    # (the retry policy) rather than failing at once.
    client = tracking.client_for(store_uri(context, settings.uri, launch_dir), tracking.policy_for(settings))
    job = Job(client, context.experiment_id, context.parent_run_id, job_tags(context), context)
    job.trial = study.current_trial(settings.objective)
    if job.trial is not None:
        job.tags.update(job.trial.tags)
    return job


def find_earlier_attempts(job: Job, params: dict) -> None:
    """In a continued sweep: what earlier launches left of this job. A FINISHED attempt on the
    same data is kept (nothing to train); else a KILLED or RUNNING one (a dead process; its lock
    tells) is resumed; FAILED attempts at the same planned job are replaced by this attempt."""
    if job.context is None:
        return
    earlier = attempts(job.client, job.context, plan=names.plan_key(params))
    same_data = [run for run in earlier if run.data.tags.get(names.JOB_KEY) == names.job_key(params)]
    by_status = {
        status: [r for r in same_data if r.info.status == status] for status in ("FINISHED", "KILLED", "RUNNING")
    }
    if by_status["FINISHED"]:
        job.finished = by_status["FINISHED"][0]
    elif by_status["KILLED"] or by_status["RUNNING"]:
        job.resume_run_id = (by_status["KILLED"] + by_status["RUNNING"])[0].info.run_id
    job.supersedes = [run.info.run_id for run in earlier if run.info.status == "FAILED"]


def attempts(client: MlflowClient, context: SweepContext, *, plan: str) -> list:
    """The children of the sweep at this planned job that no later attempt replaced and that an
    earlier launch opened, newest first. Runs of this launch do not count: jobs that differ only
    in bookkeeping (say tracking.run_name=a,b) are meant to run each."""
    from hw4 import runs

    found = runs.sweep_runs(
        client, context.experiment_id, context.parent_run_id,
        where=f"tags.{names.PLAN_KEY} = '{plan}'", order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    return [run for run in found if not opened_in(run, context)]


def supersede(client: MlflowClient, replaced: list[str], by: str) -> None:
    """Tag FAILED attempts as replaced by run `by`; only a FAILED run is ever superseded."""
    for run_id in replaced:
        if client.get_run(run_id).info.status == "FAILED":
            client.set_tag(run_id, names.SUPERSEDED_BY, by)


def sibling_values(client: MlflowClient, job: Job, run_id: str) -> Any:
    """For pruning: `values(epoch)` gives the validation accuracy at that epoch of every other
    child of the sweep (failed and replaced runs left out). Finished runs are read once."""
    from hw4 import runs

    finished: dict[str, dict[int, float]] = {}

    def values(epoch: int) -> list[float]:
        found = []
        for run in runs.sweep_runs(client, job.experiment_id, job.parent_run_id):
            other = run.info.run_id
            if other == run_id or run.info.status == "FAILED":
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
