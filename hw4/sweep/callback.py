"""The launcher side of a sweep: Hydra's callback, one MLflow parent run per sweep.

Each hook hands over to one named function:

- on_multirun_start (launcher process, before any job): `MlflowSweepCallback._start_launch`:
  create the experiment and the parent run once, or reopen the parent of a folder being
  continued, and write the context file every job reads (hw4.sweep.context).
- on_job_start (the process that runs the job): `ensure_context`: a job on a machine without the
  launcher's disk writes the context into its own sweep folder.
- on_job_end (the process that ran the job): `record_failed_job`: a job that failed before it
  could open its own run still gets a FAILED child, so the sweep's record is complete.
- on_multirun_end, or at exit when a failed job made Hydra skip that hook: `_finish`: summarise
  the children on the parent and end it, whatever signals come meanwhile.

A SIGTERM or Ctrl-C stops the whole sweep (hw4/runtime/signals.py): the launcher, and any job
that gets it, writes the stop file. Running jobs end their runs KILLED after the current epoch,
with their checkpoints kept; jobs not yet started skip; the parent ends KILLED with a summary
counting the jobs not run, and the launcher exits with 128 + the signal's number once its
workers are done (`raise_if_stopped`). Continuing the sweep in its folder finishes it.

No TensorFlow here; MLflow is imported only inside the hooks.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shlex
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Optional, cast

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hw4 import config as hw4_config
from hw4 import names
from hw4.runtime.signals import HANDLED, RunSignals, signal_name, stop_signal
from hw4.sweep import study
from hw4.sweep._hydra import planned_jobs
from hw4.sweep.context import STARTED_DIR, STOP_FILE, SweepContext, mark_started, opened_in, store_uri, sweep_dir
from hw4.sweep.job import attempts, supersede

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from hw4.tracking import RetryPolicy

log = logging.getLogger(__name__)

SUMMARY_FILE = "sweep_summary.json"

CONFIGS_FILE = "sweep_configurations.csv"


def continue_command(config: DictConfig, folder: Path) -> str:
    """The command that finishes this sweep: its own overrides, in its folder, each quoted as a
    shell needs (model=glob(*), values with spaces) and without credentials."""
    from hw4.tracking import redact

    own = [o for o in config.hydra.overrides.hydra if not o.startswith(("hydra.mode=", "hydra.sweep.dir="))]
    words = [*own, *config.hydra.overrides.task, f"hydra.sweep.dir={folder}"]
    return "hw4-train -m " + " ".join(shlex.quote(redact(word)) for word in words)


def summarize(
    client: MlflowClient, context: SweepContext, objective: str = names.OBJECTIVE
) -> tuple[dict[str, Any], Any]:
    """The sweep's summary and per-configuration table (hw4.ranking.summarize) over its children,
    ranked by the sweep's objective (tracking.objective)."""
    from hw4 import ranking, runs

    children = runs.training_runs(client, context.experiment_id, context.parent_run_id)
    return ranking.summarize(runs.table(children), objective)


def end_abandoned_children(client: MlflowClient, context: SweepContext, lock_root: Optional[Path]) -> None:
    """End KILLED the RUNNING children whose process died without ending them (a worker killed
    by a second stop signal): their lock file is on this disk and no process holds it. Runs of
    other machines (their locks elsewhere) are left alone. They resume like any KILLED run."""
    from hw4 import runs
    from hw4.runtime import locks

    if lock_root is None:
        return
    running = runs.sweep_runs(
        client, context.experiment_id, context.parent_run_id, where="attributes.status = 'RUNNING'"
    )
    for run in running:
        lock = locks.lock_path(lock_root, run.info.run_id)
        if lock.exists() and not locks.is_held(lock):
            log.warning("run %s: its process died; ending it KILLED", run.info.run_id)
            client.set_terminated(run.info.run_id, "KILLED")


