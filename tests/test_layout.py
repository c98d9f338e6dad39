"""The shape of the code: who may import whom (docs/layout.md), one definition of each name."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hw4 import names

PACKAGE = Path(names.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def hw4_imports(path: Path) -> set[str]:
    """The hw4 modules `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hw4"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hw4")}
    return found


# (importer prefix, what it may not import, why)
RULES = [
    ("hw4.runtime", ("hw4.sweep", "hw4.commands", "hw4.train", "hw4.steps", "hw4.tracking"),
     "process plumbing knows nothing of runs, sweeps or commands"),
    ("hw4.sweep", ("hw4.commands", "hw4.train", "hw4.steps"), "the sweep serves jobs; it does not run them"),
    ("hw4.commands", ("hw4.train", "hw4.steps", "hw4.sweep.callback"), "commands read the record; they do not train"),
    ("hw4.ranking", ("hw4.tracking", "hw4.runs"), "ranking works on records already read (hw4.runs reads them)"),
]  # fmt: skip


@pytest.mark.parametrize("importer, forbidden, why", RULES)
def test_each_layer_imports_only_the_layers_below_it(importer, forbidden, why):
    for path in MODULES:
        name = module_name(path)
        if not name.startswith(importer):
            continue
        wrong = {m for m in hw4_imports(path) if m.startswith(forbidden)}
        assert not wrong, f"{name} imports {sorted(wrong)}: {why}"


def test_ranking_imports_no_mlflow():
    """hw4.ranking works on values: no MLflow import in it (at the top or inside a function), and
    importing it loads none through anything else."""
    tree = ast.parse((PACKAGE / "ranking.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in imported if m.split(".")[0] == "mlflow"}, sorted(imported)
    code = "import sys, hw4.ranking; sys.exit('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "import hw4.ranking loads MLflow"


def test_the_training_core_imports_no_sweep_launcher_or_command():
    """The modules at the top of hw4/ are the training core: a job may use the job side of a
    sweep, never its launcher side or a console script."""
    core = [p for p in MODULES if p.parent == PACKAGE and p.name not in ("__init__.py",)]
    for path in core:
        wrong = {m for m in hw4_imports(path) if m.startswith(("hw4.commands", "hw4.sweep.callback"))}
        if path.name == "train.py":  # the entrypoint's exit status comes from the launcher side
            wrong -= {"hw4.sweep.callback", "hw4.sweep"}
        if path.name == "api.py":  # the Python entrypoint: a sweep's result and hw4-compare's table
            wrong -= {"hw4.sweep.callback", "hw4.sweep.callback.MlflowSweepCallback", "hw4.commands",
                      "hw4.commands.compare"}  # fmt: skip
        assert not wrong, f"{path.name} imports {sorted(wrong)}"


def test_every_module_says_what_it_is_for():
    for path in MODULES:
        assert ast.get_docstring(ast.parse(path.read_text())), f"{module_name(path)} has no docstring"


def test_tracking_names_are_defined_once():
    """MLflow's parent tag and the metric names live in hw4/names.py; other modules use them."""
    literals = [
        r"mlflow\.parentRunId",
        r"['\"]val_categorical_accuracy['\"]",
        r"['\"]best_val_categorical_accuracy['\"]",
    ]
    for path in MODULES:
        if path.name == "names.py":
            continue
        text = path.read_text()
        for literal in literals:
            assert not re.search(literal, text), f"{module_name(path)} spells {literal} itself"


def test_every_console_script_but_hw4_train_starts_through_one_helper():
    from hw4 import config
    from hw4.commands import clean, compare, promote, report, scratch

    for module in (clean, compare, promote, report, scratch):
        assert "config.run_app(" in inspect.getsource(module.main), module.__name__
    assert "hydra.main(" in inspect.getsource(config.run_app)
