"""Structured-config schemas (registered in Hydra's ConfigStore) and value checks.

Hydra checks keys and types against these dataclasses while composing, so a typo'd key or a
string where a number belongs is rejected before anything is loaded, and so is a value no
Choice has (trainer.precision, trainer.prune). Ranges (epochs > 0, ...) are not something
OmegaConf can express, so `check` verifies them right after composition; the prep and schedule
groups are `_target_` factories, which check their own arguments (`option`).

No TensorFlow here: `hw4-train --help` and `--cfg` go through this module only.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from hw4 import names
from hw4.errors import ConfigError

# The repository's conf/ folder. An absolute path, because console scripts run the entrypoint as
# a module, where Hydra would otherwise look for a Python package named `conf`.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


# Each default below is the only one: data, trainer and tracking are no config groups, just these
# schemas' fields (Config), with no YAML that repeats them. Override them on the command line, or
# in a preset (conf/experiment, conf/sweep, conf/debug).


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    # Folder with the four IDX gzip files (e.g. ../shared/datasets/fashion-mnist), or the
    # HW4_DATA_DIR variable; relative paths resolve against the directory hw4-train was started
    # from. null means keras.datasets (downloads when online).
    dir: Optional[str] = "${oc.env:HW4_DATA_DIR,null}"
    # Stratified subset of the development and test sets, for quick runs; null means all.
    limit: Optional[int] = None
    # The homework's 8:2 train/validation split of the development set.
    val_fraction: float = 0.2
    # Seed of the train/validation split (and of data.limit's subset), apart from trainer.seed:
    # repeats over trainer.seed then vary initialisation and batch order, not the data.
    split_seed: int = 0
    class_names: list[str] = field(default_factory=lambda: list(FASHION_MNIST_CLASSES))


@dataclass
class ModelConfig:
    # hw4's own models start from this schema (conf/model/*.yaml: /model_schema@_here_). The
    # builder function; every other field is passed to it.
    _target_: str = MISSING
    name: str = MISSING
    input_shape: list[int] = MISSING
    dropout: float = 0.0
    batch_norm: bool = False
    # Momentum of batch norm's moving mean/variance (Keras' default 0.99).
    bn_momentum: float = 0.99


@dataclass
class LenetConfig(ModelConfig):
    # C5 as the Dense layer it equals (same weights and function, faster); false: a Conv2D.
    c5_as_dense: bool = True


@dataclass
class OptimizerConfig:
    # A Keras optimizer identifier (adam, sgd, rmsprop, adamw, ...), see keras.optimizers.get.
    name: str = MISSING
    lr: float = MISSING  # each optimizer's own default (conf/optimizer/*.yaml)
    kwargs: dict[str, Any] = field(default_factory=dict)


class Choice(str, Enum):
    """The values of a string switch, typed: Hydra refuses any other while it composes (the error
    lists the allowed ones). A value is its plain string wherever it is recorded or compared
    (params, tags, run identity), as before the switch was typed."""

    def __str__(self) -> str:
        return self.value


class Precision(Choice):
    float32 = "float32"
    mixed_bfloat16 = "mixed_bfloat16"


class Prune(Choice):
    none = "none"  # never, as null
    median = "median"


@dataclass
class LrFindConfig:
    """The learning-rate range test (sweep=lr_find sets enabled): one short run whose rate grows
    exponentially from min_lr to max_lr over `steps` batches, until the loss explodes."""

    enabled: bool = False
    min_lr: float = 1e-6
    max_lr: float = 1.0
    steps: int = 200
    explode: float = 4.0  # stop once the smoothed loss passes this many times its lowest


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 128
    seed: int = 0
    # TensorFlow op determinism: identical histories for identical seeds, somewhat slower (JAX's
    # CPU ops are deterministic already).
    deterministic: bool = False
    # Keras verbosity: 1 = progress bar, 2 = one line per epoch, 0 = silent.
    verbose: int = 1
    # Batch size for evaluation and prediction (no gradients, so larger is faster).
    eval_batch_size: int = 1024
    # XLA on TensorFlow (JAX always compiles with it): "auto" is XLA for models without
    # convolutions (the MLP; LeNet-5's convolutions are faster on oneDNN) in runs long enough to
    # pay back its compile (hw4.training.compile.XLA_MIN_STEPS batches); or true/false. A string
    # checked by `check`, not a Choice: OmegaConf's enum fields refuse the YAML booleans that
    # `trainer.jit_compile=true` arrives as.
    jit_compile: str = "auto"
    # XLA's compilation cache on disk: a later run of the same program skips the first epoch's
    # compile. "auto" = $XDG_CACHE_HOME (or ~/.cache)/hw4/xla/<TensorFlow>-<CPU>, a folder, or null.
    xla_cache: Optional[str] = "auto"
    # Keras dtype policy: float32, or mixed_bfloat16 on CPUs with native bf16 (AVX512_BF16, AMX):
    # LeNet-5's epoch 0.78x float32's there, but not its dropout and batch-norm variants nor the
    # MLP (BENCHMARKS.md), so not the default.
    precision: Precision = Precision.float32
    # TensorFlow threads; null = all cores, or cores / n_jobs under a parallel launcher.
    threads: Optional[int] = None
    # Save model, optimizer state and history every epoch, under <checkpoint_dir>/<run id>.
    checkpoint: bool = True
    checkpoint_dir: str = "mlruns/checkpoints"
    # A run id to continue from its last completed epoch, in the same MLflow run.
    resume: Optional[str] = None
    # Evaluate (test metrics, figures, logged model) the weights of the best validation epoch
    # instead of the last one.
    restore_best: bool = False
    # Stop after this many epochs without a better validation accuracy; null: never.
    early_stopping: Optional[int] = None
    # Sweeps: "median" stops a job whose validation accuracy is below the median of its sibling
    # runs at the same epoch (read from the store); null: never.
    prune: Optional[Prune] = None
    # Epochs every job runs before it may be pruned.
    prune_after: int = 2


@dataclass
class TrackingConfig:
    # Any MLflow tracking URI: MLFLOW_TRACKING_URI when set, else the embedded sqlite store under
    # mlruns/; relative sqlite paths resolve against the launch directory.
    uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlruns/mlflow.db}"
    experiment: str = "hw4"
    # Artifact root for experiments this project creates in a local sqlite store.
    artifact_root: str = "mlruns/artifacts"
    run_name: Optional[str] = None  # null: <model>-<optimizer>-lr<lr>
    log_model: bool = True
    # MLflow's system metrics (CPU, memory, ...) sampled during each run.
    system_metrics: bool = False
    # Seconds one store call keeps retrying transient errors (a database or server restart)
    # before the run gives up; it then ends resumable: KILLED, or RUNNING if the store is gone.
    retry_s: float = 90.0
    # What a sweep ranks by, what hw4-train returns to a sweeper (Optuna's direction follows it)
    # and what hw4-promote promotes by: a validation metric of the best epoch (names.OBJECTIVES).
    objective: str = names.OBJECTIVE


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    # Any, not ModelConfig: a model YAML of the user's own (--config-dir) may carry its builder's
    # own arguments, which `check_model_arguments` checks against the builder's signature.
    model: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    # Groups of `_target_` factories, each option one YAML (conf/prep, conf/schedule): its
    # factory's arguments and `name`, the option's name in the record. Checked by `option`.
    prep: Any = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    lr_find: LrFindConfig = field(default_factory=LrFindConfig)


@dataclass
class ScratchConfig:
    """`hw4-scratch`: Part 1's setup plus a short gradient-descent demo."""

    seed: int = 0  # the homework's seed-0 data
    n_samples: int = 1000
    lr: float = 0.5  # the gradient-descent demo after the homework's single pass
    steps: int = 100
    parent_run_id: Optional[str] = None  # nest the run under this one (hw4-homework)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class CompareConfig:
    """`hw4-compare`: which runs to tabulate, how to sort them, where figures go."""

    parent: Optional[str] = None  # a sweep's parent run id; null = the whole experiment
    sort: Optional[str] = None  # a column; null = best validation accuracy (mean when grouped)
    group: bool = True  # one row per configuration (repeats over seeds), or one per run
    diff: Optional[list[str]] = None  # two run ids: print the config keys whose values differ
    out: str = "outputs/compare"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class PromoteConfig:
    """`hw4-promote`: register a sweep's best model in the Model Registry."""

    parent: Optional[str] = None  # a sweep's parent run id; null = the latest sweep
    # A child metric; lower is better for losses, higher otherwise. null: what the sweep ranked
    # by (its tracking.objective, in the parent's ranked_by tag).
    metric: Optional[str] = None
    name: str = "fashion-mnist"  # registered model name
    alias: str = "champion"
    # Promote a winner with failed, killed, pruned or missing seeds (refused by default).
    allow_incomplete: bool = False
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class CleanConfig:
    """`hw4-clean`: delete the checkpoints no run will resume."""

    killed: bool = False  # also KILLED runs, and RUNNING ones whose process died (resumable)
    dry_run: bool = False  # list what would go, delete nothing
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # trainer.checkpoint_dir, as hw4-train
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# trainer.jit_compile's values (true/false arrive from YAML as booleans).
JIT_COMPILE = ("auto", "true", "false")


