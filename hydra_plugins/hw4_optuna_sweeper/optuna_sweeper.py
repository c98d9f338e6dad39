"""`hydra/sweeper=hw4_optuna`: a Hydra sweeper on a current Optuna (4.9 and later), by its
ask-and-tell API, with the study in shared storage. The search is in `_core.py`, the config
in `config.py`. Hydra's official Optuna plugin pins optuna < 3, whose storage does not work
with the SQLAlchemy 2 that MLflow 3 needs; its releases for a current Optuna need a Hydra
pre-release. No TensorFlow, no MLflow at import.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        """`settings`: the keys of config.OptunaSweeperConf, as Hydra instantiates them."""
        from hydra_plugins.hw4_optuna_sweeper._core import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
