"""No secret in the artifact store or on the console (issue 34, section 2).

A plain `mlflow server --serve-artifacts` on loopback, reached with a password in the tracking
URI (a `/`, `:` and `?` in it, percent-encoded as a URL needs): once through
MLFLOW_TRACKING_URI for a run, once on the command line of a two-job sweep. Afterwards the
password, raw or encoded, is found nowhere hw4 sends things: the console, the server's database,
the server's artifact store (the files uploaded from the sweep folder among them).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from services import mlflow_server

from hw4 import names

pytestmark = pytest.mark.slow  # its server is on a port of its own: no need to run alone

# Random halves around the characters that a URI parser may stop at: a leak of either half shows.
HEAD, TAIL = secrets.token_hex(6), secrets.token_hex(6)
PASSWORD = f"{HEAD}/et:Pw?{TAIL}"
ENCODED = quote(PASSWORD, safe="")  # as a URL holds it (requests decodes it for Basic auth)
FORMS = (PASSWORD, ENCODED, HEAD, TAIL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server, its sqlite database and its artifact folder: one for the module."""
    root = tmp_path_factory.mktemp("secret-server")
    database, artifacts = root / "server.db", root / "artifacts"
    options = ["--backend-store-uri", f"sqlite:///{database}", "--serve-artifacts", "--artifacts-destination", str(artifacts)]  # fmt: skip
    with mlflow_server(*options) as url:
        yield url, database, artifacts


def with_password(url: str) -> str:
    return url.replace("http://", f"http://alice:{ENCODED}@")


def hw4_train(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """`hw4-train ARGS`, which must succeed; what it printed (stdout and stderr)."""
    result = subprocess.run(["hw4-train", *args], cwd=cwd, env=env, capture_output=True, text=True)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-3000:]
    return printed


def leaks(text: str | bytes) -> list[str]:
    """The forms of the password found in `text`."""
    found = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return [form for form in FORMS if form in found]


def dump(database: Path) -> str:
    """Every row of every table of the server's database, as SQL."""
    with sqlite3.connect(database) as connection:
        return "\n".join(connection.iterdump())


def uploaded(artifacts: Path) -> dict[str, bytes]:
    return {str(path.relative_to(artifacts)): path.read_bytes() for path in artifacts.rglob("*") if path.is_file()}


def test_a_password_in_the_tracking_uri_is_found_nowhere(server, tiny_data_dir, tmp_path):
    """A run with the URI in MLFLOW_TRACKING_URI, then a sweep of two jobs with it on the command
    line (Hydra keeps the command line in every job's .hydra/ and its launcher logs each job's
    overrides): the password is found in none of what hw4 uploads, stores or prints."""
    url, database, artifacts = server
    quick = [f"data.dir={tiny_data_dir}", "model=mlp", "trainer.epochs=1", "trainer.verbose=0"]
    # Not this process's MLFLOW_* settings (importing hw4 here sets some): hw4-train sets its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    printed = hw4_train(
        *quick, "tracking.experiment=from-env", cwd=tmp_path, env={**env, "MLFLOW_TRACKING_URI": with_password(url)}
    )
    sweep_dir = tmp_path / "multirun"
    printed += hw4_train(
        "-m", *quick, "tracking.log_model=false", "optimizer.lr=0.001,0.01", f"tracking.uri={with_password(url)}",
        "tracking.experiment=given",
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, env=env,
    )  # fmt: skip

    # A run that fails: Hydra itself prints the failed job's overrides, tracking.uri among them.
    failed = subprocess.run(
        ["hw4-train", *quick, "data.limit=100000", f"tracking.uri={with_password(url)}"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode == 1 and "Error executing job with overrides" in failed.stderr, failed.stderr[-3000:]
    printed += failed.stdout + failed.stderr

    # What the user sees still names the server, without its password.
    assert "alice:***@127.0.0.1" in printed
    assert not leaks(printed), printed[-3000:]
    store = dump(database)
    assert "alice:***@127.0.0.1" in store  # tracking.uri is a param of every run
    assert not leaks(store)
    files = uploaded(artifacts)
    configs = [name for name in files if name.endswith("config/overrides.yaml")]
    assert len(configs) == 3, sorted(files)  # Hydra's saved configs of the run and of both sweep jobs
    assert any(name.endswith(names.SWEEP_DEFINITION) for name in files), sorted(files)
    assert any(name.endswith("MLmodel") for name in files), sorted(files)  # the run's logged model
    assert {name: leaks(data) for name, data in files.items() if leaks(data)} == {}
    # What went up redacted is in the sweep folder as typed: the user's own disk.
    for job in ("0", "1"):
        assert ENCODED in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()
