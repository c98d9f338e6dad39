"""The sweeper's config: `hydra/sweeper=hw4_optuna`, as conf/hparams_search/optuna_lr.yaml selects it.

The keys are those of Hydra's official Optuna plugin, so `hydra.sweeper.params` (Optuna
distributions in Hydra's override grammar: `interval(1e-4, 3e-2)`, `tag(log, interval(...))`,
`choice(...)`, `range(...)`), `n_trials`, `n_jobs`, `direction`, `study_name`, `storage` and
`sampler` keep working. What differs: the study lives in an RDB storage by default (beside the
MLflow store), a failed trial does not abort the search (`max_failure_rate` 1.0), the sampler
is one `_target_` node (any `optuna.samplers` class) rather than a config group, and every trial
can be pruned after any epoch: `hydra/sweeper/pruner=median` (the default, as Optuna's),
`percentile`, `successive_halving` (ASHA), `hyperband` or `none`. hw4's own keys:
`heartbeat_interval`, `grace_period` and `max_retry`, for a launcher that dies.
"""

# No `from __future__ import annotations`: Hydra loads this module outside sys.modules, where
# dataclasses and OmegaConf could not resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

# Beside the MLflow store (sqlite:///mlruns/mlflow.db); a relative sqlite path is the launch
# folder's. A team shares a study through a PostgreSQL database of its own (not MLflow's: both
# keep an alembic_version table).
# HW4_OPTUNA_STORAGE keeps a password out of the command line (and so out of Hydra's records).
DEFAULT_STORAGE = "${oc.env:HW4_OPTUNA_STORAGE,sqlite:///mlruns/optuna.db}"

# Pruners: the group hydra/sweeper/pruner, YAML files in hw4's conf/hydra/sweeper/pruner/ (median,
# percentile, successive_halving, hyperband, none). Not ConfigStore nodes: Hydra's --help copies
# the whole store once per config group it lists, so every node there slows hw4-train --help.


@dataclass
class OptunaSweeperConf:
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"pruner": "median"}])
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
    pruner: Any = None  # chosen from the hydra/sweeper/pruner group (conf/hydra/sweeper/pruner)
    # A launcher that dies (killed, its machine lost) leaves its trials RUNNING: while their jobs
    # run, the launcher records each trial's heartbeat every heartbeat_interval seconds, and a
    # launch finds a trial whose heartbeat is older than grace_period seconds stale: told FAIL and
    # asked again with its parameters (up to max_retry times; null: always), its run resumed from
    # its checkpoint. Optuna's heartbeat, on an RDB storage only; heartbeat_interval=null: none.
    # The settings are each launch's own: launches of one study should share them (a launch with
    # a shorter grace_period fails the live trials of one with a longer heartbeat_interval).
    heartbeat_interval: Optional[int] = 60
    grace_period: Optional[int] = None  # null: twice heartbeat_interval, as Optuna's
    max_retry: Optional[int] = 3
    # The sweeper sets it on each job's config (with study_name): the number of the trial it runs.
    trial: Optional[int] = None


ConfigStore.instance().store(group="hydra/sweeper", name="hw4_optuna", node=OptunaSweeperConf, provider="hw4")
