"""A console script run in the test's own process: its entrypoint function, called as the script
calls it, with the command line in sys.argv, from a working folder of the test's choice.

A command that only reads the store and prints (hw4-compare, hw4-promote, hw4-clean) costs about
5 s of imports as a process of its own and a fraction of a second here. What needs a process of its
own stays one: signals, exit statuses of a killed run, imports (`--help`), the installed scripts'
wiring (tests/test_config.py::test_each_command_has_a_help_page_of_its_own). hw4-train's console
script (`hw4.train:cli`) ends its process at once (`system.exit_now`), so a test runs its Hydra
app, `hw4.train.main`, here: without the console's redaction and the stop's exit status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import pytest


@dataclasses.dataclass(frozen=True)
class Ran:
    """What the command did: its exit status and what it printed (as subprocess.run's result)."""

    returncode: int
    stdout: str
    stderr: str


def run(main: Callable[[], object], name: str, *args: str, cwd: Path) -> Ran:
    """`name ARGS` run from `cwd` by calling `main()`; a SystemExit is its exit status (Hydra
    reports an hw4 error as its one line on stderr and exit 1)."""
    out, err = io.StringIO(), io.StringIO()
    argv, folder = sys.argv, os.getcwd()
    sys.argv = [name, *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                status = 0
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if not isinstance(exit_.code, (int, type(None))):  # as the interpreter prints it
                    print(exit_.code, file=sys.stderr)
    finally:
        sys.argv = argv
        os.chdir(folder)
    return Ran(status, out.getvalue(), err.getvalue())


def hw4_train(command: Sequence[str], *, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Ran:
    """`hw4-train [-m] OVERRIDES` (`command`, the program's name first) launched from `cwd`,
    through hw4.api in this process: `api.sweep` for what hw4-train would run as a sweep (-m, a
    search preset), else `api.train`; no new interpreter importing TensorFlow and MLflow. The
    test stays in `cwd`, as after monkeypatch.chdir. A refusal raises its error (the console
    would print it and exit 1); what it printed comes back."""
    from hw4 import api

    monkeypatch.chdir(cwd)
    overrides = [arg for arg in command[1:] if arg != "-m"]
    _, a_sweep = api._command_line(overrides)  # how api.train refuses a sweep: the same question
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # Hydra's handlers keep these
        (api.sweep if "-m" in command or a_sweep else api.train)(overrides)
    return Ran(0, out.getvalue(), err.getvalue())