@dataclass
class ReportConfig:
    """`hw4-report`: which homework parent run to report on, and where to write."""

    parent: Optional[str] = None  # null = the latest hw4-homework run of tracking.experiment
    out: str = "reports"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Each app's primary config (conf/<name>.yaml) and the schema it starts from.
APP_SCHEMAS = {
    "config": Config, "scratch": ScratchConfig, "compare": CompareConfig, "report": ReportConfig,
    "promote": PromoteConfig, "clean": CleanConfig,
}  # fmt: skip


def register_configs(*apps: str) -> None:
    """Store the schemas of `apps` (all when none is named) in Hydra's ConfigStore. A console
    script registers its own only: Hydra deep-copies the whole store for every config group
    `--help` lists, so each schema more costs every command's help."""
    cs = ConfigStore.instance()
    for app in apps or APP_SCHEMAS:
        cs.store(name=f"{app}_schema", node=APP_SCHEMAS[app])
        if app == "config":
            # Not in the model group: a schema is not a model to choose (model=glob(*), --help).
            cs.store(name="model_schema", node=ModelConfig, package="model")
            cs.store(name="lenet_schema", node=LenetConfig, package="model")
    # A short random id, drawn once per launch (Hydra copies resolver caches into every job's
    # config): sweep folders started in the same second stay apart.
    OmegaConf.register_new_resolver("hw4.launch_id", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)
    # Optuna's direction from tracking.objective (conf/hparams_search/optuna_lr.yaml).
    OmegaConf.register_new_resolver("hw4.direction", objective_direction, replace=True)


