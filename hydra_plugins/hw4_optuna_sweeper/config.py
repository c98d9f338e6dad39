"""The sweeper's config: `hydra/sweeper=hw4_optuna`, as conf/hparams_search/optuna_lr.yaml selects it.

The keys are those of Hydra's official Optuna plugin, so `hydra.sweeper.params` (Optuna
distributions in Hydra's override grammar: `interval(1e-4, 3e-2)`, `tag(log, interval(...))`,
`choice(...)`, `range(...)`), `n_trials`, `n_jobs`, `direction`, `study_name`, `storage` and
`sampler` keep working. What differs: the study lives in an RDB storage by default (beside the
MLflow store), a failed trial does not abort the search (`max_failure_rate` 1.0), and the sampler
is one `_target_` node (any `optuna.samplers` class) rather than a config group.
"""

# No `from __future__ import annotations`: Hydra loads this module outside sys.modules, where
# dataclasses and OmegaConf could not resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore

# Beside the MLflow store (sqlite:///mlruns/mlflow.db); a relative sqlite path is the launch
# folder's. A team shares a study through a PostgreSQL database of its own (not MLflow's: both
# keep an alembic_version table).
DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.hw4_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # A sampler that needs no search space up front (TPE, random, CMA-ES, QMC; not GridSampler),
    # e.g. _target_: optuna.samplers.RandomSampler.
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    direction: str = "maximize"  # or minimize
    storage: Optional[str] = DEFAULT_STORAGE  # null: in memory, gone with the process
    study_name: Optional[str] = None  # with storage, identifies the study: a launch again continues it
    n_trials: int = 20  # trials this launch adds to the study
    n_jobs: int = 2  # trials asked for, and launched, at once
    # The share of a batch's (n_jobs) trials that may fail (told FAIL) and the search go on.
    max_failure_rate: float = 1.0
    params: Optional[Dict[str, str]] = None  # the search space, in Hydra's override grammar


ConfigStore.instance().store(group="hydra/sweeper", name="hw4_optuna", node=OptunaSweeperConf, provider="hw4")
