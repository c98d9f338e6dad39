"""The search itself: Optuna's ask-and-tell loop over Hydra's launcher.

Each batch: ask the study for `n_jobs` trials (their parameters drawn from the search space),
launch them as one batch of Hydra jobs (through the configured launcher), and tell
the study how each ended. A job's return value is the trial's value; a job that failed, or
returned NaN (a diverged or stopped run), is told FAIL. Before and after each batch the sweep's
stop file (hw4/runtime/signals.py) is read: once a stop was asked for, the stopped trials are
told FAIL and queued in the study again (the next launch tries them first), and the sweep ends
as a stopped grid ends.

Each job gets its trial (`hydra.sweeper.study_name` and `hydra.sweeper.trial` in its Hydra
config): it reports every epoch to it and stops when the study's pruner says so
(hw4/sweep/study.py). A job that was pruned returns normally; its trial is told PRUNED here.

A launcher that dies (SIGKILL, a lost machine) cannot tell its trials: while a batch runs, the
launcher records their heartbeats (`Heartbeat`), and every launch first fails the study's stale
trials (Optuna's `fail_stale_trials`), which queues each again with its parameters. Its job
then resumes the dead trial's run from its checkpoint, under the same parent run
(hw4.sweep.callback reopens a parent whose launcher died).
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional, cast

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hw4.errors import ConfigError
from hw4.runtime.signals import Stopped, signal_name, stop_signal
from hw4.sweep import study as studies

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from hw4.sweep.context import SweepContext

log = logging.getLogger(__name__)
RESULTS_FILE = "optimization_results.yaml"


def distribution(override: Override) -> Any:
    """The Optuna distribution an override sweeps over, or (not a sweep) its fixed value.

    Read as Hydra's official Optuna plugin reads it (create_optuna_distribution_from_override):
    `choice(...)` and a shuffled range are categorical; `interval(a, b)` is a float interval (Hydra
    makes its bounds floats), `int(interval(a, b))` an integer one, either log-scaled under
    `tag(log, ...)`. Two differences, both where the plugin's reading would run something other
    than what was written: `tag(int, interval(a, b))` is an integer interval too (the plugin
    ignores the tag and samples floats, which an int setting such as a batch size then refuses),
    and `range(start, stop, step)` holds exactly the values Hydra's own `range` sweep enumerates,
    `stop` excluded (the plugin's IntUniformDistribution(start, stop, step) includes it).
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        encoded = cast("list[str]", list(override.sweep_iterator(transformer=Transformer.encode)))  # encode: strings
        return CategoricalDistribution(encoded)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        return range_distribution(override, value)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep) and value.start is not None and value.end is not None
        log_scale = "log" in value.tags
        integers = "int" in value.tags or (isinstance(value.start, int) and isinstance(value.end, int))
        # The integers inside the interval (as the bounds are integers: the plugin's int()).
        low, high = (math.ceil(value.start), math.floor(value.end)) if integers else (value.start, value.end)
        if low > high or (log_scale and low <= 0):
            raise ConfigError(f"{override.input_line}: an empty or (log) non-positive interval, nothing to sample")
        if integers:
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(low, high, log=log_scale)
    raise ConfigError(f"{override.input_line}: not a search space Optuna can sample")