def objective_problem(objective: str) -> Optional[str]:
    if objective not in names.OBJECTIVES:
        return f"tracking.objective must be one of {', '.join(names.OBJECTIVES)}, got {objective}"
    return None


def objective_direction(objective: str) -> str:
    problem = objective_problem(objective)
    if problem:
        raise ConfigError(problem)
    return names.OBJECTIVES[objective]


# The preset groups conf/config.yaml's defaults list holds (as `optional <group>: null`).
PRESET_GROUPS = ("experiment", "sweep", "debug")


def plain_preset_overrides(args: list[str]) -> list[str]:
    """`+experiment=X` as `experiment=X` (likewise sweep, debug): Hydra refuses to append a group
    that the defaults list already holds, and `+` was how hw4's docs chose presets before they
    joined the list, so both spellings keep working."""
    plus = tuple(f"+{group}=" for group in PRESET_GROUPS)
    return [arg[1:] if arg.startswith(plus) else arg for arg in args]


def run_app(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Run `task(cfg)` as a Hydra app composed from conf/<config_name>.yaml: the console scripts
    besides hw4-train (hw4-compare, hw4-report, hw4-promote, hw4-scratch) start through here."""
    import hydra

    from hw4 import redaction

    register_configs(config_name)
    with redaction.redacted_console():  # a tracking.uri typed on the command line, echoed by Hydra
        hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(task)()


def check_model_arguments(model: DictConfig) -> None:
    """Every key of the model's config but `_target_` must be an argument of its builder, and
    every argument without a default must be given (num_classes comes from the data): a typo,
    or a key meant for another builder, is one clear error before the run starts. Imports the
    builder's module (after TensorFlow has loaded)."""
    import inspect

    target = str(model.get("_target_", ""))
    try:
        parameters = _factory_parameters(target)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise ConfigError(f"model._target_={target!r} is not a builder function that can be imported ({exc})") from None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # **kwargs: the builder takes any key
    given = [str(key) for key in model if key != "_target_"]
    unknown = [key for key in given if key not in parameters]
    if unknown:
        raise ConfigError(
            f"model {model.get('name', '')!r}: {', '.join(unknown)} not an argument of {target} "
            f"(its arguments: {', '.join(p for p in parameters if p != 'num_classes')})"
        )
    missing = [
        name for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in given and name != "num_classes"
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]  # fmt: skip
    if missing:
        raise ConfigError(f"model {model.get('name', '')!r}: {target} needs {', '.join(missing)}")


def option_config(group: str, name: str) -> DictConfig:
    """Option `name` of `group` as conf/<group>/<name>.yaml holds it (e.g. prep "standardize"), for
    callers that name an option without composing a whole config (tests, notebooks)."""
    path = Path(CONFIG_DIR) / group / f"{name}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"{group}={name}: no such option in {path.parent} (its options: {options})")
    return cast(DictConfig, OmegaConf.load(path))  # a YAML mapping


# What a factory's annotation accepts from YAML (an int is a float too; a bool is no int).
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _factory_parameters(target: str) -> Mapping[str, Any]:
    """The parameters (inspect.Parameter) of the factory `target` names; raises ImportError,
    AttributeError, ValueError or TypeError when it names none."""
    import importlib
    import inspect

    module_name, _, function_name = target.rpartition(".")
    return inspect.signature(getattr(importlib.import_module(module_name), function_name)).parameters


def _type_name(parameter: Any) -> str:
    """A parameter's annotation as its name: a string under `from __future__ import annotations`."""
    annotation = parameter.annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def option(group: str, node: Union[DictConfig, Mapping[str, Any]], **supplied: Any) -> Any:
    """The chosen option of a factory group (conf/prep, conf/schedule): its `_target_` called by
    Hydra's instantiate with the YAML's values and what hw4 `supplied` (a schedule's: the run's
    epochs). Every key of the YAML but `_target_` and `name` (the option's name in the record) is
    an argument of the factory, of its annotated type, and the factory checks its own ranges
    (ConfigError). So a typo, a wrong type or a value out of range is one line, and `check` calls
    this before TensorFlow loads: a factory's module imports no Keras at its top."""
    import inspect

    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    values = cast("dict[str, Any]", plain)  # a YAML mapping's keys are strings
    target, name = str(values.pop("_target_", "")), values.pop("name", None)
    if not name:
        raise ConfigError(f"{group}: name is missing (every option's YAML names itself, as runs record it)")
    try:
        parameters = _factory_parameters(target)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"{group}._target_={target!r} is not a factory function that can be imported ({exc})"
        ) from None
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())  # **kwargs
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    own = [key for key in parameters if key not in supplied and parameters[key].kind not in variadic]
    unknown = [key for key in values if (key not in parameters and not open_ended) or key in supplied]
    supplied = {key: value for key, value in supplied.items() if key in parameters or open_ended}  # what it takes
    if unknown:
        raise ConfigError(
            f"{group}={name}: {', '.join(unknown)} not an argument of {target} (its arguments: {', '.join(own) or 'none'})"
        )
    missing = [key for key in own if parameters[key].default is inspect.Parameter.empty and key not in values]
    if missing:
        raise ConfigError(f"{group}={name}: {target} needs {', '.join(missing)} (set them in its YAML)")
    for key, value in values.items():
        if key not in parameters:  # taken by **kwargs: any type
            continue
        type_name = _type_name(parameters[key])
        allowed = _TYPES.get(type_name)
        if allowed and (not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool))):
            raise ConfigError(f"{group}.{key} must be {type_name}, got {value!r}")
    try:
        return instantiate({"_target_": target, **values}, **supplied)
    except InstantiationException as exc:  # Hydra wraps what the factory raised
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


