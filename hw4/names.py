"""The tracking schema: metric, tag and artifact names other commands rely on, in one place.

hw4-train writes these names; hw4-compare, hw4-report, hw4-promote and the sweep callback read
them. Also the run identities: `config_key` (a configuration, whatever its seed) and `job_key`
(one seed of it), hashed from the resolved config without its bookkeeping fields.

No TensorFlow, no MLflow: plain names and hashing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

# Per-epoch metrics (step = 0-based epoch), as Keras names them.
LOSS, ACCURACY = "loss", "categorical_accuracy"
VAL_LOSS, VAL_ACCURACY = "val_loss", "val_categorical_accuracy"
EPOCH_METRICS = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)
LEARNING_RATE = "learning_rate"  # per epoch too: the rate the epoch began with (the schedule's)
# The range test (sweep=lr_find): per batch (step = batch), and the suggestion on the run.
LR_FIND_LR, LR_FIND_LOSS = "lr_find_lr", "lr_find_loss"
LR_FIND_SUGGESTED, LR_FIND_LOW, LR_FIND_HIGH = "lr_find_suggested", "lr_find_low", "lr_find_high"
LR_FIND_ENDED, LR_FIND_SWEEP = "lr_find_ended", "lr_find_sweep"  # tags: why it stopped, the sweep to run
LR_FIND_FIGURE = "lr_find.png"

# Metrics each run logs when it ends.
TEST_LOSS, TEST_ACCURACY = "test_loss", "test_categorical_accuracy"
# Best epoch = the epoch of the highest validation accuracy (the first one on a tie);
# best_val_loss is the lowest validation loss of any epoch.
BEST_VAL_ACCURACY, BEST_VAL_LOSS, BEST_EPOCH = "best_val_categorical_accuracy", "best_val_loss", "best_epoch"
# The epoch whose weights produced the test metrics and the logged model (0-based).
EVALUATED_EPOCH = "evaluated_epoch"
# What sweeps rank by (tracking.objective): by default the best epoch's validation accuracy, not
# the last epoch's. Only validation metrics: the test set stays out of model selection.
OBJECTIVE = BEST_VAL_ACCURACY
OBJECTIVES = {BEST_VAL_ACCURACY: "maximize", BEST_VAL_LOSS: "minimize"}  # and Optuna's direction
RANKED_BY = "ranked_by"  # the sweep parent's tag: the objective it ranked its children by
# The per-epoch metric each objective is the best of: what a job reports to its Optuna trial.
EPOCH_METRIC_OF = {BEST_VAL_ACCURACY: VAL_ACCURACY, BEST_VAL_LOSS: VAL_LOSS}

# Tags.
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own nesting tag (mlflow.utils.mlflow_tags)
CONFIG_KEY = "config_key"
DTYPE_POLICY = "dtype_policy"  # the model's Keras dtype policy (trainer.precision)
BACKEND = "keras_backend"  # the Keras backend that trained the run: tensorflow or jax
XLA = "xla"  # "true"/"false": whether training ran under XLA (trainer.jit_compile resolved)
JOB_KEY = "job_key"
# The job as planned, whatever data it ran on (job_key without the data's digest): a FAILED
# attempt is replaced by any later attempt at the same plan, even one on repaired data.
PLAN_KEY = "plan_key"
LAUNCH_ID = "launch_id"  # which launch of a sweep last opened the run (a continue is a new launch)
SWEEP_ID = "sweep_id"
SWEEP_ROLE, PARENT_ROLE = "sweep", "parent"  # SWEEP_ROLE=PARENT_ROLE on a sweep's parent run
JOB_NUM = "hydra_job_num"
SUPERSEDED_BY = "superseded_by"
PRUNED, PRUNED_AT = "pruned", "pruned_at_epoch"
# An Optuna search's job: its study and trial number (hw4.sweep.study). The parent run of a
# search holds the study's summary under tags and metrics named optuna_*.
OPTUNA_STUDY, OPTUNA_TRIAL = "optuna_study", "optuna_trial"
OPTUNA_BEST_PARAMS, OPTUNA_BEST_TRIAL, OPTUNA_BEST_VALUE = (
    "optuna_best_params",
    "optuna_best_trial",
    "optuna_best_value",
)
OPTUNA_IMPORTANCE = "optuna_importance."  # + the parameter: its importance in the study
OPTUNA_TRIALS = "optuna_trials_"  # + a trial state (complete, pruned, fail, ...): how many
SWEEP_DEFINITION = "sweep.json"  # the parent's artifact: overrides, sweeper and launcher
STOPPED_BY = "stopped_by"  # a sweep parent stopped by a signal: which one
EARLY_STOPPED_AT = "early_stopped_at_epoch"
ERROR = "error"
CREATION_TOKEN = "hw4.creation_token"  # makes creating a run safe to retry (tracking.create_run)

# Config keys that say how or where a run happens, not what it trains: a run's identity leaves
# them out, so a resumed or relocated run is the same configuration.
BOOKKEEPING = (
    "data.dir",  # where the data is; its content is `data.digest`, which counts
    "trainer.eval_batch_size",  # evaluation batches: no gradients, the same metrics
    # Retired options that earlier runs recorded (how batches were fed, not which): left out so
    # that those runs keep their identity.
    "trainer.steps_per_execution",
    "trainer.loop",
    "trainer.pipeline",
    "trainer.xla_cache",  # where compiled programs are kept: the same programs
    "trainer.verbose",
    "trainer.resume",
    "trainer.threads",
    "trainer.checkpoint",
    "trainer.checkpoint_dir",
    "tracking.",  # every tracking setting
    # The factory of the prep and schedule options: the option's `name` (prep.name, schedule.name)
    # says which it is, as it did for the runs recorded before options were factories.
    "prep._target_",
    "schedule._target_",
)
SEED = "trainer.seed"
DATA_DIGEST = "data.digest"  # a content hash of the data files, added to the params by hw4-train
# Spellings of "unset" that must not split a configuration (YAML null, a "none" switch value).
UNSET = {"None", "none", "null", ""}


# Config keys added after runs were recorded, with the value every earlier run had in effect:
# at that value a key is left out of the run's identity, so earlier runs keep their config_key
# (a sweep continued across the change does not train them again).
ADDED_KEYS = {
    "prep.name": "scale", "prep.max_shift": 0, "prep.flip": False,
    "schedule.name": "constant", "schedule.warmup_epochs": 0, "schedule.min_fraction": 0.0, "schedule.every": 1,
    "schedule.factor": 1.0, "schedule.warmup_fraction": 0.0, "schedule.start_divisor": 1.0, "schedule.end_divisor": 1.0,
    "lr_find.enabled": False, "lr_find.min_lr": 1e-6, "lr_find.max_lr": 1.0, "lr_find.steps": 200, "lr_find.explode": 4.0,
}  # fmt: skip


def children_filter(parent_run_id: str) -> str:
    """MLflow search filter for the child runs of one parent."""
    return f"tags.{PARENT_RUN} = '{parent_run_id}'"


def is_bookkeeping(key: str) -> bool:
    return any(key == b or (b.endswith(".") and key.startswith(b)) for b in BOOKKEEPING)


def _canonical(value: Any) -> str:
    text = str(value)
    return "None" if text in UNSET else text


def _digest(params: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if k not in ADDED_KEYS or _canonical(v) != _canonical(ADDED_KEYS[k])}
    text = json.dumps({k: _canonical(v) for k, v in sorted(kept.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_key(params: Mapping[str, Any]) -> str:
    """A short hash of the flattened config without the seed and bookkeeping: repeats share it."""
    return _digest({k: v for k, v in params.items() if k != SEED and not is_bookkeeping(k)})


def job_key(params: Mapping[str, Any]) -> str:
    """A short hash of the flattened config without bookkeeping: one seed of one configuration."""
    return _digest({k: v for k, v in params.items() if not is_bookkeeping(k)})


def plan_key(params: Mapping[str, Any]) -> str:
    """`job_key` without the data's digest: the job as the sweep planned it (see PLAN_KEY)."""
    return job_key({k: v for k, v in params.items() if k != DATA_DIGEST})
