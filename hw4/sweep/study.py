"""An Optuna search's study, as both sides of the search see it.

The sweeper (hydra_plugins/hw4_optuna_sweeper) opens the study and hands each job its trial as
two overrides of the job's Hydra config, `hydra.sweeper.study_name` and `hydra.sweeper.trial`
(its number).
The job (`current_trial`) opens the same storage, reports its validation metric to that trial
after every epoch and asks the study's pruner whether to go on. Everything goes through the
storage, so jobs in joblib workers and on Ray nodes prune as the launcher's own jobs do.

The sweeper alone tells Optuna how a trial ended: a job marks a pruned trial (a user attribute)
and its MLflow run ends FINISHED, tagged `pruned`; the sweeper then tells it PRUNED.

A study also remembers its MLflow parent run (`record_parent`): a later launch of the same study,
in a new sweep folder, continues under that parent (`recorded_parent`), unless the parent is
still running (another launch, at the same time: it gets a parent of its own, and the study keeps
the first). A parent left RUNNING by a launcher that died is continued (hw4.sweep.callback).

A study records the fixed settings of its first launch (`fixed_settings`: what makes its
trials' values comparable); a launch whose settings differ is refused in one line before any
trial or parent run is touched (`settings_error`).

A launcher records the heartbeat of the trials it runs (`rdb_storage`'s heartbeat settings): a
trial whose launcher died is failed by the next launch and asked again with its parameters.

Optuna is imported inside the functions: the config-only paths never load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hw4 import config as hw4_config
from hw4 import names
from hw4.errors import ConfigError
from hw4.sweep.context import SweepContext

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TRIAL = "trial"  # the key of hydra.sweeper the sweeper sets for each job: its trial's number
PRUNED_ATTR = names.PRUNED_AT  # a trial's user attribute: the epoch its job was pruned after
RUN_ATTR = "mlflow_run_id"  # a trial's user attribute: its MLflow run
PARENT_ATTR = "mlflow_parent"  # a study's user attribute: the sweep context of its parent run
SETTINGS_ATTR = "hw4_fixed_settings"  # a study's user attribute: fixed_settings of its first launch
IMPORTANCES_FILE = "optuna_importances.json"
TRIALS_FILE = "optuna_trials.csv"
STUDY_FILE = "optuna_study.json"


def storage_url(storage: Optional[str], launch_dir: str) -> Optional[str]:
    """A relative sqlite path, as the launch folder's (its folder created), as for MLflow's store."""
    from hw4.tracking import resolve_uri

    return resolve_uri(storage, launch_dir, what="hydra.sweeper.storage") if storage else None


def rdb_storage(
    url: str,
    *,
    heartbeat_interval: Optional[int] = None,
    grace_period: Optional[int] = None,
    max_retry: Optional[int] = None,
) -> optuna.storages.RDBStorage:
    """The storage at `url`; on sqlite, waiting up to 60 s for a lock instead of SQLite's 5 s
    (parallel jobs report their epochs to one file). With `heartbeat_interval` (the launcher's:
    the sweeper's hydra.sweeper.heartbeat_interval), Optuna's heartbeat: a trial whose heartbeat
    is older than `grace_period` is stale, failed by `optuna.storages.fail_stale_trials` and
    asked again with its parameters, up to `max_retry` times."""
    import warnings

    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    if not heartbeat_interval:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    with warnings.catch_warnings():  # Optuna's heartbeat is marked experimental; hw4 relies on it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )  # fmt: skip


@contextlib.contextmanager
def creating(storage: Optional[str], **heartbeat: Optional[int]) -> Iterator[Any]:
    """The storage to create or open a study in (None: Optuna's in-memory storage); `heartbeat`:
    rdb_storage's. A sqlite file is opened under the store lock MLflow's store is opened under
    (hw4.tracking.store_lock), so that two launches creating a new file at once do not race on
    its tables, nor on recording the study's settings."""
    from hw4.tracking import store_lock

    if not storage:
        yield storage
        return
    with store_lock(storage):
        yield rdb_storage(storage, **heartbeat)


def pruned_at(trial: optuna.trial.FrozenTrial) -> Optional[int]:
    """The epoch after which the trial's job was pruned, or None. A frozen trial as the storage
    holds it now: an asked trial's own user attributes are cached when it is asked."""
    value = trial.user_attrs.get(PRUNED_ATTR)
    return None if value is None else int(value)


@dataclass
class JobTrial:
    """The Optuna trial a job of a search runs, opened through the study's storage."""

    trial: optuna.Trial
    metric: str  # the per-epoch metric reported: the one tracking.objective is the best of

    @property
    def tags(self) -> dict[str, Any]:
        return {names.OPTUNA_STUDY: self.trial.study.study_name, names.OPTUNA_TRIAL: self.trial.number}

    def link(self, run_id: str) -> None:
        self.trial.set_user_attr(RUN_ATTR, run_id)

    def found_finished(self, client: MlflowClient, run: Any) -> None:
        """This trial's configuration and seed already ran (a continued search): the trial takes
        that run's record, its epochs and whether it was pruned."""
        self.link(run.info.run_id)
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, self.metric))
        self.report_history({self.metric: [value for _, value in history]})
        if run.data.tags.get(names.PRUNED) == "true":
            self.trial.set_user_attr(PRUNED_ATTR, int(run.data.tags.get(names.PRUNED_AT, 0)))

    def report_history(self, history: Mapping[str, list[float]]) -> None:
        """A resumed run's earlier epochs, reported to this (perhaps new) trial first."""
        for epoch, value in enumerate(history.get(self.metric, [])):
            if math.isfinite(value):
                self.trial.report(float(value), epoch)

    def decide(self, epoch: int, logs: Mapping[str, float]) -> Optional[str]:
        """Report the epoch's value; why to stop if the study's pruner prunes the trial, else None.
        A storage that cannot be reached (after SQLite's 60 s wait, or its own retries) costs
        this epoch's decision, not the run: the trial goes on."""
        value = logs.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        try:
            self.trial.report(float(value), epoch)
            if not self.trial.should_prune():
                return None
        except Exception as exc:  # SQLAlchemy's errors, whatever the database
            log.warning("trial %d: epoch %d not reported to the study (%s); not pruned now", self.trial.number,
                        epoch + 1, str(exc).splitlines()[0])  # fmt: skip
            return None
        self.trial.set_user_attr(PRUNED_ATTR, epoch)
        pruner = type(self.trial.study.pruner).__name__
        return f"{self.metric} {value:.4f}: {pruner} prunes trial {self.trial.number} of study {self.trial.study.study_name}"


