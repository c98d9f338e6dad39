"""The one place hw4 reads Hydra's private API.

`run` runs a task as hydra.main does, for hw4.api, through the Hydra object behind Hydra's
compose API (`GlobalHydra.instance().hydra`); tests/test_api.py runs it.

`planned_jobs` expands a grid the way Hydra's basic sweeper will, through
`hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments`, which is not public.
If a Hydra release moves or changes it, the import or the call fails here and is logged: the
sweep's `jobs_planned` and `jobs_not_run` counts are then unknown, and nothing else depends on
it (tests/sweep/test_sweep.py checks the counts).

`without_idle_joblib_workers` reads loky's reusable executor (`_executor`, private: loky has no
public "is there one" query); if that moves, the workers are reused as before and it is logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def planned_jobs(config: DictConfig) -> Optional[int]:
    """How many jobs this launch will run: the grid of Hydra's basic sweeper (its params and the
    command's overrides, as it expands them), or a sweeper's n_trials (Optuna); None if unknown."""
    sweeper = config.hydra.sweeper
    if str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        try:
            return _basic_sweeper_grid_size(sweeper, list(config.hydra.overrides.task))
        except (ImportError, AttributeError, TypeError) as exc:  # a Hydra whose private API moved
            log.warning("the sweep's planned jobs are unknown: Hydra's BasicSweeper changed (%s)", exc)
            return None
    trials = sweeper.get("n_trials")
    return int(trials) if trials is not None else None


def _basic_sweeper_grid_size(sweeper: DictConfig, task_overrides: list[str]) -> int:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + task_overrides
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None))


def is_multirun(config_dir: str, config_name: str, overrides: list[str]) -> bool:
    """Whether `overrides` make a sweep: a swept value (`a,b`, `range(...)`), or a preset that sets
    hydra.mode=MULTIRUN (composed, without the swept values, to read it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    parsed = OverridesParser.create().parse_overrides(overrides)
    if any(o.is_sweep_override() for o in parsed):
        return True
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    return cfg.hydra.mode == RunMode.MULTIRUN


def run(config_dir: str, config_name: str, task: Callable[[DictConfig], Any], overrides: list[str], *,
        multirun: bool) -> Any:  # fmt: skip
    """Run `task` as hydra.main would (output folder, logging, HydraConfig, callbacks, the
    sweeper and launcher of a multirun), without hydra.main's exits: through the Hydra object
    of Hydra's compose API (`GlobalHydra.instance().hydra`, private). Returns the task's value
    (a run) or the sweeper's; a task's error is raised here."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="hw4-train"):
        app = GlobalHydra.instance().hydra
        assert app is not None  # initialize_config_dir made it
        if multirun:  # as `-m` does: the jobs read the mode from their Hydra config
            without_idle_joblib_workers()
            overrides = [*overrides, "hydra.mode=MULTIRUN"]
            return app.multirun(config_name=config_name, task_function=task, overrides=overrides)
        return app.run(config_name=config_name, task_function=task, overrides=overrides).return_value


def without_idle_joblib_workers() -> None:
    """Shut down the worker processes an earlier joblib sweep of this process left waiting, so
    that this sweep starts its own, as a launch from a shell does. Hydra's joblib launcher reuses
    them (loky's reusable executor), and a reused worker keeps the working folder and environment
    it started with: Hydra composes each job's config in the worker, whose `hydra.runtime.cwd`
    is the worker's folder, so the relative defaults (the tracking store, the Optuna storage,
    the checkpoints) named the earlier sweep's folder (seen: an Optuna search's trials failed on
    a study made in the earlier folder)."""
    if "joblib" not in sys.modules:  # no joblib sweep ran in this process
        return
    try:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
    except (ImportError, AttributeError) as exc:
        log.warning("cannot check for idle joblib workers (%s): a joblib sweep may reuse them", exc)
        return
    if executor is not None:
        executor.shutdown(wait=True)
