"""hw4 from Python, for notebooks: the console scripts' runs, returned as objects.

    from hw4 import api
    result = api.train(["experiment=part3_mlp", "data.dir=../shared/datasets/fashion-mnist"])
    result.history, result.test_metrics, result.model, result.ui     # per-epoch metrics, ..., the UI link
    table = api.sweep(["sweep=lr", "model=mlp", "trainer.epochs=3"])   # one row per configuration
    api.compare(parent=table.attrs["parent_run_id"])                   # hw4-compare's table

The overrides are hw4-train's, presets and `sweep=refine` included. Each call composes the config
afresh through Hydra's compose API and runs in this process, with the tracking and the errors of
the command line: a bad input raises one `hw4.errors.Hw4Error` (or Hydra's own error for a
config that does not compose). Nothing here exits the process, so a notebook kernel survives
every call, and calls can follow one another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from hw4 import config
from hw4.errors import ConfigError, Hw4Error
from hw4.sweep import _hydra

if TYPE_CHECKING:
    import pandas as pd

    from hw4.train import TrainedRun


def _command_line(overrides: Sequence[str]) -> tuple[list[str], bool]:
    """The overrides as hw4-train reads them, and whether they ask for a sweep."""
    from hw4 import train as entrypoint

    args = entrypoint.command_line(list(overrides))
    if "--multirun" in args:  # sweep=refine, expanded
        return [a for a in args if a != "--multirun"], True
    return args, _hydra.is_multirun(config.CONFIG_DIR, "config", args)


def train(overrides: Sequence[str] = ()) -> TrainedRun:
    """Train, evaluate and track one configuration, as `hw4-train OVERRIDES` does. A Ctrl-C
    ends the run KILLED and raises KeyboardInterrupt (hw4.runtime.signals.Stopped) here."""
    args, multirun = _command_line(overrides)
    if multirun:
        raise ConfigError("these overrides make a sweep: call api.sweep(...) for it")
    outcome = _hydra.run(config.CONFIG_DIR, "config", _training_run, args, multirun=False)
    if outcome.trained is None:  # already finished (nothing trained)
        raise ConfigError(f"no run was trained: {outcome.note}")
    return outcome.trained


def _training_run(cfg: Any) -> Any:
    """hw4-train's job for api.train, on its composed config: a range test (sweep=lr_find) is
    refused before anything runs (it has no model to return)."""
    from hw4 import train as entrypoint

    if cfg.lr_find.enabled:
        raise ConfigError("sweep=lr_find is a range test, not a training run: run it with hw4-train +sweep=lr_find")
    return entrypoint.run(cfg)


def _sweep_job(cfg: Any) -> float:
    """A job of api.sweep: the sweep objective, as Hydra's sweepers take it."""
    from hw4 import train as entrypoint

    return entrypoint.run(cfg).objective


def sweep(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Run a sweep (a grid, a preset, `sweep=refine`, an Optuna search), as `hw4-train -m
    OVERRIDES` does; returns the sweep's per-configuration table, ranked (hw4-compare's
    statistics), with the parent run id and the summary in `table.attrs`. A sweep a signal
    stopped raises KeyboardInterrupt once its parent has ended."""
    from hw4 import ranking, runs, tracking
    from hw4.sweep import callback
    from hw4.sweep.callback import MlflowSweepCallback

    args, _ = _command_line(overrides)
    MlflowSweepCallback.launched = None
    try:
        _hydra.run(config.CONFIG_DIR, "config", _sweep_job, args, multirun=True)
    except callback.LaunchAborted as aborted:  # the sweep could not start: its error, not an exit
        raise (aborted.error if isinstance(aborted.error, Hw4Error) else Hw4Error(aborted.reason)) from None
    finally:  # a job that raised makes Hydra skip on_multirun_end: end the parent (and its handlers) now
        if MlflowSweepCallback.launched is not None:
            MlflowSweepCallback.launched.finish()
    launched = MlflowSweepCallback.launched
    if launched is None or launched.context is None:
        raise ConfigError("the sweep did not start (hydra.callbacks.mlflow_sweep is not configured)")
    callback.raise_if_stopped()
    context = launched.context
    client = tracking.client_for(launched.store_uri, launched.policy)  # the sweep's tracking.retry_s
    children = runs.training_runs(client, context.experiment_id, context.parent_run_id)
    summary, table = ranking.summarize(runs.table(children), launched.objective)
    table.attrs.update(parent_run_id=context.parent_run_id, summary=summary)
    return table


def compare(*, parent: Optional[str] = None, group: bool = True, **tracking_settings: Any) -> pd.DataFrame:
    """hw4-compare's table as a DataFrame: the runs of the experiment, or of one sweep
    (`parent`), one row per configuration (`group=True`) or per run. `tracking_settings`: the
    tracking config's keys (uri, experiment), as on hw4-compare's command line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from hw4 import ranking, runs, tracking
    from hw4.commands import compare as command

    try:
        settings = OmegaConf.merge(OmegaConf.structured(config.TrackingConfig), tracking_settings)
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"api.compare: {str(exc).splitlines()[0]} (the tracking config's keys: uri, experiment)"
        ) from None
    client, experiment_id = tracking.open_experiment(settings, ".")
    parent_run = runs.get_run(client, parent, f"parent={parent}") if parent else None
    if parent_run is not None:
        experiment_id = parent_run.info.experiment_id
    metric = command.ranking_metric(parent_run, settings.objective)  # the sweep's own objective, as hw4-compare
    frame = runs.table(runs.training_runs(client, experiment_id, parent))
    if frame.empty:
        return frame
    if not group:
        return command.run_table(frame, metric=metric)
    return command.config_table(ranking.group(frame, metric, sweep=parent is not None), metric=metric)
