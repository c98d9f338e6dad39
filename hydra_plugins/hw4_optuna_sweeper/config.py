"""The sweeper's config: `hydra/sweeper=hw4_optuna`, as conf/hparams_search/optuna_lr.yaml selects it.

The keys are those of Hydra's official Optuna plugin, so `hydra.sweeper.params` (Optuna
distributions in Hydra's override grammar: `interval(1e-4, 3e-2)`, `tag(log, interval(...))`,
`choice(...)`, `range(...)`), `n_trials`, `n_jobs`, `direction`, `study_name`, `storage` and
`sampler` keep working. What differs: the study lives in an RDB storage by default (beside the
MLflow store), a failed trial does not abort the search (`max_failure_rate` 1.0), the sampler
is one `_target_` node (any `optuna.samplers` class) rather than a config group, and every trial
can be pruned after any epoch: `hydra/sweeper/pruner=median` (the default, as Optuna's),
`percentile`, `successive_halving` (ASHA), `hyperband` or `none`.
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

# Pruners, by name (hydra/sweeper/pruner=NAME; their arguments as hydra.sweeper.pruner.KEY=...).
# A step is an epoch (0-based, as MLflow's steps). The defaults suit searches of 8 to 30 trials of
# 5 to 20 epochs: no decision in a trial's first epoch; median and percentile wait for two
# finished trials, successive halving and Hyperband compare with whatever reached the rung.
PRUNERS: Dict[str, Dict[str, Any]] = {
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1},
    "percentile": {  # keeps the top 25% at each step: stricter than the median
        "_target_": "optuna.pruners.PercentilePruner",
        "percentile": 25.0,
        "n_startup_trials": 2,
        "n_warmup_steps": 1,
    },
    # ASHA: decisions at steps 1, 3, 9 (after epochs 2, 4, 10), a third of the trials going on.
    "successive_halving": {
        "_target_": "optuna.pruners.SuccessiveHalvingPruner",
        "min_resource": 1,
        "reduction_factor": 3,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "${trainer.epochs}",
        "reduction_factor": 3,
    },
    "none": {"_target_": "optuna.pruners.NopPruner"},
}


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
    pruner: Any = None  # chosen from the hydra/sweeper/pruner group (PRUNERS)
    # The sweeper sets it on each job's config (with study_name): the number of the trial it runs.
    trial: Optional[int] = None


ConfigStore.instance().store(group="hydra/sweeper", name="hw4_optuna", node=OptunaSweeperConf, provider="hw4")
for _name, _node in PRUNERS.items():
    ConfigStore.instance().store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="hw4")