def range_distribution(override: Override, value: RangeSweep) -> Any:
    """Hydra's `range(start, stop, step)` as the evenly spaced distribution of exactly the values
    the range enumerates: from the lowest to the highest of them, `stop` itself excluded."""
    count = sum(1 for _ in override.sweep_iterator())
    if count == 0:
        raise ConfigError(f"{override.input_line}: an empty range, nothing to sample")
    if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
        # In decimal: start + (n - 1) * step as written, not as float sums round it.
        start, step = Decimal(str(value.start)), Decimal(str(value.step))
        ends = sorted((start, start + (count - 1) * step))
        return FloatDistribution(float(ends[0]), float(ends[1]), step=float(abs(step)))
    assert value.start is not None  # the grammar's range(start, stop[, step]) has a start
    first, stride = int(value.start), int(value.step)
    bounds = sorted((first, first + (count - 1) * stride))
    return IntDistribution(bounds[0], bounds[1], step=abs(stride))


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The swept parameters' distributions and the fixed overrides, from Hydra's grammar."""
    sampled: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key, found = override.get_key_element(), distribution(override)
        sampled.pop(key, None), fixed.pop(key, None)  # the command line's overrides hydra.sweeper.params
        (sampled if isinstance(found, BaseDistribution) else fixed)[key] = found
    return sampled, fixed


def next_job_number(sweep_dir: Path) -> int:
    """After the job folders a launch into the same sweep folder already made (Hydra names them
    by job number), so that a continued search does not overwrite them."""
    numbers = [int(p.name) for p in sweep_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=-1) + 1


def trial_value(job_return: JobReturn) -> Optional[float]:
    """The job's value, or None for a failed, diverged or stopped job (told FAIL)."""
    if job_return.status != JobStatus.COMPLETED:
        return None
    value = job_return.return_value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's own step before each trial of `optimize`: trials whose heartbeat stopped (their
    launcher died) are told FAIL and, through the storage's RetryHeartbeatStaleTrialCallback,
    queued again with their parameters. Nothing without a heartbeat (an in-memory study)."""
    with warnings.catch_warnings():  # marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """While a batch's jobs run, record its trials' heartbeats every `heartbeat_interval` seconds
    in a thread of the launcher (Optuna's `optimize` does this for the trial it runs; ask and tell
    leave it to the caller). The jobs may run in other processes or machines: what the heartbeat
    says is that the launcher that will tell their trials is alive."""

    def __init__(self, storage: Optional[optuna.storages.RDBStorage], trials: list[optuna.Trial]) -> None:
        self.storage = storage
        self.interval = storage.get_heartbeat_interval() if storage is not None else None
        self.trial_ids = [trial._trial_id for trial in trials]  # as Optuna's own heartbeat names them
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Heartbeat":
        if self.interval:
            self.beat()  # at once: a trial without any heartbeat is never found stale
            self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        if self.storage is None:  # no interval either: __enter__ does not beat
            return
        for trial_id in self.trial_ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as exc:  # the storage blinked: the next beat tries again
                log.warning("heartbeat of trial id %d not recorded (%s)", trial_id, str(exc).splitlines()[0])


class OptunaSweeperImpl:
    def __init__(
        self,
        *,
        sampler: Any,
        pruner: Any,
        direction: Literal["minimize", "maximize"],  # Optuna's create_study refuses others
        storage: Optional[str],
        study_name: Optional[str],
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Optional[DictConfig],
        heartbeat_interval: Optional[int] = None,
        grace_period: Optional[int] = None,
        max_retry: Optional[int] = None,
        trial: Optional[int] = None,  # set on each job's config, never on the sweep's
    ) -> None:
        if heartbeat_interval is not None and (
            heartbeat_interval < 1 or (grace_period is not None and grace_period <= heartbeat_interval)
        ):
            raise ValueError(
                "hydra.sweeper.heartbeat_interval must be >= 1 and below grace_period, "
                f"got {heartbeat_interval} and {grace_period}"
            )
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate}")
        if n_jobs < 1 or n_trials < 0:
            raise ValueError(f"hydra.sweeper.n_jobs must be >= 1 and n_trials >= 0, got {n_jobs}, {n_trials}")
        # Hydra instantiates the sweeper's config recursively: the sampler arrives built; a plain
        # config (a sweeper made by hand) is built here.
        self.sampler = sampler if isinstance(sampler, optuna.samplers.BaseSampler) else instantiate(sampler)
        if isinstance(pruner, optuna.pruners.BasePruner) or pruner is None:
            self.pruner = pruner or optuna.pruners.NopPruner()
        else:
            self.pruner = instantiate(pruner)
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params: Mapping[str, Any] = params or {}  # the sweep's parameters, by dotted key
        self.heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "max_retry": max_retry,
        }
        self.rdb: Optional[optuna.storages.RDBStorage] = None  # the study's storage, once opened
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        from hw4.sweep import context

        self.stop_file = context.sweep_dir(config.hydra) / context.STOP_FILE
        self.job_idx = next_job_number(context.sweep_dir(config.hydra))

    def check_stop(self) -> None:
        if self.stop_file.exists():
            signum = stop_signal(self.stop_file)
            raise Stopped(signum, f"search stopped ({signal_name(signum)}): no further trials")

    def open_study(self) -> optuna.Study:
        from hw4.tracking import redact

        storage = studies.storage_url(self.storage, self.config.hydra.runtime.cwd)
        with studies.creating(storage, **self.heartbeat) as opened:
            study = optuna.create_study(
                study_name=self.study_name, storage=opened, sampler=self.sampler, pruner=self.pruner,
                direction=self.direction, load_if_exists=True,
            )  # fmt: skip
            if study.direction.name.lower() != str(self.direction).lower():  # an existing study keeps its own
                raise studies.direction_error(study.study_name, study.direction.name.lower(), self.direction)
            # Under the storage's lock: of two new launches at once, the second compares with the first.
            studies.check_settings(study, studies.fixed_settings(self.config))
        self.rdb = opened if isinstance(opened, optuna.storages.RDBStorage) else None
        done = len(study.get_trials(deepcopy=False))
        if done:  # a seeded sampler would draw the first launch's values again
            self.sampler.reseed_rng()
        log.info("Optuna study %s in %s: %d trial(s) so far", study.study_name, redact(storage or "memory"), done)
        return study

    def sweep(self, arguments: list[str]) -> None:
        sampled, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        study = self.open_study()
        self.remember_parent(study)
        try:
            self.run_trials(study, sampled, fixed)
        finally:  # a stopped or failed search records its study too
            self.report(study)

    def job_overrides(self, study: optuna.Study, trial: optuna.Trial, fixed: dict[str, str]) -> tuple[str, ...]:
        """The trial's parameters, the fixed overrides, and where the job finds its trial."""
        name = study.study_name.replace("'", "\\'")  # quoted: Hydra's grammar
        handed = (f"hydra.sweeper.study_name='{name}'", f"hydra.sweeper.{studies.TRIAL}={trial.number}")
        return tuple(f"{k}={v}" for k, v in {**trial.params, **fixed}.items()) + handed

    def run_trials(self, study: optuna.Study, sampled: dict, fixed: dict[str, str]) -> None:
        to_go = self.n_trials
        while to_go > 0:
            self.check_stop()
            batch = min(to_go, self.n_jobs)
            fail_stale_trials(study)  # a dead launcher's trials: FAIL, and asked again first
            trials = [study.ask(fixed_distributions=sampled) for _ in range(batch)]
            overrides = [self.job_overrides(study, trial, fixed) for trial in trials]
            try:
                with Heartbeat(self.rdb, trials):
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException:  # a second Ctrl-C, a dead worker: no trial stays RUNNING
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            self.job_idx += len(returns)
            stopped = self.stop_file.exists()
            failed = []
            now = {t.number: t for t in study.get_trials(deepcopy=False)}  # with what the jobs wrote
            for trial, job_return in zip(trials, returns):
                value = trial_value(job_return)
                if now[trial.number].state.is_finished():  # failed as stale by another launch: retried there
                    log.warning("trial %d was failed by another launch (no heartbeat in time)", trial.number)
                    continue
                if value is not None and studies.pruned_at(now[trial.number]) is not None:
                    study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)  # its last reported value
                    continue
                if value is not None:
                    study.tell(trial, value, skip_if_finished=True)
                    continue
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if stopped:  # its run is KILLED with a checkpoint: the next launch tries it first
                    study.enqueue_trial(trial.params, skip_if_exists=False)
                else:
                    failed.append(job_return)
            self.check_stop()
            if failed and len(failed) / len(returns) > self.max_failure_rate:
                log.error(
                    "%d of %d trials failed (max_failure_rate=%s)", len(failed), len(returns), self.max_failure_rate
                )
                for job_return in failed:
                    _ = job_return.return_value  # re-raises the job's own error, if it raised one
                raise RuntimeError(f"{len(failed)} of {len(returns)} trials failed")
            to_go -= batch
        fail_stale_trials(study)  # a dead launcher's trials that went stale while this launch ran

    def sweep_context(self) -> Optional[SweepContext]:
        from hw4.sweep.context import SweepContext, sweep_dir

        return SweepContext.load(sweep_dir(self.config.hydra))  # hw4's callback wrote it, if configured

    def tracking_client(self, context: SweepContext) -> MlflowClient:
        from hw4 import tracking
        from hw4.sweep.context import store_uri

        uri = store_uri(context, self.config.tracking.uri, self.config.hydra.runtime.cwd)
        return tracking.client_for(uri, tracking.policy_for(self.config.tracking))

    def remember_parent(self, study: optuna.Study) -> None:
        """The next launch of this study continues under this launch's parent run."""
        context = self.sweep_context()
        if context is None:
            return
        from hw4 import tracking

        client = self.tracking_client(context)
        studies.record_parent(
            study, context, parent_exists=lambda run_id: tracking.get_run_or_none(client, run_id) is not None
        )

    def report(self, study: optuna.Study) -> None:
        """The study's summary: in the sweep folder, in the log, and on the parent run. Runs
        after a stop or a failure too, so it never raises: the stop or the error goes on."""
        from hw4 import tracking

        try:
            summary = studies.study_summary(study)
            if "best_params" in summary:
                log.info("Best parameters: %s, value %s (trial %d)", summary["best_params"], summary["best_value"],
                         summary["best_trial"])  # fmt: skip
            results = {"name": "optuna", **summary, "trials": len(study.trials), "states": summary["trials"]}
            OmegaConf.save(OmegaConf.create(results), Path(self.config.hydra.sweep.dir, RESULTS_FILE))
            context = self.sweep_context()
            if context is not None:
                studies.log_study(self.tracking_client(context), context.parent_run_id, study)
        except Exception as exc:
            log.error("study %s: its summary could not be written (%s)", study.study_name, tracking.first_line(exc))
