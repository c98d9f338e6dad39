"""A store that blinks, and a store URI with a password (issue 21, sections 2 and 4).

The team server's PostgreSQL (tests/services.py's `Postgres`) is really stopped after a job's
first epoch and started again 15 s later (past MLflow's own HTTP retries), under a direct
`postgresql://` store and under `mlflow server` on top of it. The password test runs a sweep with credentials in
MLFLOW_TRACKING_URI and then looks for the password everywhere hw4 could have written it.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from services import Postgres, mlflow_server

from hw4 import names

pytestmark = pytest.mark.slow
OUTAGE_S = 15  # longer than MLflow's own retries (hw4.tracking: 3 retries, backoff 1: 6 to 8 s)
SWEEP_EPOCHS, RUN_EPOCHS = 10, 40  # each still training when the outage begins


def train_command(uri: str, data_dir: Path, *overrides: str, epochs: int) -> list[str]:
    return [
        "hw4-train", *overrides, "model=mlp", f"trainer.epochs={epochs}", "trainer.verbose=0", "tracking.log_model=false",
        "trainer.jit_compile=true",  # each job's first epoch compiles: still training at the outage
        f"data.dir={data_dir}", f"tracking.uri={uri}",
    ]  # fmt: skip


def first_epoch_logged(uri: str) -> bool:
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("hw4")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return any(client.get_metric_history(r.info.run_id, names.LOSS) for r in runs)
    except Exception:  # the store is still being created
        return False


def run_through_an_outage(
    jobs: list[tuple[list[str], str]], cwd: Path, postgres: Postgres
) -> list[subprocess.CompletedProcess]:
    """Run each (command, store URI) at once; once each has logged a first epoch, stop
    PostgreSQL for OUTAGE_S and start it again; return how each ended."""
    processes, outputs = [], []
    for command, _ in jobs:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        output: dict[str, str] = {}
        reader = threading.Thread(target=lambda p=process, o=output: o.update(zip(("out", "err"), p.communicate())))
        reader.start()
        processes.append((process, reader))
        outputs.append(output)
    deadline = time.monotonic() + 180
    while not all(first_epoch_logged(uri) for _, uri in jobs):
        if any(p.poll() is not None for p, _ in processes) or time.monotonic() > deadline:
            for process, reader in processes:
                process.kill()
                reader.join()
            ended = [f"exit {p.returncode}: {o.get('err', '')[-2000:]}" for (p, _), o in zip(processes, outputs)]
            raise AssertionError("no epoch before the outage\n" + "\n".join(ended))
        time.sleep(0.2)
    postgres.stop()
    time.sleep(OUTAGE_S)
    assert all(p.poll() is None for p, _ in processes), "a job gave up during the outage"
    assert postgres.start().returncode == 0
    results = []
    for (command, _), (process, reader), output in zip(jobs, processes, outputs):
        reader.join(timeout=300)
        results.append(
            subprocess.CompletedProcess(command, process.returncode, output.get("out", ""), output.get("err", ""))
        )
    return results


def assert_whole(client: MlflowClient, run, epochs: int) -> None:
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    for metric in names.EPOCH_METRICS:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == list(range(epochs)), metric
    assert names.TEST_ACCURACY in run.data.metrics


@pytest.mark.serial  # stops the real PostgreSQL for OUTAGE_S
def test_a_database_restart_mid_run_loses_nothing_directly_or_through_mlflow_server(postgres, tmp_path):
    """One outage for both stores (a shorter suite): a 3-job sweep on a direct postgresql://
    store, and a single run through `mlflow server` on the same PostgreSQL."""
    from conftest import write_dataset

    direct, backend = postgres.create_database("direct"), postgres.create_database("served")
    # Its tables made once before the launch, as docs/interrupted-runs.md advises for a new
    # PostgreSQL store: this test's poller would otherwise migrate it beside the launcher.
    MlflowClient(direct).search_experiments()
    data_dir = write_dataset(tmp_path / "data", n_dev=2000, n_test=200)
    options = ["--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(tmp_path / "a")]
    with mlflow_server(*options) as url:
        sweep, single = run_through_an_outage(
            [
                (train_command(direct, data_dir, "-m", "optimizer.lr=1e-3,3e-3,1e-2", f"hydra.sweep.dir={tmp_path / 'multirun'}", epochs=SWEEP_EPOCHS), direct),
                (train_command(url, data_dir, epochs=RUN_EPOCHS), url),
            ],
            tmp_path, postgres,
        )  # fmt: skip
        assert single.returncode == 0, single.stderr[-3000:]
        assert "retry" in single.stdout + single.stderr  # it did meet the outage, beyond MLflow's own retries
        client = MlflowClient(url)
        (run,) = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
        assert_whole(client, run, RUN_EPOCHS)

    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "retry" in sweep.stdout + sweep.stderr  # it did meet the outage (hw4's log line)
    assert "SQLAlchemy database error" not in sweep.stderr  # one line per retry, no traceback
    client = MlflowClient(direct)
    runs = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(names.SWEEP_ROLE) == "parent"]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 3
    assert len(children) == 3
    for child in children:
        assert_whole(client, child, SWEEP_EPOCHS)


def test_no_password_is_written_to_the_store_a_file_or_the_console(postgres, tmp_path, tiny_data_dir):
    """Section 4: the password of MLFLOW_TRACKING_URI appears nowhere: not in the database (every
    param, tag and artifact record), not in the sweep folder or any file of the launch folder,
    not in what hw4-train, hw4-compare and hw4-clean print; a stopped sweep's finish command too."""
    password = "s3cr3t-pw-" + os.urandom(4).hex()
    uri = postgres.create_database("secrets").replace("postgres@", f"postgres:{password}@")  # trust auth: accepted
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    sweep = subprocess.run(
        ["hw4-train", "-m", "model=mlp", "trainer.epochs=1", "trainer.verbose=0", f"data.dir={tiny_data_dir}",
         "data.limit=200,100000", f"hydra.sweep.dir={tmp_path / 'multirun'}"],  # one job fails: its error is recorded
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert sweep.returncode == 1 and "larger than the development set" in sweep.stderr
    single = subprocess.run(
        ["hw4-train", "model=mlp", "trainer.epochs=1", "trainer.verbose=0", "tracking.log_model=false",
         f"data.dir={tiny_data_dir}"],  # fmt: skip
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    parent = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("hw4").experiment_id], filter_string="tags.sweep = 'parent'"
    )[0]
    compare = subprocess.run(
        ["hw4-compare", f"parent={parent.info.run_id}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert compare.returncode == 0, compare.stderr[-2000:]
    wrong = {**env, "MLFLOW_TRACKING_URI": f"http://alice:{password}@127.0.0.1:9"}  # nothing listens there
    bad = subprocess.run(["hw4-train"], cwd=tmp_path, env=wrong, capture_output=True, text=True)
    assert bad.returncode == 1 and "tracking store http://alice:***@127.0.0.1:9 cannot be used" in bad.stderr
    assert "Traceback" not in bad.stderr

    printed = "".join(r.stdout + r.stderr for r in (sweep, single, compare, bad))
    assert "postgres:***@127.0.0.1" in printed  # the store is still named, without its password
    assert password not in printed
    assert password not in postgres.dump("secrets")
    (run, *_) = [
        r for r in MlflowClient(uri).search_runs([parent.info.experiment_id]) if r.info.run_id != parent.info.run_id
    ]
    assert run.data.params["tracking.uri"].startswith("postgresql://postgres:***@")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