def current_trial(objective: str) -> Optional[JobTrial]:
    """The trial this job runs, in an Optuna search (hydra.sweeper.trial set); else None."""
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get(TRIAL) is None:
        return None
    if not sweeper.get("storage"):  # a study in the launcher's memory: no job can reach it
        log.warning("hydra.sweeper.storage=null: the study is in the launcher's memory; trials are not pruned")
        return None
    import optuna
    from hydra.utils import instantiate

    url = storage_url(sweeper.storage, hydra_cfg.runtime.cwd)
    assert url is not None  # sweeper.storage is set (above)
    storage = rdb_storage(url)
    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), int(sweeper.trial)
    )
    return JobTrial(optuna.trial.Trial(study, trial_id), names.EPOCH_METRIC_OF[objective])


def direction_error(study_name: str, has: str, wants: str) -> ConfigError:
    return ConfigError(
        f"Optuna study {study_name} {has}s, this search would {wants} (tracking.objective): "
        "choose another hydra.sweeper.study_name"
    )


def fixed_settings(config: DictConfig) -> dict[str, str]:
    """What makes the objectives of a search's trials comparable: the job's config (the launch's,
    `config`), resolved and flattened, with the sweeper's fixed parameters applied, less the
    searched keys, the seed and the bookkeeping keys (those config_key leaves out), as text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from hw4 import tracking

    sweeper = config.hydra.sweeper
    lines = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(config.hydra.overrides.task)
    searched: set[str] = set()
    fixed: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(lines):  # the command line's last
        key = override.key_or_group
        if override.is_sweep_override():
            searched.add(key)
            fixed.pop(key, None)
        else:
            fixed[key] = override.value()
            searched.discard(key)
    typed = hw4_config.typed_options(config)  # a float typed as an integer as a run records it
    job = {str(key): OmegaConf.to_container(typed[key], resolve=True) if OmegaConf.is_config(typed[key])
           else typed[key] for key in typed if key != "hydra"}  # fmt: skip
    flat_job = tracking.flatten(job)
    flat = {**flat_job, **{key: flat_job.get(key, value) for key, value in fixed.items()}}
    return {
        key: "None" if str(value) in names.UNSET else str(value)
        for key, value in tracking.redact_params(flat).items()
        if key != names.SEED and not names.is_bookkeeping(key)
        and not any(key == s or key.startswith(f"{s}.") for s in searched)
    }  # fmt: skip


def settings_error(study: optuna.Study, settings: Mapping[str, str]) -> Optional[ConfigError]:
    """Why this launch may not add trials to `study`: the fixed settings it records differ from
    `settings` (keys only one side has, a config key added or removed since, do not count)."""
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if not recorded:
        return None
    differ = sorted(k for k in recorded.keys() & settings.keys() if recorded[k] != settings[k])
    if not differ:
        return None
    shown = ", ".join(f"{k}={recorded[k]} (this launch: {settings[k]})" for k in differ[:4])
    more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
    return ConfigError(
        f"Optuna study {study.study_name} was searched with {shown}{more}, so its trials' values do not "
        "compare with this launch's: choose another hydra.sweeper.study_name"
    )


def check_settings(study: optuna.Study, settings: Mapping[str, str]) -> None:
    """Refuse a launch whose fixed settings differ from the study's; a study that records none
    (new, or made before hw4 recorded them) records this launch's."""
    error = settings_error(study, settings)
    if error is not None:
        raise error
    if not study.user_attrs.get(SETTINGS_ATTR):
        study.set_user_attr(SETTINGS_ATTR, dict(settings))


