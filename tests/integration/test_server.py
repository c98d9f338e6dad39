"""Beyond one machine: a shared tracking server and sweeps on a Ray cluster.

- `mlflow server` on a real PostgreSQL, artifacts served by the server. The PostgreSQL server is
  started by the test on loopback in a temporary folder; the tests skip, with the reason, where
  PostgreSQL or its Python driver is not installed (.ci/run installs both).
- A Ray cluster: a head started by the test on loopback, joined through Ray Client (`ray://`),
  its sweep jobs logging to that server. Skips where the `ray` extra is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from services import free_port, mlflow_server

# One worker runs the module: its PostgreSQL, servers and Ray head (module fixtures) start once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("server")]


@pytest.fixture(scope="module")
def postgres_uri(postgres):
    return postgres.create_database("mlflow")


@pytest.fixture(scope="module")
def tracking_server(postgres_uri, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("served-artifacts")
    options = ["--backend-store-uri", postgres_uri, "--serve-artifacts", "--artifacts-destination", str(artifacts)]
    with mlflow_server(*options) as url:
        yield url, artifacts


# Ray's own failures to start the server a Ray Client connects to (not hw4's).
RAY_CLIENT_SERVER_FAILED = re.compile(r"ZombieProcess|Starting Ray client server failed|ray client server")
ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
READER_PASSWORD = "reader-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def auth_server(postgres_uri, tmp_path_factory):
    """`mlflow server --app-name basic-auth` on the same PostgreSQL: new users may read nothing
    until they are granted it (default_permission = NO_PERMISSIONS)."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (the server extra)")
    folder = tmp_path_factory.mktemp("auth")
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder}/basic_auth.db\n"
        "admin_username = admin\n"
        f"admin_password = {ADMIN_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    secret = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with mlflow_server(
        "--app-name", "basic-auth", "--backend-store-uri", postgres_uri,
        "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
        env={**os.environ, **secret},
    ) as url:  # fmt: skip
        yield url, folder / "artifacts"


def as_user(username: str | None, password: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    if username:
        env.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
    return env


def test_an_auth_server_stores_a_users_full_run_and_refuses_strangers_and_users_without_permission(
    auth_server, tiny_data_dir, tmp_path
):
    """A stranger is refused; a user with credentials trains a full run (LeNet-5, its model logged)
    whose files the server stores, read back by hw4-compare; a user without permission reads nothing."""
    url, artifacts_root = auth_server
    train = ["hw4-train", "model=lenet", "trainer.epochs=2", "trainer.verbose=0", f"data.dir={tiny_data_dir}",
             f"tracking.uri={url}", "tracking.experiment=secured"]  # fmt: skip
    compare = ["hw4-compare", f"tracking.uri={url}", "tracking.experiment=secured", "out=figs", "group=false"]
    admin, reader = as_user("admin", ADMIN_PASSWORD), as_user("reader", READER_PASSWORD)

    # No credentials: refused, in one line that says what to set; nothing is created.
    stranger = subprocess.run(train, cwd=tmp_path, env=as_user(None), capture_output=True, text=True)
    assert stranger.returncode == 1
    assert "refused the request (401): set MLFLOW_TRACKING_USERNAME" in stranger.stderr
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)

    # With credentials: a full run, read back by hw4-compare.
    trained = subprocess.run(train, cwd=tmp_path, env=admin, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-3000:]
    compared = subprocess.run(compare, cwd=tmp_path, env=admin, capture_output=True, text=True)
    assert compared.returncode == 0, compared.stderr[-2000:]
    client = MlflowClient(url)
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    try:
        experiment = client.get_experiment_by_name("secured")
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served, not local
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED" and "test_categorical_accuracy" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "val_categorical_accuracy")) == 2
        logged = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"curves.png", "timing.json", "confusion_matrix.csv", "summary.txt"} <= logged
        (model,) = client.search_logged_models([experiment.experiment_id])
        assert model.source_run_id == run.info.run_id
        from mlflow.server import get_app_client

        get_app_client("basic-auth", tracking_uri=url).create_user("reader", READER_PASSWORD)
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    assert run.info.run_id in compared.stdout and "lenet-adam-lr0.001" in compared.stdout
    assert any(artifacts_root.rglob("curves.png"))  # the server stored the files
    assert not list(tmp_path.rglob("*.db"))  # nothing fell back to a local sqlite store

    # A second user, without permission on the experiment: cannot read it.
    denied = subprocess.run(compare, cwd=tmp_path, env=reader, capture_output=True, text=True)
    assert denied.returncode != 0 and run.info.run_id not in denied.stdout
    assert "refused the request (403): this user has no permission for it (experiment 'secured')" in denied.stderr
    assert "Traceback" not in denied.stderr, denied.stderr[-2000:]


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster on loopback: its addresses, the env to use and its log folder."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed")
    ray = shutil.which("ray")
    if ray is None:
        pytest.skip("the `ray` command is not installed (the ray extra)")
    env = {
        **os.environ,
        # Ray swaps 127.0.0.1 for the machine's network address, where a loopback head does not
        # listen (ray-project/ray#59110), unless it runs as a one-machine cluster.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    gcs, client, dashboard = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="hw4-ray-")  # short: Ray puts unix sockets in it
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--ray-client-server-port={client}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],  # fmt: skip
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    # Ready means the GCS answers and so does the dashboard, whose agents Ray Client needs to
    # start its per-client server (on a loaded machine the dashboard comes up seconds later).
    checks = [
        [ray, "status", f"--address=127.0.0.1:{gcs}"],
        [ray, "list", "nodes", f"--address=http://127.0.0.1:{dashboard}"],
    ]
    deadline = time.monotonic() + 120
    for check in checks:
        while subprocess.run(check, env=env, capture_output=True).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                head.kill()
                raise AssertionError(f"the Ray head did not start: {head.stderr.read().decode()[-2000:]}")
            time.sleep(1)
    try:
        yield RayHead(
            client=f"ray://127.0.0.1:{client}", gcs=f"127.0.0.1:{gcs}",
            dashboard=f"http://127.0.0.1:{dashboard}", env=env, logs=Path(temp_dir) / "session_latest" / "logs",
        )  # fmt: skip
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class RayHead:
    client: str  # ray://: Ray Client, as from another machine
    gcs: str  # HOST:PORT: as from a node of the cluster
    dashboard: str
    env: dict
    logs: Path

    def client_server_errors(self) -> str:
        """The tails of Ray's per-client servers' stderr logs: why one did not start."""
        return "\n".join(f"{log.name}: {log.read_text(errors='replace')[-1500:]}"
                         for log in sorted(self.logs.glob("ray_client_server_*.err")))  # fmt: skip


