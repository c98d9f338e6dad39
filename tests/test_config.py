"""Config composition: presets, schema checks and range checks, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from hw4 import config
from hw4.config import CONFIG_DIR, register_configs
from hw4.errors import ConfigError

config.register_configs()


def make(*overrides: str):
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize(
    "preset, model, lr, epochs",
    [
        ("part3_mlp", "mlp", 1e-2, 20),
        ("part4_lenet", "lenet", 1e-2, 10),
        ("part4_lenet_dropout", "lenet_dropout", 1e-3, 15),
        ("part4_lenet_bn", "lenet_bn", 1e-2, 15),
    ],
)
def test_experiment_presets_match_the_homework(preset, model, lr, epochs):
    cfg = make(f"experiment={preset}")
    assert cfg.model.name == model
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", lr)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (epochs, 128)
    assert cfg.data.val_fraction == 0.2
    config.check(cfg)


EXPERIMENT_PRESETS = sorted(p.stem for p in (Path(config.CONFIG_DIR) / "experiment").glob("*.yaml"))


def test_the_experiment_folder_holds_presets():
    assert EXPERIMENT_PRESETS  # else the test below would check none


@pytest.mark.parametrize("preset", EXPERIMENT_PRESETS)
def test_every_experiment_preset_composes_and_passes_the_range_checks(preset):
    """Every file in conf/experiment/, the ones added after the homework's four too."""
    config.check(make(f"experiment={preset}"))


def test_command_line_overrides_beat_presets():
    cfg = make("experiment=part4_lenet", "optimizer.lr=0.003", "trainer.epochs=2")
    assert (cfg.optimizer.lr, cfg.trainer.epochs) == (0.003, 2)


def test_data_dir_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("HW4_DATA_DIR", "/some/where")
    assert make().data.dir == "/some/where"
    monkeypatch.delenv("HW4_DATA_DIR")
    assert make().data.dir is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epoch=3", "Key 'epoch' not in 'TrainerConfig'"),  # typo'd key
        ("trainer.epochs=three", "Value 'three' of type 'str' could not be converted to Integer"),
        ("model=resnet", "Could not find 'model/resnet'"),  # unknown model
        ("optimizer=adagrad", "Could not find 'optimizer/adagrad'"),
        ("schedule=linear", "Could not find 'schedule/linear'"),  # conf/ is the one list of options
        ("prep=whiten", "Could not find 'prep/whiten'"),
        # The switches typed as Choices: refused while Hydra composes, the allowed values named.
        ("trainer.precision=fp8", "Invalid value 'fp8', expected one of [float32, mixed_bfloat16]"),
        ("trainer.prune=mean", "Invalid value 'mean', expected one of [none, median]"),
        # An option takes its own arguments only: one_cycle ramps up by itself.
        (("schedule=one_cycle", "schedule.warmup_epochs=2"), "Key 'warmup_epochs' is not in struct"),
        (("prep=scale", "prep.max_shift=2"), "Key 'max_shift' is not in struct"),
    ],
)
def test_schema_rejects_bad_overrides(override, message):
    with pytest.raises(ConfigCompositionException) as caught:
        make(*override) if isinstance(override, tuple) else make(override)
    assert message in f"{caught.value} {caught.value.__cause__}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epochs=0", "trainer.epochs must be >= 1"),
        ("trainer.epochs=-2", "trainer.epochs must be >= 1"),
        ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
        ("optimizer.lr=0", "optimizer.lr must be a positive number"),
        ("optimizer.lr=-0.1", "optimizer.lr must be a positive number"),
        ("optimizer.lr=nan", "optimizer.lr must be a positive number"),
        ("model.dropout=1.0", r"model.dropout must be in \[0, 1\)"),
        ("model.dropout=-0.5", r"model.dropout must be in \[0, 1\)"),
        ("model.bn_momentum=1.5", r"model.bn_momentum must be in \[0, 1\)"),
        ("trainer.threads=0", "trainer.threads must be >= 1"),
        ("trainer.jit_compile=sometimes", "trainer.jit_compile must be one of auto, true, false, got sometimes"),
        (("trainer.resume=abc", "trainer.checkpoint=false"), "trainer.resume needs trainer.checkpoint"),
        ("data.val_fraction=0", r"data.val_fraction must be in \(0, 1\)"),
        ("data.val_fraction=1.5", r"data.val_fraction must be in \(0, 1\)"),
        ("data.limit=5", "data.limit must be at least the number of classes"),
        ("tracking.experiment=' '", "tracking.experiment must not be empty"),
        # Each prep and schedule option's ranges, checked by its factory (hw4.data, hw4.training.schedules).
        (("prep=augment", "prep.max_shift=9"), "prep.max_shift must be 0 to 8 pixels, got 9"),
        (("schedule=cosine", "schedule.warmup_epochs=20"), "schedule.warmup_epochs must be 0 to trainer.epochs - 1"),
        (("schedule=constant", "schedule.warmup_epochs=-1"), "schedule.warmup_epochs must be 0 to trainer.epochs - 1"),
        (("schedule=cosine", "schedule.min_fraction=2"), r"schedule.min_fraction must be in \[0, 1\], got 2"),
        (("schedule=step", "schedule.every=0"), "schedule.every must be >= 1 and factor in"),
        (("schedule=step", "schedule.factor=1.5"), "schedule.every must be >= 1 and factor in"),
        (("schedule=one_cycle", "schedule.warmup_fraction=1"), r"schedule.warmup_fraction must be in \[0, 1\)"),
        (("schedule=one_cycle", "schedule.end_divisor=0.5"), "schedule.start_divisor and end_divisor must be >= 1"),
        # What no option's schema types (the options are the factories' YAML): the factory's annotations.
        (("schedule=step", "schedule.every=abc"), "schedule.every must be int, got 'abc'"),
        (("prep=augment", "prep.flip=3"), "prep.flip must be bool, got 3"),
        # A key no argument of the factory takes (`+` adds it): named with the arguments it has.
        (
            ("schedule=one_cycle", "+schedule.warmup_epochs=2"),
            r"schedule=one_cycle: warmup_epochs not an argument of hw4.training.schedules.one_cycle \(its arguments: "
            r"warmup_fraction, start_divisor, end_divisor\)",
        ),
        (
            ("prep=standardize", "+prep.max_shift=2"),
            "prep=standardize: max_shift not an argument of hw4.data.standardize",
        ),
        (
            ("schedule=cosine", "~schedule.min_fraction"),
            "schedule=cosine: hw4.training.schedules.cosine needs min_fraction",
        ),
        (("schedule=cosine", "~schedule.name"), "schedule: name is missing"),
        (("schedule=cosine", "schedule._target_=hw4.nowhere.cosine"), "schedule._target_='hw4.nowhere.cosine' is not"),
    ],
)
def test_out_of_range_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        config.check(make(*override) if isinstance(override, tuple) else make(override))


