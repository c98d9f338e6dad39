"""A new sqlite store that two sweep launchers open at the same moment, and a sweep whose start
fails: one launch, one parent run, or an abort in one line; never a half-tracked sweep."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hw4 import names
from hw4.errors import Hw4Error
from hw4.sweep.context import CONTEXT_FILE

LAUNCHERS = 2


def launcher(tmp_path: Path, data_dir: Path, uri: str, folder: str) -> subprocess.Popen:
    """A one-job sweep of one epoch, in its own sweep folder (the race is in the launch's start)."""
    command = [
        "hw4-train", "-m", "model=mlp", "debug=fast", "trainer.epochs=1", "optimizer.lr=1e-3",
        f"data.dir={data_dir}", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / folder}",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_launchers_create_one_new_store_at_once(tiny_data_dir, tmp_path):
    """Both launchers run MLflow's schema migration on a store that does not exist yet: one
    creates it, the other waits and opens it; each sweep gets its own parent and children."""
    db = tmp_path / "new-store" / "mlflow.db"  # not there yet: the launchers create it
    uri = f"sqlite:///{db}"
    launches = [launcher(tmp_path, tiny_data_dir, uri, f"sweep-{i}") for i in range(LAUNCHERS)]
    outputs = [launch.communicate(timeout=600) for launch in launches]

    for launch, (_, stderr) in zip(launches, outputs):
        assert launch.returncode == 0, stderr[-3000:]
        assert "raised" not in stderr, stderr[-3000:]  # Hydra's warning for a failed callback
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hw4")
    found = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [run for run in found if run.data.tags.get(names.SWEEP_ROLE) == names.PARENT_ROLE]
    assert len(parents) == LAUNCHERS and {p.info.status for p in parents} == {"FINISHED"}
    for parent in parents:
        children = [run for run in found if run.data.tags.get(names.PARENT_RUN) == parent.info.run_id]
        assert len(children) == 1 and {c.info.status for c in children} == {"FINISHED"}
    assert len(found) == LAUNCHERS * 2  # no job trained outside its sweep


def sweep_command(tmp_path: Path, data_dir: Path, uri: str, folder: Path) -> list[str]:
    return [
        "hw4-train", "-m", "model=mlp", "debug=fast", "optimizer.lr=1e-3,1e-2", f"data.dir={data_dir}",
        f"tracking.uri={uri}", f"hydra.sweep.dir={folder}",
    ]  # fmt: skip


def test_a_sweep_whose_start_fails_stops_in_one_line_and_ends_its_parent_failed(tiny_data_dir, tracking_uri, tmp_path):
    """The parent run exists when the launch fails (its sweep folder cannot take the context
    file): the launch exits 1 with one line, the parent ends FAILED, and no job runs untracked."""
    folder = tmp_path / "multirun"
    (folder / CONTEXT_FILE).mkdir(parents=True)  # a folder where the context file must go
    (folder / CONTEXT_FILE / "in-the-way").write_text("")
    result = subprocess.run(
        sweep_command(tmp_path, tiny_data_dir, tracking_uri, folder), cwd=tmp_path, capture_output=True, text=True
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("sweep not started: ") and CONTEXT_FILE in lines[0]
    client = MlflowClient(tracking_uri)
    found = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert [(r.data.tags.get(names.SWEEP_ROLE), r.info.status) for r in found] == [(names.PARENT_ROLE, "FAILED")]
    assert found[0].data.tags[names.ERROR] == lines[0]


def test_a_store_that_cannot_be_used_stops_the_sweep_in_one_line(tiny_data_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"  # its folder cannot be made
    result = subprocess.run(
        sweep_command(tmp_path, tiny_data_dir, uri, tmp_path / "multirun"), cwd=tmp_path, capture_output=True, text=True
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("sweep not started: tracking store folder ") and "a-file" in lines[0]
    assert not (tmp_path / "multirun" / CONTEXT_FILE).exists()  # no job started


def test_api_sweep_raises_the_error_that_stopped_the_launch(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    """In a notebook the launch's error is raised (no exit), and its parent ends FAILED too."""
    from hw4 import api

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "multirun"
    (folder / CONTEXT_FILE).mkdir(parents=True)
    with pytest.raises(Hw4Error, match=f"IsADirectoryError: .*{CONTEXT_FILE}"):
        api.sweep(sweep_command(tmp_path, tiny_data_dir, tracking_uri, folder)[2:])
    client = MlflowClient(tracking_uri)
    found = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert [(r.data.tags.get(names.SWEEP_ROLE), r.info.status) for r in found] == [(names.PARENT_ROLE, "FAILED")]


CONNECT_AT = """
import sys, time
from hw4 import tracking  # MLflow imported: only the store's creation is left to race

start = float(sys.argv[2])
if time.time() > start:
    sys.exit(3)  # too late to meet the others: no race to see
time.sleep(max(0.0, start - time.time() - 0.05))  # asleep until just before the start, not polling
while time.time() < start:
    time.sleep(0.001)
tracking.connect(sys.argv[1])
"""


@pytest.mark.slow
def test_processes_opening_one_new_store_at_the_same_moment_create_it_once(tmp_path):
    """The race itself, without the launchers' timing: three processes, MLflow already imported,
    open one new sqlite store at one moment (hw4.tracking.store_lock serializes the creation)."""
    import sys
    import time

    (tmp_path / "new").mkdir()
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    start = time.time() + 8  # after every process has imported MLflow, on two cores
    processes = [
        subprocess.Popen([sys.executable, "-c", CONNECT_AT, uri, str(start)], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    # 0 each: all three were waiting at the start (3: one came late), and each opened the store.
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(e[-1500:] for e in errors)
    assert MlflowClient(uri).search_experiments()  # one store, its tables made once


# A notebook's client or `mlflow ui` on the same new store: plain MLflow, hw4 never imported.
MLFLOW_OUTSIDE_HW4 = """
import sys
from mlflow.tracking import MlflowClient

print("imported", flush=True)
sys.stdin.readline()
MlflowClient(sys.argv[1]).search_experiments()
"""


@pytest.mark.slow
def test_a_new_store_that_mlflow_outside_hw4_opens_at_once_works_for_both(tmp_path):
    """MLflow migrates a new store in place when a client first opens it, and takes no lock:
    two at once broke each other (seen: "table ... already exists", "No such index", both
    failing). hw4 makes a new store in a private file and links it into place, and waits while
    another process makes it. Round 0: hw4 opens the store once MLflow has begun making it;
    round 1: both at once, either first. Each failed before (each alone, at its first store)."""
    import sys
    import time

    from hw4 import tracking

    rounds = ["while-mlflow-makes-it", "with-mlflow"]
    outsiders = [
        subprocess.Popen(
            [sys.executable, "-c", MLFLOW_OUTSIDE_HW4, f"sqlite:///{tmp_path / str(i) / 'mlflow.db'}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(len(rounds))
    ]
    try:
        for outsider in outsiders:
            assert outsider.stdout.readline() == "imported\n", outsider.communicate()[1][-2000:]
        for i, (outsider, hw4_opens) in enumerate(zip(outsiders, rounds)):
            db = tmp_path / str(i) / "mlflow.db"
            db.parent.mkdir()
            outsider.stdin.write("go\n")
            outsider.stdin.flush()
            deadline = time.monotonic() + 30
            while hw4_opens == "while-mlflow-makes-it" and not db.exists():  # it has begun making it
                assert time.monotonic() < deadline and outsider.poll() is None, outsider.communicate()[1][-2000:]
                time.sleep(0.001)
            tracking.connect(f"sqlite:///{db}")  # raised "tracking store ... cannot be used" before
            assert outsider.wait(timeout=120) == 0, outsider.communicate()[1][-2000:]
            with contextlib.closing(sqlite3.connect(db)) as check:
                assert check.execute("SELECT version_num FROM alembic_version").fetchall() == [
                    (tracking.current_schema(),)
                ]
            assert [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]
            left = sorted(p.name for p in db.parent.iterdir())
            assert left == ["mlflow.db", "mlflow.db.lock"]  # no private file
    finally:  # an early failure leaves none waiting on its input
        for outsider in outsiders:
            outsider.kill()
            outsider.wait()
