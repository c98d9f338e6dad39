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
  children on the parent (best learning rate and accuracies, how many jobs finished, failed or
  were not run) and end the parent run.

A SIGTERM or Ctrl-C stops the whole sweep (hw4/signals.py): the launcher, and any job that gets
it, writes `<sweep dir>/stop_requested`. Running jobs, in this process or in worker processes,
end their runs KILLED after the current epoch, with their checkpoints kept; jobs not yet started
skip; the parent ends KILLED with a summary counting the jobs not run, and the launcher exits
with 128 + the signal's number once its workers are done. Continuing the sweep in its folder
finishes it.

No TensorFlow here; MLflow is imported only inside the hooks.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hw4 import names, system
from hw4.signals import HANDLED, RunSignals, signal_name, stop_signal

log = logging.getLogger(__name__)

CONTEXT_FILE = "mlflow_sweep.json"
SUMMARY_FILE = "sweep_summary.json"
CONFIGS_FILE = "sweep_configurations.csv"
STOP_FILE = "stop_requested"  # written on a first SIGTERM or Ctrl-C; removed when continued
STARTED_DIR = "jobs_started"  # one empty file per job number that got a run (or found it done)
SWEEP_ID_TAG = names.SWEEP_ID
JOB_TAG = names.JOB_NUM


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


def stop_file() -> Optional[Path]:
    """Where this sweep's stop is asked for (signals.RunSignals), or None for a single run."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return sweep_dir(hydra_cfg) / STOP_FILE


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


def mark_started() -> None:
    """Record that this sweep job got a run (new, resumed or found finished) or failed: jobs
    without such a mark are counted as not run."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        folder = sweep_dir(hydra_cfg) / STARTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(hydra_cfg.job.num)).touch()


def continue_command(config: DictConfig, folder: Path) -> str:
    """The command that finishes this sweep: its own overrides, in its folder, each quoted as a
    shell needs (model=glob(*), values with spaces) and without credentials."""
    from hw4.tracking import redact

    own = [o for o in config.hydra.overrides.hydra if not o.startswith(("hydra.mode=", "hydra.sweep.dir="))]
    words = [*own, *config.hydra.overrides.task, f"hydra.sweep.dir={folder}"]
    return "hw4-train -m " + " ".join(shlex.quote(redact(word)) for word in words)


def planned_jobs(config: DictConfig) -> Optional[int]:
    """How many jobs this launch will run: the grid of Hydra's basic sweeper (its params and the
    command's overrides, as it expands them), or a sweeper's n_trials (Optuna); None if unknown."""
    sweeper = config.hydra.sweeper
    if str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        arguments += list(config.hydra.overrides.task)
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None))
    trials = sweeper.get("n_trials")
    return int(trials) if trials is not None else None


def job_tags(context: Optional[SweepContext]) -> dict[str, Any]:
    if context is None:
        return {}
    return {SWEEP_ID_TAG: context.sweep_id, JOB_TAG: HydraConfig.get().job.num, names.LAUNCH_ID: context.launch_id}


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
    supersedes: list[str] = field(default_factory=list)  # FAILED attempts the new run replaces
    run_id: Optional[str] = None  # the run this job opened, once it exists


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
    client = tracking.client_for(store_uri(context, settings.uri, launch_dir))
    return Job(client, context.experiment_id, context.parent_run_id, job_tags(context), context)


def store_uri(context: SweepContext, uri: str, launch_dir: str) -> str:
    """The sweep's store with its credentials: `uri` (the job's own tracking.uri) when it is the
    store the context names (which it holds without credentials), else the context's."""
    from hw4 import tracking

    uri = tracking.resolve_uri(uri, launch_dir)
    return uri if tracking.redact(uri) == context.tracking_uri else context.tracking_uri


def find_earlier_attempts(job: Job, params: dict) -> None:
    """In a continued sweep: what earlier launches left of this job. A FINISHED attempt on the
    same data is kept (nothing to train); else a KILLED or RUNNING one (a dead process; its lock
    tells) is resumed; FAILED attempts at the same planned job are replaced by this attempt."""
    if job.context is None:
        return
    earlier = attempts(job.client, job.context, plan=names.plan_key(params))
    same_data = [run for run in earlier if run.data.tags.get(names.JOB_KEY) == names.job_key(params)]
    by_status = {status: [r for r in same_data if r.info.status == status] for status in ("FINISHED", "KILLED", "RUNNING")}
    if by_status["FINISHED"]:
        job.finished = by_status["FINISHED"][0]
    elif by_status["KILLED"] or by_status["RUNNING"]:
        job.resume_run_id = (by_status["KILLED"] + by_status["RUNNING"])[0].info.run_id
    job.supersedes = [run.info.run_id for run in earlier if run.info.status == "FAILED"]