def test_help_and_cfg_do_not_import_tensorflow_or_mlflow():
    code = (
        "import sys; sys.argv = ['hw4-train', '--cfg', 'job', '+experiment=part4_lenet_bn'];"
        "import hw4.train\n"
        "try: hw4.train.main()\n"
        "except SystemExit: pass\n"
        "heavy = {'tensorflow', 'keras', 'mlflow'} & set(sys.modules)\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "name: lenet_bn" in result.stdout


def test_schemas_are_not_selectable_models():
    """model=glob(*) and --help list the group's options: a schema must not be one of them."""
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("model")
    assert options == ["lenet", "lenet_bn", "lenet_dropout", "mlp"]
    help_text = subprocess.run(["hw4-train", "--help"], capture_output=True, text=True).stdout
    assert "model: lenet, lenet_bn, lenet_dropout, mlp" in help_text and "schema" not in help_text


@pytest.mark.parametrize(
    "command", ["hw4-train", "hw4-compare", "hw4-promote", "hw4-report", "hw4-scratch", "hw4-clean"]
)
def test_each_command_has_a_help_page_of_its_own(command):
    result = subprocess.run([command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith(f"{command}: ") and "powered by Hydra" not in result.stdout
    assert "== Examples ==" in result.stdout and f"\n{command}" in result.stdout
    assert "schema" not in result.stdout and "Traceback" not in result.stderr


SCHEMA_OF = {
    "config.yaml": config.Config, "compare.yaml": config.CompareConfig, "promote.yaml": config.PromoteConfig,
    "report.yaml": config.ReportConfig, "clean.yaml": config.CleanConfig, "scratch.yaml": config.ScratchConfig,
}  # fmt: skip
GROUP_SCHEMA = {"model": config.LenetConfig, "optimizer": config.OptimizerConfig, "data": config.DataConfig,
                "trainer": config.TrainerConfig, "tracking": config.TrackingConfig}  # fmt: skip


def repeated_defaults(values, schema, where: str) -> list[str]:
    """The keys of `values` (a YAML mapping) set to the default its schema already has."""
    import dataclasses

    from omegaconf import MISSING, DictConfig

    repeated = []
    for f in dataclasses.fields(schema):
        if f.name not in values or isinstance(values[f.name], DictConfig):
            continue
        default = f.default if f.default is not dataclasses.MISSING else MISSING
        if default is not MISSING and values[f.name] == default:
            repeated.append(f"{where}: {f.name}")
    return repeated


def test_each_default_is_set_in_one_place():
    """Issue 23, item 5: a default lives in its schema (hw4/config.py); no YAML repeats it."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(config.CONFIG_DIR)
    repeated = []
    for name, schema in SCHEMA_OF.items():
        values = OmegaConf.load(conf / name)
        repeated += repeated_defaults(values, schema, name)
        for group, group_schema in GROUP_SCHEMA.items():  # e.g. scratch.yaml's tracking: block
            if group in values and group in {f for f in schema.__dataclass_fields__}:
                repeated += repeated_defaults(values[group], group_schema, f"{name} {group}")
    for group in ("model", "optimizer"):
        for path in sorted((conf / group).glob("*.yaml")):
            repeated += repeated_defaults(OmegaConf.load(path), GROUP_SCHEMA[group], f"{group}/{path.name}")
    assert not repeated, repeated
    for group in ("data", "trainer", "tracking"):  # these groups are their schemas
        assert not list((conf / group).glob("*.yaml")), f"conf/{group}/ repeats {GROUP_SCHEMA[group].__name__}"


@pytest.mark.parametrize("spelling", ["experiment=part4_lenet_bn", "+experiment=part4_lenet_bn"])
def test_presets_are_chosen_with_or_without_a_plus(spelling):
    cfg = make(*config.plain_preset_overrides([spelling, "+sweep=lr"]))
    assert (cfg.model.name, cfg.trainer.epochs) == ("lenet_bn", 15)


def test_debug_fast_is_a_short_quiet_run_over_any_preset():
    cfg = make("experiment=part4_lenet_bn", "debug=fast")
    assert (cfg.model.name, cfg.trainer.epochs, cfg.trainer.verbose) == ("lenet_bn", 2, 0)
    assert (cfg.data.limit, cfg.tracking.log_model) == (400, False)
    config.check(cfg)


@pytest.mark.parametrize(
    "objective, direction", [("best_val_categorical_accuracy", "maximize"), ("best_val_loss", "minimize")]
)
def test_the_objective_sets_optunas_direction(objective, direction):
    pytest.importorskip("optuna", reason="the optuna extra is not installed")
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hparams_search=optuna_lr", f"tracking.objective={objective}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.direction == direction


def test_the_objective_is_a_validation_metric():
    with pytest.raises(
        ConfigError, match="tracking.objective must be one of best_val_categorical_accuracy, best_val_loss"
    ):
        config.check(make("tracking.objective=test_categorical_accuracy"))


def test_an_optimizer_without_a_learning_rate_is_one_clear_error():
    """OptimizerConfig.lr has no default: each optimizer's YAML sets its own."""
    cfg = make()
    cfg.optimizer.lr = "???"  # an optimizer YAML of the user's own that sets none
    with pytest.raises(ConfigError, match="optimizer 'adam': lr is missing"):
        config.check(cfg)


# --- issue 36: prep and schedule are groups of factories; the trainer's switches are typed -------

FACTORY_GROUPS = {
    group: sorted(p.stem for p in (Path(config.CONFIG_DIR) / group).glob("*.yaml")) for group in ("prep", "schedule")
}


@pytest.mark.parametrize("group, name", [(g, n) for g, names in FACTORY_GROUPS.items() for n in names])
def test_every_option_in_conf_is_its_factory_and_passes_the_checks(group, name):
    """conf/prep and conf/schedule are the one list of options: each file composes, names itself
    (the name runs record) and its factory accepts its arguments."""
    cfg = make(f"{group}={name}")
    assert cfg[group].name == name
    config.check(cfg)


def test_the_default_options_are_scale_and_constant():
    cfg = make()
    assert (cfg.prep.name, cfg.schedule.name, cfg.schedule.warmup_epochs) == ("scale", "constant", 0)


def test_checking_every_option_loads_no_keras():
    """`check` calls each option's factory before TensorFlow loads: their modules import no Keras
    at the top (hw4.training.schedules imports it inside the shapes)."""
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from hw4 import config\n"
        "config.register_configs()\n"
        "with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base='1.3'):\n"
        f"    for group, names in {FACTORY_GROUPS!r}.items():\n"
        "        for name in names:\n"
        "            config.check(compose('config', overrides=[f'{group}={name}']))\n"
        "heavy = {'tensorflow', 'keras', 'jax'} & set(sys.modules)\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


OWN_PREPARATION = '''
from hw4.data import Preparation


def centered(*, center: float) -> Preparation:
    """Scaled, then minus `center`: recorded as a mean (and a std of 1), which the served model reproduces."""
    if not 0 <= center <= 1:
        from hw4.errors import ConfigError

        raise ConfigError(f"prep.center must be in [0, 1], got {center}")

    def fit(splits):
        for x in (splits.x_train, splits.x_val, splits.x_test):
            x -= center
        return {"mean": center, "std": 1.0}

    return Preparation(fit=fit)
'''


@pytest.fixture
def own_options(tmp_path, monkeypatch):
    """A user's config folder with a preparation of their own: one module, one YAML."""
    from conftest import own_option

    yaml = "_target_: my_preps.centered\nname: centered\ncenter: 0.5\n"
    return own_option(tmp_path, monkeypatch, group="prep", module="my_preps", source=OWN_PREPARATION, yaml=yaml)


def test_a_preparation_of_ones_own_is_one_function_and_one_yaml(own_options, tiny_data_dir):
    from hw4 import data

    searchpath = f"hydra.searchpath=[file://{own_options}]"
    cfg = make(searchpath, "prep=centered")
    config.check(cfg)
    raw = data.load(tiny_data_dir, n_classes=10)
    plain = data.prepare(raw, [784], n_classes=10, limit=200)
    centered = data.prepare(raw, [784], n_classes=10, limit=200, prep=cfg.prep)
    np.testing.assert_allclose(centered.x_train, plain.x_train - 0.5)
    np.testing.assert_allclose(centered.x_test, plain.x_test - 0.5)
    assert centered.preparation == {"name": "centered", "mean": 0.5, "std": 1.0}
    assert data.preparation(cfg.prep).augment is None
    with pytest.raises(ConfigError, match=r"prep.center must be in \[0, 1\], got 2"):  # its own check
        config.check(make(searchpath, "prep=centered", "prep.center=2"))


def test_hw4_train_finds_an_option_in_a_config_dir_of_ones_own(own_options, tmp_path):
    result = subprocess.run(
        ["hw4-train", "--config-dir", str(own_options), "prep=centered", "--cfg", "job"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "_target_: my_preps.centered" in result.stdout and "center: 0.5" in result.stdout


def test_hw4_train_refuses_a_value_no_choice_has_before_anything_runs(tmp_path):
    """The real command: exit 1 and Hydra's report, whose first line names the override and the
    next the allowed values; no traceback, no store, no run."""
    result = subprocess.run(
        ["hw4-train", "trainer.precision=fp8", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Error merging override trainer.precision=fp8", result.stderr
    assert lines[1] == "Invalid value 'fp8', expected one of [float32, mixed_bfloat16]", result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "mlflow.db").exists()


# What runs recorded before prep and schedule were factories (issue 36): every field of the one
# PrepConfig and ScheduleConfig that each option's YAML left at its neutral value.
NEUTRAL_BEFORE = {
    "prep.max_shift": 0, "prep.flip": False, "schedule.warmup_epochs": 0, "schedule.min_fraction": 0.0,
    "schedule.every": 1, "schedule.factor": 1.0, "schedule.warmup_fraction": 0.0, "schedule.start_divisor": 1.0,
    "schedule.end_divisor": 1.0,
}  # fmt: skip
RECORDED_BEFORE = {
    "prep=scale": {"prep.name": "scale"},
    "prep=standardize": {"prep.name": "standardize"},
    "prep=augment": {"prep.name": "augment", "prep.max_shift": 2, "prep.flip": True},
    "schedule=constant": {"schedule.name": "constant"},
    "schedule=cosine": {"schedule.name": "cosine"},
    "schedule=step": {"schedule.name": "step", "schedule.every": 5, "schedule.factor": 0.5},
    "schedule=one_cycle": {"schedule.name": "one_cycle", "schedule.warmup_fraction": 0.3,
                           "schedule.start_divisor": 25.0, "schedule.end_divisor": 250000.0},
}  # fmt: skip


def recorded_params(cfg) -> dict:
    """The params a run records of `cfg`, as hw4.train.run types and hw4.steps.run_params flattens
    them (no data digest)."""
    from omegaconf import OmegaConf

    from hw4 import config, tracking

    return tracking.redact_params(tracking.flatten(OmegaConf.to_container(config.typed_options(cfg), resolve=True)))


@pytest.mark.parametrize("override", list(RECORDED_BEFORE))
def test_runs_recorded_before_the_options_were_factories_keep_their_identity(override):
    """A continued sweep finds its earlier runs by their identity (names.config_key, job_key,
    plan_key): the params of each existing option hash as the union schema's did, so those runs
    are not trained again."""
    from hw4 import names

    now = recorded_params(make(override, "trainer.prune=median"))
    group = override.split("=")[0]
    other = "schedule" if group == "prep" else "prep"
    before = {k: v for k, v in now.items() if not k.startswith((f"{group}.", f"{other}."))}
    before.update(NEUTRAL_BEFORE)
    before.update({"prep.name": "scale", "schedule.name": "constant", **RECORDED_BEFORE[override]})
    before.update({"trainer.precision": "float32", "trainer.prune": "median"})  # the plain strings of then
    for key_of in (names.config_key, names.job_key, names.plan_key):
        assert key_of(now) == key_of(before), key_of.__name__
    assert now[f"{group}.name"] == RECORDED_BEFORE[override][f"{group}.name"]


def test_the_typed_switches_are_recorded_as_their_plain_strings():
    """MLflow records str(value): a Choice records its value, as the string field did."""
    params = recorded_params(make("trainer.precision=mixed_bfloat16", "trainer.prune=median"))
    assert (str(params["trainer.precision"]), str(params["trainer.prune"])) == ("mixed_bfloat16", "median")
    assert type(params["trainer.precision"]) is str  # redacted to a plain string
    assert recorded_params(make())["trainer.prune"] is None  # null: never, recorded as before


@pytest.mark.parametrize(
    "typed, as_in_its_yaml",
    [
        (["schedule=cosine", "schedule.min_fraction=0"], ["schedule=cosine"]),
        (["schedule=one_cycle", "schedule.start_divisor=25"], ["schedule=one_cycle"]),
        (["schedule=step", "schedule.factor=1"], ["schedule=step", "schedule.factor=1.0"]),
    ],
)
def test_a_float_typed_as_an_integer_keeps_the_runs_identity(typed, as_in_its_yaml):
    """`schedule.min_fraction=0` is the float its factory takes: recorded as 0.0, as the typed
    schema recorded it before the options were factories, so it is the same configuration (a
    continued sweep finds its runs, a resume is not refused)."""
    from hw4 import names

    params, same = recorded_params(make(*typed)), recorded_params(make(*as_in_its_yaml))
    assert params == same
    assert names.config_key(params) == names.config_key(same)


def test_a_factory_that_takes_keyword_arguments_or_no_epochs_is_an_option(tmp_path, monkeypatch):
    """A user's schedule need not take `epochs` (hw4 passes it only where it is an argument), and
    one with **kwargs takes any key of its YAML: no one-line refusal, no traceback."""
    from hw4 import config

    (tmp_path / "open_schedules.py").write_text(
        "def flat(*, level: float):\n    return ('flat', level)\n\n"
        "def anything(**settings):\n    return ('anything', settings)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    flat = {"_target_": "open_schedules.flat", "name": "flat", "level": 0.5}
    assert config.option("schedule", flat, epochs=3) == ("flat", 0.5)
    anything = {"_target_": "open_schedules.anything", "name": "anything", "rate": 2}
    assert config.option("schedule", anything, epochs=3) == ("anything", {"rate": 2, "epochs": 3})
    with pytest.raises(ConfigError, match="level not an argument|needs level"):
        config.option("schedule", {"_target_": "open_schedules.flat", "name": "flat"}, epochs=3)
