"""The shape of the code (issue 14, item 11): a short entrypoint, one definition of each name."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from hw4 import names, train

PACKAGE = Path(names.__file__).parent


def test_the_entrypoint_reads_as_a_short_list_of_steps():
    lines = inspect.getsource(train.main.__wrapped__ if hasattr(train.main, "__wrapped__") else train.main)
    assert len(lines.splitlines()) <= 60


def test_tracking_names_are_defined_once():
    """MLflow's parent tag and the metric names live in hw4/names.py; other modules use them."""
    literals = [r"mlflow\.parentRunId", r"['\"]val_categorical_accuracy['\"]", r"['\"]best_val_categorical_accuracy['\"]"]
    for path in PACKAGE.glob("*.py"):
        if path.name == "names.py":
            continue
        text = path.read_text()
        for literal in literals:
            assert not re.search(literal, text), f"{path.name} spells {literal} itself"


def test_every_console_script_but_hw4_train_starts_through_one_helper():
    from hw4 import clean, compare, config, promote, report, scratch

    for module in (clean, compare, promote, report, scratch):
        assert "config.run_app(" in inspect.getsource(module.main), module.__name__
    assert "hydra.main(" in inspect.getsource(config.run_app)
