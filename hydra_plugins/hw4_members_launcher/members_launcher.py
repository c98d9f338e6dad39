"""`hydra/launcher=members`: a sweep's jobs that share their model, data, preparation, batch
size, epochs and schedule trained as members of one program (hw4.sweep.members), each still its
own MLflow run. The launch is in `_core.py`, the config in `config.py`. No TensorFlow, JAX or MLflow at import.
"""

from __future__ import annotations

from typing import Any, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class MembersLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.hw4_members_launcher._core import launch

        return launch(self, job_overrides, initial_job_idx)
