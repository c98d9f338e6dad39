"""Config composition: presets, schema checks and range checks, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    ],
)
def test_schema_rejects_bad_overrides(override, message):
    with pytest.raises(ConfigCompositionException) as caught:
        make(override)
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
        ("trainer.precision=fp8", "trainer.precision must be one of float32, mixed_bfloat16"),
        (("trainer.resume=abc", "trainer.checkpoint=false"), "trainer.resume needs trainer.checkpoint"),
        ("data.val_fraction=0", r"data.val_fraction must be in \(0, 1\)"),
        ("data.val_fraction=1.5", r"data.val_fraction must be in \(0, 1\)"),
        ("data.limit=5", "data.limit must be at least the number of classes"),
        ("tracking.experiment=' '", "tracking.experiment must not be empty"),
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
