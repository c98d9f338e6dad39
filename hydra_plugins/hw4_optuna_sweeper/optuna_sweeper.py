"""`hparams_search=optuna_lr`: Hydra's Optuna sweeper, stopping and failing as grid sweeps do.

The official plugin (hydra-optuna-sweeper) tells Optuna a trial's value as the job returned
it. Two things go wrong with hw4's jobs there: a job that was stopped (SIGTERM, Ctrl-C) or not
started returns NaN, which Optuna refuses to take as a value, and the plugin's fallback then fails
too (a traceback, exit 1, the parent left to the exit handler); and a failed trial aborts the
search unless `max_failure_rate` allows it. `StoppableOptunaSweeper` puts a thin launcher in front
of the plugin's own:

- before and after each batch of trials it reads the sweep's stop file (hw4/runtime/signals.py): once a
  stop was asked for, no further batch is launched and the sweep ends as a stopped grid sweep
  ends (its running jobs KILLED with their checkpoints, the parent KILLED, exit 128 + signal);
- a trial that returned NaN is told FAIL (no value) instead of breaking the plugin.

conf/hparams_search/optuna_lr.yaml selects it and sets `max_failure_rate: 1.0`: a failed trial
is told FAIL and the search goes on. No TensorFlow, no MLflow.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from hw4.runtime.signals import Stopped, signal_name, stop_signal
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class StoppingLauncher:
    """The sweeper's launcher, which stops the search once the sweep's stop file exists."""

    def __init__(self, launcher: Any, config: DictConfig):
        from hw4.sweep import context

        self.launcher = launcher
        self.stop_file = context.sweep_dir(config.hydra) / context.STOP_FILE

    def _check(self) -> None:
        if self.stop_file.exists():
            signum = stop_signal(self.stop_file)
            raise Stopped(signum, f"search stopped ({signal_name(signum)}): no further trials")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        self._check()
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        self._check()  # a stop during the batch: its trials are not told COMPLETE
        for job_return in returns:
            if job_return.status == JobStatus.COMPLETED and _is_nan(job_return._return_value):
                job_return.return_value = None  # the plugin tells Optuna FAIL, without a value
        return returns


def _is_nan(value: Optional[Any]) -> bool:
    return isinstance(value, float) and math.isnan(value)


class StoppableOptunaSweeper(OptunaSweeper):
    """See the module docstring; configured exactly as the plugin's OptunaSweeper."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweeper.launcher = StoppingLauncher(self.sweeper.launcher, config)
