"""The real services the integration tests start on loopback: PostgreSQL, `mlflow server`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


# MLflow 3's server also starts a job runner (huey, five workers: GenAI judges, trace rollups),
# which hw4 never uses: a process importing MLflow and polling, per test server.
WITHOUT_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextlib.contextmanager
def mlflow_server(*options: str, env: dict | None = None):
    """`mlflow server OPTIONS` on a free loopback port, once its /health answers: its URL."""
    port = free_port()
    server = subprocess.Popen(
        ["mlflow", "server", *options, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**(os.environ if env is None else env), **WITHOUT_JOB_RUNNER},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip  # its own group: a kill reaches uvicorn and any job runner too
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", server)
    except (RuntimeError, TimeoutError) as exc:
        server.kill()
        raise AssertionError(f"mlflow server did not start ({exc}): {server.stderr.read().decode()[-2000:]}") from exc
    try:
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a worker stuck on a connection the outage dropped
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # what is left of the group (the CLI forwards only SIGTERM)
        server.wait()


class Postgres:
    """A PostgreSQL server of the test's own, on loopback, in a temporary folder; it can be
    stopped and started again (the outage tests)."""

    def __init__(self) -> None:
        initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not initdbs:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
        self.bindir = initdbs[-1].parent
        # PostgreSQL refuses to run as root: run it as the `postgres` user, in a folder it owns.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.folder = Path(tempfile.mkdtemp(prefix="hw4-pg-"))
        self.folder.chmod(0o755)
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data, self.port = self.folder / "data", free_port()
        initialised = self.pg("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres")
        if initialised.returncode != 0 or self.start().returncode != 0:
            shutil.rmtree(self.folder, ignore_errors=True)
            pytest.skip(f"PostgreSQL could not be started here: {initialised.stderr.strip()[-300:]}")

    def pg(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args], capture_output=True, text=True, cwd=self.folder
        )

    def start(self) -> subprocess.CompletedProcess:
        return self.pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
            "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop at once, ending every client's connection (what a restart does to them)."""
        stopped = self.pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        assert stopped.returncode == 0, stopped.stderr

    def create_database(self, name: str) -> str:
        created = self.pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        assert created.returncode == 0, created.stderr
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def dump(self, name: str) -> str:
        """Everything the database holds, as SQL text."""
        dumped = self.pg("pg_dump", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        assert dumped.returncode == 0, dumped.stderr
        return dumped.stdout

    def remove(self) -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-m", "fast", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
