"""The search itself: Optuna's ask-and-tell loop over Hydra's launcher.

Each batch: ask the study for `n_jobs` trials (their parameters drawn from the search space),
launch them as one batch of Hydra jobs (through the configured launcher), and tell
the study how each ended. A job's return value is the trial's value; a job that failed, or
returned NaN (a diverged or stopped run), is told FAIL. Before and after each batch the sweep's
stop file (hw4/runtime/signals.py) is read: once a stop was asked for, the stopped trials are
told FAIL and queued in the study again (the next launch tries them first), and the sweep ends
as a stopped grid ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Optional

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

from hw4.runtime.signals import Stopped, signal_name, stop_signal

log = logging.getLogger(__name__)
RESULTS_FILE = "optimization_results.yaml"


def distribution(override: Override) -> Any:
    """The Optuna distribution an override sweeps over, or (not a sweep) its fixed value."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise ValueError(f"{override.input_line}: not a search space Optuna can sample")


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The swept parameters' distributions and the fixed overrides, from Hydra's grammar."""
    sampled, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key, found = override.get_key_element(), distribution(override)
        sampled.pop(key, None), fixed.pop(key, None)  # the command line's overrides hydra.sweeper.params
        (sampled if isinstance(found, BaseDistribution) else fixed)[key] = found
    return sampled, fixed


def storage_url(storage: Optional[str], launch_dir: str) -> Optional[str]:
    """A relative sqlite path, as the launch folder's (its folder created), as for MLflow's store."""
    from hw4.tracking import resolve_uri

    return resolve_uri(storage, launch_dir, what="hydra.sweeper.storage") if storage else None


@contextlib.contextmanager
def creating(storage: Optional[str]) -> Iterator[Any]:
    """The storage to open the study in. A sqlite file is opened under an exclusive file lock, so
    that two launches creating a new file at once do not race on its tables, and waits up to
    60 s for a lock on the database instead of SQLite's 5 s."""
    if not storage or not storage.startswith("sqlite:///") or storage.endswith(":memory:"):
        yield storage
        return
    with open(storage[len("sqlite:///") :] + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})


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


class OptunaSweeperImpl:
    def __init__(
        self,
        *,
        sampler: Any,
        direction: str,
        storage: Optional[str],
        study_name: Optional[str],
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Optional[DictConfig],
    ) -> None:
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate}")
        if n_jobs < 1 or n_trials < 0:
            raise ValueError(f"hydra.sweeper.n_jobs must be >= 1 and n_trials >= 0, got {n_jobs}, {n_trials}")
        # Hydra instantiates the sweeper's config recursively: the sampler arrives built; a plain
        # config (a sweeper made by hand) is built here.
        self.sampler = sampler if isinstance(sampler, optuna.samplers.BaseSampler) else instantiate(sampler)
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params or {}
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
        from hw4.errors import ConfigError
        from hw4.tracking import redact

        storage = storage_url(self.storage, self.config.hydra.runtime.cwd)
        with creating(storage) as opened:
            study = optuna.create_study(
                study_name=self.study_name, storage=opened, sampler=self.sampler, direction=self.direction,
                load_if_exists=True,
            )  # fmt: skip
        if study.direction.name.lower() != str(self.direction).lower():  # an existing study keeps its own
            raise ConfigError(
                f"Optuna study {study.study_name} {study.direction.name.lower()}s, this search would "
                f"{self.direction} (tracking.objective): choose another hydra.sweeper.study_name"
            )
        done = len(study.get_trials(deepcopy=False))
        if done:  # a seeded sampler would draw the first launch's values again
            self.sampler.reseed_rng()
        log.info("Optuna study %s in %s: %d trial(s) so far", study.study_name, redact(storage or "memory"), done)
        return study

    def sweep(self, arguments: list[str]) -> None:
        sampled, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        study = self.open_study()
        to_go = self.n_trials
        while to_go > 0:
            self.check_stop()
            batch = min(to_go, self.n_jobs)
            trials = [study.ask(fixed_distributions=sampled) for _ in range(batch)]
            overrides = [tuple(f"{k}={v}" for k, v in {**trial.params, **fixed}.items()) for trial in trials]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException:  # a second Ctrl-C, a dead worker: no trial stays RUNNING
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL)
                raise
            self.job_idx += len(returns)
            stopped = self.stop_file.exists()
            failed = []
            for trial, job_return in zip(trials, returns):
                value = trial_value(job_return)
                if value is not None:
                    study.tell(trial, value)
                    continue
                study.tell(trial, state=TrialState.FAIL)
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
        self.report(study)

    def report(self, study: optuna.Study) -> None:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": len(study.trials)}
        if completed:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info("Best parameters: %s, value %s (trial %d)", best.params, best.value, best.number)
        OmegaConf.save(OmegaConf.create(results), Path(self.config.hydra.sweep.dir, RESULTS_FILE))