def test_a_ray_sweep_logs_one_parent_and_three_children_to_the_server(
    ray_head, tracking_server, tiny_data_dir, tmp_path
):
    dashboard, env = ray_head.dashboard, ray_head.env
    url, _ = tracking_server

    def sweep(experiment: str, cwd: Path, address: str) -> subprocess.CompletedProcess:
        cwd.mkdir(exist_ok=True)
        return subprocess.run(
            ["hw4-train", "-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}",
             "optimizer.lr=1e-3,1e-2,1e-1", "model=mlp", "trainer.epochs=2", "trainer.verbose=0",
             "tracking.log_model=false", f"data.dir={tiny_data_dir}", f"tracking.uri={url}",
             f"tracking.experiment={experiment}"],  # fmt: skip
            cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    experiment_name, workdir = "ray-sweep", tmp_path / "first"
    result = sweep(experiment_name, workdir, ray_head.client)
    if result.returncode != 0 and RAY_CLIENT_SERVER_FAILED.search(result.stderr):
        # Ray's head sometimes fails to start its per-client server on a loaded machine (seen in CI,
        # twice in a row: the server process exited, or was a zombie, before it listened). That is
        # Ray Client's start, before any job; the launcher is the same when it joins the cluster
        # by its GCS address, as from a cluster node, so the sweep runs that way instead.
        warnings.warn(f"Ray Client's server did not start; joining by the GCS address.\n"
                      f"{ray_head.client_server_errors()}", stacklevel=1)  # fmt: skip
        experiment_name, workdir = "ray-sweep-gcs", tmp_path / "gcs"
        result = sweep(experiment_name, workdir, ray_head.gcs)
    assert result.returncode == 0, result.stderr[-3000:] + ray_head.client_server_errors()

    # The jobs ran as tasks on the cluster, not in the launching process.
    listed = subprocess.run(
        ["ray", "list", "tasks", f"--address={dashboard}", "--filter", "name=_run_job",
         "--format", "json"],  # fmt: skip
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert sorted(task["state"] for task in json.loads(listed.stdout)) == ["FINISHED"] * 3

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "parent"]
    assert parent.info.status == "FINISHED"
    assert "RayLauncher" in parent.data.tags["launcher"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(float(run.data.params["optimizer.lr"]) for run in children) == [1e-3, 1e-2, 1e-1]
    for run in children:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_categorical_accuracy")) == 2
    assert parent.data.metrics["jobs_finished"] == 3
    # Ray reserves one CPU per job (ray_cluster.yaml): each job's TensorFlow uses one thread.
    assert {run.data.tags["tf_threads"] for run in children} == {"1"}
    # Job outputs land beside the launch, although Ray runs jobs in its workers' own folder.
    assert len(list(workdir.glob("multirun/*/*/*/.hydra"))) == 3


def test_an_optuna_search_on_ray_workers_prunes_through_the_study(ray_head, tiny_data_dir, tmp_path):
    """Issue 22: trials run as Ray tasks, 2 at a time, each reporting its epochs to its trial in
    the study's storage; the median of the first batch prunes the second batch's hopeless rates
    (as in tests/sweep/test_optuna.py, where joblib workers run them)."""
    optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
    from conftest import PRUNABLE

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    command = [
        "hw4-train", "hparams_search=optuna_lr", "hydra/launcher=ray_cluster",
        f"hydra.launcher.ray.init.address={ray_head.gcs}", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
        *PRUNABLE, "trainer.verbose=0", "tracking.log_model=false", f"data.dir={tiny_data_dir}", f"tracking.uri={uri}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=ray_head.env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="lr-mlp-adam", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    client = MlflowClient(uri)
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["tf_threads"] == "1"  # a Ray task's one CPU
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_categorical_accuracy")}
        assert trial.intermediate_values == pytest.approx(history)