OPTION_GROUPS = ("prep", "schedule")  # the groups whose options are factories (`option`)


def typed_options(cfg: DictConfig) -> DictConfig:
    """`cfg`, or a copy of it whose option values typed as integers where their factory takes a
    float (`schedule.min_fraction=0`) are floats: runs record and hash them as the typed schema
    before the options were factories did (`0.0`), so a run's identity does not depend on how a
    number was typed. Call it on a config that passed `check`."""
    updates: dict[str, dict[str, float]] = {}
    for group in OPTION_GROUPS:
        node = cfg.get(group)
        target = str(node.get("_target_", "")) if node is not None else ""
        if "." not in target:
            continue
        parameters = _factory_parameters(target)
        for key, value in node.items():
            typed_float = key in parameters and _type_name(parameters[key]) == "float"
            if typed_float and isinstance(value, int) and not isinstance(value, bool):
                updates.setdefault(group, {})[str(key)] = float(value)
    return cast(DictConfig, OmegaConf.merge(cfg, updates)) if updates else cfg


def check_options(cfg: DictConfig, need: Callable[[bool, str], None]) -> None:
    """The prep and schedule options (their factories' own checks) and the range test's values."""
    for group, supplied in (("prep", {}), ("schedule", {"epochs": cfg.trainer.epochs})):
        try:
            option(group, cfg[group], **supplied)
        except ConfigError as problem:
            need(False, str(problem))
    f = cfg.lr_find
    need(
        0 < f.min_lr < f.max_lr and f.steps >= 10 and f.explode > 1,
        f"lr_find needs 0 < min_lr < max_lr, steps >= 10 and explode > 1, got {f.min_lr}, {f.max_lr}, {f.steps}, {f.explode}",
    )


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first value that is out of range."""
    problems = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    t, d, m, o = cfg.trainer, cfg.data, cfg.model, cfg.optimizer
    if OmegaConf.is_missing(o, "lr"):  # an optimizer YAML of the user's own without its rate
        raise ConfigError(f"optimizer {o.get('name', '')!r}: lr is missing (set optimizer.lr)")
    need(t.epochs >= 1, f"trainer.epochs must be >= 1, got {t.epochs}")
    need(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    need(t.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    need(t.threads is None or t.threads >= 1, f"trainer.threads must be >= 1, got {t.threads}")
    need(
        t.resume is None or t.checkpoint,
        "trainer.resume needs trainer.checkpoint=true (the checkpoint is what resumes)",
    )
    need(
        str(t.jit_compile).lower() in JIT_COMPILE,
        f"trainer.jit_compile must be one of {', '.join(JIT_COMPILE)}, got {t.jit_compile}",
    )
    need(
        t.early_stopping is None or t.early_stopping >= 1,
        f"trainer.early_stopping must be >= 1 epochs or null, got {t.early_stopping}",
    )
    need(t.prune_after >= 1, f"trainer.prune_after must be >= 1, got {t.prune_after}")
    need(t.verbose in (0, 1, 2), f"trainer.verbose must be 0, 1 or 2, got {t.verbose}")
    need(math.isfinite(o.lr) and o.lr > 0, f"optimizer.lr must be a positive number, got {o.lr}")
    for key in ("_target_", "name", "input_shape"):  # what hw4 itself reads from every model config
        need(key in m, f"model: {key} is missing (every model config has _target_, name and input_shape)")
    # A user's own model (--config-dir) may leave these to its builder's defaults.
    dropout, bn_momentum = m.get("dropout", 0.0), m.get("bn_momentum", 0.99)
    need(0.0 <= dropout < 1.0, f"model.dropout must be in [0, 1), got {dropout}")
    need(0.0 <= bn_momentum < 1.0, f"model.bn_momentum must be in [0, 1), got {bn_momentum}")
    need(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    n_classes = len(d.class_names)
    need(
        d.limit is None or d.limit >= n_classes,
        f"data.limit must be at least the number of classes ({n_classes}), got {d.limit}",
    )
    need(bool(cfg.tracking.experiment.strip()), "tracking.experiment must not be empty")
    problem = objective_problem(cfg.tracking.objective)
    need(problem is None, problem or "")
    check_options(cfg, need)
    if problems:
        raise ConfigError("; ".join(problems))