def recorded_parent(config: DictConfig, store: str) -> Optional[SweepContext]:
    """The parent run an earlier launch of this Optuna search recorded on its study, if the study
    exists and was tracked in `store` (a redacted URI); else None. The launcher's callback asks
    this before it creates a parent run, so a study that would be refused (the other direction,
    other fixed settings) is refused before any parent is touched."""
    sweeper = config.hydra.sweeper
    if TRIAL not in sweeper or not sweeper.get("storage") or not sweeper.get("study_name"):
        return None  # not hw4's Optuna sweeper, a study in memory, or a new study of Optuna's naming
    import optuna

    url = storage_url(sweeper.storage, config.hydra.runtime.cwd)
    with creating(url) as storage:
        try:
            study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
        except KeyError:  # no such study yet
            return None
    if study.direction.name.lower() != str(sweeper.direction).lower():
        raise direction_error(study.study_name, study.direction.name.lower(), sweeper.direction)
    error = settings_error(study, fixed_settings(config))
    if error is not None:
        raise error
    recorded = study.user_attrs.get(PARENT_ATTR)
    if not recorded or recorded.get("tracking_uri") != store:
        return None
    fields = {f.name for f in dataclasses.fields(SweepContext)}
    return SweepContext(**{k: v for k, v in recorded.items() if k in fields})


def record_parent(study: optuna.Study, context: SweepContext, *, parent_exists: Callable[[str], bool]) -> None:
    """Remember the launch's parent run on the study, for the next launch (`recorded_parent`).
    The first parent stays the study's while it exists: a launch that ran beside it (and got a
    parent of its own) does not take its place."""
    recorded = study.user_attrs.get(PARENT_ATTR) or {}
    if recorded.get("parent_run_id") == context.parent_run_id:
        return
    if recorded.get("tracking_uri") == context.tracking_uri and parent_exists(recorded["parent_run_id"]):
        return
    kept = dataclasses.asdict(context)
    for launch_only in ("launched_at", "launch_id"):
        kept.pop(launch_only)
    study.set_user_attr(PARENT_ATTR, kept)


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Best trial, trial states and parameter importances (Optuna's default evaluator)."""
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    summary: dict[str, Any] = {"study_name": study.study_name, "direction": study.direction.name.lower()}
    summary["trials"] = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        summary.update(best_value=best.value, best_params=best.params, best_trial=best.number)
        summary["best_run_id"] = best.user_attrs.get(RUN_ATTR)
    summary["importances"] = {}
    if len(complete) >= 2:
        try:
            summary["importances"] = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. every trial has the same parameters
            log.info("no parameter importances for study %s: %s", study.study_name, exc)
    return summary


def log_study(client: MlflowClient, parent_run_id: str, study: optuna.Study) -> dict[str, Any]:
    """Record the study's summary on the search's parent run: tags and metrics named optuna_*,
    the summary, the importances and every trial as artifacts."""
    from hw4.tracking import RunLogger

    summary = study_summary(study)
    logger = RunLogger(client, parent_run_id)
    tags = {names.OPTUNA_STUDY: study.study_name}
    if "best_params" in summary:
        tags[names.OPTUNA_BEST_PARAMS] = json.dumps(summary["best_params"])
        tags[names.OPTUNA_BEST_TRIAL] = summary["best_trial"]
    tags.update({f"{names.OPTUNA_IMPORTANCE}{k}": f"{v:.4f}" for k, v in summary["importances"].items()})
    logger.set_tags(tags)
    metrics = {f"{names.OPTUNA_TRIALS}{state}": n for state, n in summary["trials"].items()}
    if "best_value" in summary:
        metrics[names.OPTUNA_BEST_VALUE] = summary["best_value"]
    logger.log_metrics(metrics)
    logger.log_dict(summary, STUDY_FILE)
    logger.log_dict(summary["importances"], IMPORTANCES_FILE)
    frame = study.trials_dataframe()
    if not frame.empty:
        logger.log_text(frame.to_csv(index=False), TRIALS_FILE)
    return summary