def attempts(client: Any, context: SweepContext, *, plan: str) -> list:
    """The children of the sweep at this planned job that no later attempt replaced and that an
    earlier launch opened, newest first. Runs of this launch do not count: jobs that differ only
    in bookkeeping (say tracking.run_name=a,b) are meant to run each."""
    from hw4 import runs

    found = runs.sweep_runs(
        client, context.experiment_id, context.parent_run_id,
        where=f"tags.{names.PLAN_KEY} = '{plan}'", order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    return [run for run in found if not opened_in(run, context)]


def opened_in(run: Any, context: SweepContext) -> bool:
    """Whether this launch of the sweep created or reopened `run`."""
    launch = run.data.tags.get(names.LAUNCH_ID)
    if launch is not None:
        return launch == context.launch_id
    return run.info.start_time >= context.launched_at  # a run from before launch ids


def supersede(client: Any, replaced: list[str], by: str) -> None:
    """Tag FAILED attempts as replaced by run `by`; only a FAILED run is ever superseded."""
    for run_id in replaced:
        if client.get_run(run_id).info.status == "FAILED":
            client.set_tag(run_id, names.SUPERSEDED_BY, by)


def sibling_values(client: Any, job: Job, run_id: str) -> Any:
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


def summarize(client: Any, context: SweepContext) -> tuple[dict[str, Any], Any]:
    """The sweep's summary and per-configuration table (hw4.runs.summarize) over its children."""
    from hw4 import runs

    return runs.summarize(runs.training_runs(client, context.experiment_id, context.parent_run_id))


_exit_signal: Optional[int] = None  # set when this process's sweep ended on a stop signal


def exit_if_stopped() -> None:
    """Exit as a process ended by the stop signal would (128 + its number), once the sweep has
    ended in order: schedulers and shells then see that it did not complete."""
    if _exit_signal is not None:
        sys.exit(128 + (_exit_signal or signal.SIGTERM))


def end_abandoned_children(client: Any, context: SweepContext, lock_root: Optional[Path]) -> None:
    """End KILLED the RUNNING children whose process died without ending them (a worker killed
    by a second stop signal): their lock file is on this disk and no process holds it. Runs of
    other machines (their locks elsewhere) are left alone. They resume like any KILLED run."""
    from hw4 import locks, runs

    if lock_root is None:
        return
    running = runs.sweep_runs(client, context.experiment_id, context.parent_run_id, where="attributes.status = 'RUNNING'")
    for run in running:
        lock = locks.lock_path(lock_root, run.info.run_id)
        if lock.exists() and not locks.is_held(lock):
            log.warning("run %s: its process died; ending it KILLED", run.info.run_id)
            client.set_terminated(run.info.run_id, "KILLED")


class MlflowSweepCallback(Callback):
    """Hydra's hooks, each handing over to one method (see the module docstring)."""

    def __init__(self) -> None:
        self.context: Optional[SweepContext] = None
        self._uri = ""  # the store's URI with its credentials: never written anywhere
        self._finished = False
        self._completed = False
        self._signals: Optional[RunSignals] = None
        self._folder: Optional[Path] = None
        self._planned: Optional[int] = None
        self._lock_root: Optional[Path] = None
        self._command = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hw4 import tracking

        folder = self._folder = sweep_dir(config.hydra)
        (folder / STOP_FILE).unlink(missing_ok=True)  # a stopped sweep being continued
        shutil.rmtree(folder / STARTED_DIR, ignore_errors=True)
        # Hydra has not changed directory yet: this is the folder the user launched from.
        self._uri = tracking.resolve_uri(config.tracking.uri, os.getcwd())
        earlier = SweepContext.load(folder)
        if earlier is not None:
            self.context = self._reopen(earlier)
        if self.context is None:
            self.context = self._create_parent(config)
        self.context.launched_at = int(time.time() * 1000)
        self.context.launch_id = uuid.uuid4().hex[:12]
        self.context.save(folder)
        self._planned = planned_jobs(config)
        self._lock_root = Path(os.getcwd(), config.trainer.checkpoint_dir)  # where jobs lock their runs
        self._command = continue_command(config, folder)
        self._signals = RunSignals(folder / STOP_FILE).__enter__()  # a job's own handlers stand in during it
        atexit.register(self._finish)  # Hydra skips on_multirun_end when a job failed

    def _create_parent(self, config: DictConfig) -> SweepContext:
        from hw4 import tracking

        client, experiment_id = tracking.open_experiment(config.tracking, os.getcwd())
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        overrides = [tracking.redact(o) for o in config.hydra.overrides.task]
        definition = {
            "overrides": overrides,
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
                "overrides": " ".join(overrides),
                "launcher": str(config.hydra.launcher.get("_target_", "")),
            },
        )
        client.log_dict(parent.info.run_id, definition, "sweep.json")
        log.info("MLflow parent run %s (sweep %s)", parent.info.run_id, sweep_id)
        return SweepContext(tracking.redact(self._uri), experiment_id, parent.info.run_id, sweep_id)

    def _reopen(self, earlier: SweepContext) -> Optional[SweepContext]:
        """Continue the sweep of an existing folder under its parent run, if the store has it.
        Only the store's answer that the run does not exist starts a new parent; any other
        error (after retries) stops the launch, so a blink of the store cannot fork the sweep."""
        from hw4 import tracking
        from hw4.errors import TrackingError

        client = tracking.connect(self._uri)
        try:
            parent = tracking.get_run_or_none(client, earlier.parent_run_id)
        except Exception as exc:
            raise TrackingError(
                f"cannot continue sweep {earlier.sweep_id}: reading its parent run "
                f"{earlier.parent_run_id} failed ({tracking.first_line(exc)}); try again"
            ) from None
        if parent is None:
            log.warning("sweep folder names parent run %s, which %s does not hold: new parent",
                        earlier.parent_run_id, tracking.redact(self._uri))  # fmt: skip
            return None
        client.update_run(parent.info.run_id, status="RUNNING")
        if names.STOPPED_BY in parent.data.tags:  # the earlier launch's stop
            client.delete_tag(parent.info.run_id, names.STOPPED_BY)
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
        mark_started()  # failed: counted among the failed jobs, not the ones not run
        context = SweepContext.load(sweep_dir(config.hydra))
        if context is not None:
            record_failed_job(config, job_return, context)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._completed = True  # every job returned
        self._finish()

    def _stopped_by(self) -> Optional[int]:
        """The signal that stopped the sweep (0 if not known), or None if it was not stopped."""
        stop = self._folder / STOP_FILE if self._folder else None
        if stop is None or not stop.exists():
            return None
        return stop_signal(stop)

    def _not_run(self, stopped_by: Optional[int]) -> int:
        """Jobs that never got a run. A sweep that ended in order ran them all; otherwise (stopped,
        or cut short by a failure) the jobs' marks on this disk are counted."""
        if self._completed and stopped_by is None:
            return 0  # also right for Ray jobs on machines whose marks this disk does not see
        started_dir = self._folder / STARTED_DIR if self._folder else None
        started = len(list(started_dir.iterdir())) if started_dir and started_dir.is_dir() else 0
        return max(0, (self._planned or 0) - started)

    def _finish(self) -> None:
        """End the parent run, whatever happens meanwhile: further stop signals are held until
        it has ended (then the process exits as stopped), a summary that cannot be written still
        lets the parent end, and a call that fails leaves `_finished` unset so that the exit
        handler tries again."""
        if self._finished or self.context is None:
            return
        from mlflow.entities import RunStatus

        from hw4 import tracking

        global _exit_signal
        client = tracking.client_for(self._uri)
        parent_id = self.context.parent_run_id
        with held_signals() as late:
            stopped_by = self._stopped_by()
            status = RunStatus.KILLED if stopped_by is not None else RunStatus.FAILED
            summary: dict[str, Any] = {}
            try:
                end_abandoned_children(client, self.context, self._lock_root)  # e.g. an OOM-killed worker
                summary = self._log_summary(client, stopped_by)
                if stopped_by is None and summary["jobs_finished"]:
                    status = RunStatus.FINISHED
            except Exception as exc:
                log.error("sweep %s: its summary could not be written (%s)", self.context.sweep_id, tracking.first_line(exc))
            finally:
                tracking.end_run(client, parent_id, status)
            self._finished = True
        if self._signals is not None:
            self._signals.__exit__(None, None, None)
        if stopped_by is None and late:
            stopped_by = late[0]
        _exit_signal = stopped_by
        self._report(summary, stopped_by)

    def _log_summary(self, client: Any, stopped_by: Optional[int]) -> dict[str, Any]:
        from hw4 import tracking

        summary, configurations = summarize(client, self.context)
        if self._planned is not None:
            summary.update(jobs_planned=self._planned, jobs_not_run=self._not_run(stopped_by))
        if stopped_by is not None:
            summary[names.STOPPED_BY] = signal_name(stopped_by)
        logger = tracking.RunLogger(client, self.context.parent_run_id)
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        logger.set_tags({k: v for k, v in summary.items() if isinstance(v, (str, bool))})
        logger.log_dict(summary, SUMMARY_FILE)
        if not configurations.empty:
            logger.log_text(configurations.to_csv(), CONFIGS_FILE)
        return summary

    def _report(self, summary: dict[str, Any], stopped_by: Optional[int]) -> None:
        from hw4 import tracking

        parent_id = self.context.parent_run_id
        log.info("sweep %s: %s", self.context.sweep_id, summary)
        if stopped_by is not None:
            print(
                f"sweep {self.context.sweep_id} stopped ({signal_name(stopped_by)}): "
                f"{summary.get('jobs_killed', 'some')} job(s) KILLED with their checkpoints, "
                f"{summary.get('jobs_not_run', 'an unknown number of')} not run; parent run "
                f"{parent_id} KILLED. Finish it with:\n  {self._command}"
            )
        print(f"sweep {self.context.sweep_id} (parent run {parent_id}): " + tracking.where_to_see(
            self._uri, self.context.experiment_id
        ) + f" and expand the parent run; or: hw4-compare parent={parent_id}")