class LaunchAborted(SystemExit):
    """A sweep that cannot start: its launch stops with the one-line reason and exit status 1.
    A SystemExit, not an Exception: Hydra turns a callback's Exception into a warning and runs
    the jobs anyway (hydra/_internal/callbacks.py, Callbacks._notify), a sweep without its
    parent run. Uncaught, Python prints the reason to stderr and exits 1; hw4.api raises the
    error instead (a notebook kernel survives)."""

    def __init__(self, reason: str, error: Exception):
        super().__init__(reason)
        self.reason = reason
        self.error = error  # what stopped it


class MlflowSweepCallback(Callback):
    """Hydra's hooks, each handing over to one named function (see the module docstring). The
    launch's state lives here; `launched` is this process's sweep, for `raise_if_stopped`."""

    launched: ClassVar[Optional["MlflowSweepCallback"]] = None

    def __init__(self) -> None:
        self.context: Optional[SweepContext] = None
        self.exit_signal: Optional[int] = None  # set when the sweep ended on a stop signal
        self._uri = ""  # the store's URI with its credentials: never written anywhere
        self.policy: Optional[RetryPolicy] = (
            None  # tracking.retry_s's, once the launch has its config (hw4.api reads it)
        )
        self._finished = False
        self._completed = False
        self._signals: Optional[RunSignals] = None
        self._folder: Optional[Path] = None
        self._planned: Optional[int] = None
        self._lock_root: Optional[Path] = None
        self._parent_lock: Any = None  # hw4.runtime.locks.RunLock on the parent run, while it runs
        self._command = ""
        self._objective = names.OBJECTIVE  # the sweep's tracking.objective, once it started

    @property
    def store_uri(self) -> str:
        """The store's URI with its credentials (for hw4.api in this process; never written)."""
        return self._uri

    @property
    def objective(self) -> str:
        return self._objective

    def finish(self) -> None:
        """End the parent run now, if it has not ended (hw4.api: a sweep whose job raised, where
        Hydra skips on_multirun_end and a notebook's exit handlers run only at its end)."""
        self._finish()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start_launch(config)
        except Exception as exc:  # Hydra would warn and run the jobs anyway, untracked
            raise self._abort_launch(exc) from None

    def _abort_launch(self, exc: Exception) -> LaunchAborted:
        """The launch cannot start: a parent run it already created or reopened ends FAILED
        with the error (never left RUNNING), the stop signals go back, and the one-line reason
        is returned to raise."""
        from hw4 import tracking
        from hw4.errors import Hw4Error

        reason = (
            tracking.first_line(exc)
            if isinstance(exc, Hw4Error)
            else f"{type(exc).__name__}: {tracking.first_line(exc)}"
        )
        if self._signals is not None:
            self._signals.__exit__(None, None, None)
            self._signals = None
        ended = True
        if self.context is not None and not self._finished:
            parent_id = self.context.parent_run_id
            try:
                client = tracking.client_for(self._uri, self.policy)
                tracking.RunLogger(client, parent_id).set_tags({names.ERROR: f"sweep not started: {reason}"})
                tracking.end_run(client, parent_id, "FAILED")
            except Exception as error:
                ended = False
                log.error("parent run %s could not be ended FAILED (%s)", parent_id, tracking.first_line(error))
            self._finished = True  # nothing left for on_multirun_end or the exit handler to end
        # Released now (a notebook's process goes on). A parent that could not be ended keeps its
        # lock file, free: a later launch of its study knows its launcher is gone and continues it.
        if self._parent_lock is not None:
            self._parent_lock.release(keep_file=not ended)
            self._parent_lock = None
        return LaunchAborted(f"sweep not started: {reason}", exc)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.context is not None and HydraConfig.get().mode == RunMode.MULTIRUN:
            ensure_context(config, self.context)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED and HydraConfig.get().mode == RunMode.MULTIRUN:
            mark_started()  # failed: counted among the failed jobs, not the ones not run
            record_failed_job(config, job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._completed = True  # every job returned
        self._finish()

    def _start_launch(self, config: DictConfig) -> None:
        """Create the parent run, or reopen the parent of a folder being continued, and write
        the context file every job reads; hold the launcher's stop signals and its parent run's
        lock from now on."""
        from hw4 import tracking

        MlflowSweepCallback.launched = self
        folder = self._folder = sweep_dir(config.hydra)
        (folder / STOP_FILE).unlink(missing_ok=True)  # a stopped sweep being continued
        shutil.rmtree(folder / STARTED_DIR, ignore_errors=True)
        # Hydra has not changed directory yet: this is the folder the user launched from.
        self._uri = tracking.resolve_uri(config.tracking.uri, os.getcwd())
        self.policy = tracking.policy_for(config.tracking)
        self._lock_root = Path(os.getcwd(), config.trainer.checkpoint_dir)  # where jobs lock their runs
        earlier, from_study = SweepContext.load(folder), False
        if earlier is None:  # an Optuna study launched again, in a new folder: its parent run
            earlier = study.recorded_parent(config, tracking.redact(self._uri))
            from_study = earlier is not None
        if earlier is not None:
            self.context = self._reopen(earlier, unless_running=from_study)
        if self.context is None:
            self.context = self._create_parent(config)
        self.context.launched_at = int(time.time() * 1000)
        self.context.launch_id = uuid.uuid4().hex[:12]
        self.context.save(folder)
        self._planned = planned_jobs(config)
        self._command = continue_command(config, folder)
        self._objective = config.tracking.objective
        self._signals = RunSignals(folder / STOP_FILE).__enter__()  # a job's own handlers stand in during it
        atexit.register(self._finish)  # Hydra skips on_multirun_end when a job failed
        self._hold_parent_lock()  # while this launcher lives: a later launch tells it from a dead one

    def _create_parent(self, config: DictConfig) -> SweepContext:
        from hw4 import tracking

        client, experiment_id = tracking.open_experiment(config.tracking, os.getcwd())
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        overrides = [tracking.redact(o) for o in config.hydra.overrides.task]
        definition = {
            "overrides": overrides,
            "sweeper": tracking.redact_params(cast(dict, OmegaConf.to_container(config.hydra.sweeper, resolve=False))),
            "launcher": tracking.redact_params(
                cast(dict, OmegaConf.to_container(config.hydra.launcher, resolve=False))
            ),
        }
        parent = tracking.create_run(
            client,
            experiment_id,
            f"sweep-{sweep_id}",
            {
                **tracking.source_tags("hw4-train -m", os.getcwd()),
                names.SWEEP_ID: sweep_id,
                names.SWEEP_ROLE: names.PARENT_ROLE,
                "overrides": " ".join(overrides),
                "launcher": str(config.hydra.launcher.get("_target_", "")),
            },
        )
        try:
            client.log_dict(parent.info.run_id, definition, names.SWEEP_DEFINITION)
        except Exception:
            with contextlib.suppress(Exception):  # the launch stops: its parent must not stay RUNNING
                tracking.end_run(client, parent.info.run_id, "FAILED")
            raise
        log.info("MLflow parent run %s (sweep %s)", parent.info.run_id, sweep_id)
        return SweepContext(tracking.redact(self._uri), experiment_id, parent.info.run_id, sweep_id)

    def _reopen(self, earlier: SweepContext, *, unless_running: bool = False) -> Optional[SweepContext]:
        """Continue the sweep of an existing folder under its parent run, if the store has it.
        Only the store's answer that the run does not exist starts a new parent; any other
        error (after retries) stops the launch, so a blink of the store cannot fork the sweep.
        `unless_running`: a parent that is RUNNING belongs to a launch still going on (an Optuna
        study shared by two launches at once): this launch gets a parent of its own. Unless its
        launcher died (killed, its machine restarted): the launcher's lock file is on this disk
        and no process holds it. That parent is continued (its lock now this launcher's) and its
        children left RUNNING end KILLED, to be resumed from their checkpoints."""
        from hw4 import tracking
        from hw4.errors import TrackingError

        client = tracking.connect(self._uri, self.policy)
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
        if parent.info.status == "RUNNING" and self._take_dead_launchers_lock(earlier.parent_run_id):
            log.warning("parent run %s was left RUNNING by a launcher that died: continuing it", earlier.parent_run_id)
            end_abandoned_children(client, earlier, self._lock_root)
        elif unless_running and parent.info.status == "RUNNING":
            log.info("parent run %s of this study is running (another launch): new parent", earlier.parent_run_id)
            return None
        client.update_run(parent.info.run_id, status="RUNNING")
        if names.STOPPED_BY in parent.data.tags:  # the earlier launch's stop
            client.delete_tag(parent.info.run_id, names.STOPPED_BY)
        log.info("continuing sweep %s under parent run %s", earlier.sweep_id, earlier.parent_run_id)
        return earlier

    def _take_dead_launchers_lock(self, parent_run_id: str) -> bool:
        """Take the lock of the launcher of `parent_run_id` if it is on this disk and no live
        process holds it: that launcher died. False for a live launcher, or one whose lock is
        not on this disk (another machine's, or one from before launchers held a lock)."""
        from hw4.runtime import locks

        if self._lock_root is None or not locks.lock_path(self._lock_root, parent_run_id).exists():
            return False
        self._parent_lock = self._try_parent_lock(parent_run_id)
        return self._parent_lock is not None

    def _hold_parent_lock(self) -> None:
        """Hold the flock of this launch's parent run (`<checkpoint_dir>/<parent run id>.lock`, as
        a job holds its run's) until the parent has ended; the kernel drops it if this process
        dies, however it dies. Held by another live launcher (two launches of one folder at once,
        or one still ending the parent this launch reopens), this launch goes on without it: a
        later launch then takes its parent for a live launch's, as before launchers held locks."""
        assert self.context is not None  # on_multirun_start set it
        parent_id = self.context.parent_run_id
        if self._parent_lock is not None and self._parent_lock.run_id == parent_id:
            return  # taken from a dead launcher in _reopen
        self._parent_lock = self._try_parent_lock(parent_id)
        if self._parent_lock is None:
            log.info("parent run %s: another live launcher holds its lock", parent_id)

    def _try_parent_lock(self, parent_run_id: str) -> Any:
        """The parent run's lock, taken; None while a live process holds it."""
        from hw4.errors import TrackingError
        from hw4.runtime import locks

        assert self._lock_root is not None  # on_multirun_start set it
        lock = locks.RunLock(locks.lock_path(self._lock_root, parent_run_id), parent_run_id)
        try:
            lock.acquire()
        except TrackingError:
            return None
        return lock

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

        client = tracking.client_for(self._uri, self.policy)
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
                log.error(
                    "sweep %s: its summary could not be written (%s)", self.context.sweep_id, tracking.first_line(exc)
                )
            finally:
                tracking.end_run(client, parent_id, status)
            self._finished = True
            if self._parent_lock is not None:  # only once the parent has ended
                self._parent_lock.release()
                self._parent_lock = None
        if self._signals is not None:
            self._signals.__exit__(None, None, None)
        if stopped_by is None and late:
            stopped_by = late[0]
        self.exit_signal = stopped_by
        self._report(summary, stopped_by)

    def _log_summary(self, client: MlflowClient, stopped_by: Optional[int]) -> dict[str, Any]:
        from hw4 import tracking

        assert self.context is not None  # _finish checked it
        summary, configurations = summarize(client, self.context, self._objective)
        if self._planned is not None:
            summary.update(jobs_planned=self._planned, jobs_not_run=self._not_run(stopped_by))
        if stopped_by is not None:
            summary[names.STOPPED_BY] = signal_name(stopped_by)
        logger = tracking.RunLogger(client, self.context.parent_run_id)
        logger.log_metrics(
            {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        logger.set_tags({k: v for k, v in summary.items() if isinstance(v, (str, bool))})
        logger.log_dict(summary, SUMMARY_FILE)
        if not configurations.empty:
            logger.log_text(configurations.to_csv(), CONFIGS_FILE)
        return summary

    def _report(self, summary: dict[str, Any], stopped_by: Optional[int]) -> None:
        from hw4 import tracking

        assert self.context is not None  # _finish checked it
        parent_id = self.context.parent_run_id
        log.info("sweep %s: %s", self.context.sweep_id, summary)
        if stopped_by is not None:
            print(
                f"sweep {self.context.sweep_id} stopped ({signal_name(stopped_by)}): "
                f"{summary.get('jobs_killed', 'some')} job(s) KILLED with their checkpoints, "
                f"{summary.get('jobs_not_run', 'an unknown number of')} not run; parent run "
                f"{parent_id} KILLED. Finish it with:\n  {self._command}"
            )
        print(
            f"sweep {self.context.sweep_id} (parent run {parent_id}): "
            + tracking.where_to_see(self._uri, self.context.experiment_id)
            + f" and expand the parent run; or: hw4-compare parent={parent_id}"
        )


def ensure_context(config: DictConfig, context: SweepContext) -> None:
    """Launchers hand a job this callback as it was after on_multirun_start: a job on a machine
    without the launcher's disk (a Ray worker node) writes the context into its own sweep dir."""
    folder = sweep_dir(config.hydra)
    if SweepContext.load(folder) is None:
        context.save(folder)


def raise_if_stopped() -> None:
    """Raise Stopped once this process's sweep has ended in order after a stop signal: the
    console script then exits as a process ended by it would, so that schedulers and shells
    see that the sweep did not complete; hw4.api raises it to the notebook."""
    from hw4.runtime.signals import Stopped

    callback = MlflowSweepCallback.launched
    if callback is None or callback.exit_signal is None:
        return
    signum = callback.exit_signal or signal.SIGTERM
    sweep = f"sweep {callback.context.sweep_id}" if callback.context is not None else "the sweep"
    finish = f"; finish it with: {callback._command}" if callback._command else ""
    raise Stopped(signum, f"{sweep} stopped ({signal_name(signum)}){finish}")


def record_failed_job(config: DictConfig, job_return: JobReturn, context: Optional[SweepContext] = None) -> None:
    """A job that failed before it could open (or reopen) its own run in this launch (a bad
    override, bad data, a run another process still trains) still gets a FAILED child with its
    config and error, so the sweep's record is complete. It supersedes earlier FAILED attempts
    only: a KILLED or RUNNING run keeps its checkpoint and is resumed by the next continue.
    Runs in the process that ran the job; `context` defaults to its sweep folder's."""
    from hw4 import runs, tracking

    context = context or SweepContext.load(sweep_dir(config.hydra))
    if context is None:
        return

    client = tracking.client_for(
        store_uri(context, config.tracking.uri, config.hydra.runtime.cwd), tracking.policy_for(config.tracking)
    )
    job_num = config.hydra.job.num
    own = runs.sweep_runs(
        client, context.experiment_id, context.parent_run_id, where=f"tags.{names.JOB_NUM} = '{job_num}'"
    )
    if any(opened_in(run, context) for run in own):  # the job's own run already ended FAILED with its error
        return
    error = job_return._return_value  # the exception; .return_value would re-raise it
    job_cfg = OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])
    try:
        job_cfg = hw4_config.typed_options(job_cfg)  # recorded as a run records its params
        params = tracking.redact_params(tracking.flatten(cast(dict, OmegaConf.to_container(job_cfg, resolve=True))))
    except Exception:  # the job may have failed because its config does not resolve
        params = {}
    tags = {
        "overrides": " ".join(tracking.redact(o) for o in job_return.overrides or []),
        names.SWEEP_ID: context.sweep_id,
        names.JOB_NUM: job_num,
        names.LAUNCH_ID: context.launch_id,
        names.PARENT_RUN: context.parent_run_id,
        names.ERROR: tracking.redact(f"{type(error).__name__}: {error}")[:5000],
    }
    earlier: list = []
    if params:
        tags.update({names.CONFIG_KEY: names.config_key(params), names.PLAN_KEY: names.plan_key(params)})
        earlier = [
            r.info.run_id for r in attempts(client, context, plan=tags[names.PLAN_KEY]) if r.info.status == "FAILED"
        ]
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