def record_failed_job(config: DictConfig, job_return: JobReturn, context: SweepContext) -> None:
    """A job that failed before it could open (or reopen) its own run in this launch (a bad
    override, bad data, a run another process still trains) still gets a FAILED child with its
    config and error, so the sweep's record is complete. It supersedes earlier FAILED attempts
    only: a KILLED or RUNNING run keeps its checkpoint and is resumed by the next continue."""
    from hw4 import runs, tracking

    client = tracking.client_for(store_uri(context, config.tracking.uri, config.hydra.runtime.cwd))
    job_num = config.hydra.job.num
    own = runs.sweep_runs(client, context.experiment_id, context.parent_run_id, where=f"tags.{JOB_TAG} = '{job_num}'")
    if any(opened_in(run, context) for run in own):  # the job's own run already ended FAILED with its error
        return
    error = job_return._return_value  # the exception; .return_value would re-raise it
    job_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        params = tracking.redact_params(tracking.flatten(OmegaConf.to_container(job_cfg, resolve=True)))
    except Exception:  # the job may have failed because its config does not resolve
        params = {}
    tags = {
        "overrides": " ".join(tracking.redact(o) for o in job_return.overrides or []),
        SWEEP_ID_TAG: context.sweep_id,
        JOB_TAG: job_num,
        names.LAUNCH_ID: context.launch_id,
        names.PARENT_RUN: context.parent_run_id,
        names.ERROR: tracking.redact(f"{type(error).__name__}: {error}")[:5000],
    }
    earlier: list = []
    if params:
        tags.update({names.CONFIG_KEY: names.config_key(params), names.PLAN_KEY: names.plan_key(params)})
        earlier = [r.info.run_id for r in attempts(client, context, plan=tags[names.PLAN_KEY]) if r.info.status == "FAILED"]
    run = tracking.create_run(client, context.experiment_id, f"job-{job_num}", tags)
    supersede(client, earlier, run.info.run_id)
    tracking.RunLogger(client, run.info.run_id).log_params(params)
    tracking.end_run(client, run.info.run_id, "FAILED")


@contextlib.contextmanager
def held_signals() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM while the block runs (the list collects them), so that a follow-up
    signal cannot cut the store writes that end a sweep; in the main thread only."""
    import threading

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.signal(signum, lambda n, _frame: received.append(n)) for signum in HANDLED}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
