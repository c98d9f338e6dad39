"""hw4-homework end to end on tiny data, and hw4-report rebuilding the report from the store."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys

import console
import pytest
from mlflow.tracking import MlflowClient

from hw4.commands.report import PRESETS

# One worker runs the module: its hw4-homework run (a module fixture) happens once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("homework")]
PNG = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["Part 1", "Part 2", "Part 3", "Part 4", "Comparison: overfitting", "Data preparation"]


def homework_data(workdir):
    return workdir.parent / "data-of-homework"


@pytest.fixture(scope="module")
def homework(tiny_data_dir, _migrated_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("homework")
    (workdir / "mlruns").mkdir()
    shutil.copy(_migrated_store, workdir / "mlruns" / "mlflow.db")
    data_dir = shutil.copytree(tiny_data_dir, homework_data(workdir))  # given as an absolute path
    result = subprocess.run(
        [
            "hw4-homework",
            f"data.dir={data_dir}",
            "trainer.epochs=1",
            "trainer.verbose=0",
            "tracking.log_model=false",
            "repeats=2",
        ],  # fmt: skip
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent_id = re.search(r"parent run (\w+)", result.stdout).group(1)
    return workdir, parent_id, MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")


def test_one_parent_holds_part1_and_the_four_presets(homework):
    _, parent_id, client = homework
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.info.run_name for c in children) == sorted([*PRESETS, *PRESETS, "scratch-2-3-1"])
    seeds = {(c.info.run_name, c.data.params.get("trainer.seed")) for c in children if c.info.run_name in PRESETS}
    assert seeds == {(name, seed) for name in PRESETS for seed in ("0", "1")}  # repeats=2
    assert all(c.info.status == "FINISHED" for c in children)
    assert parent.data.tags["homework"] == "true"
    logged = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/report.html", "report/report.md"} <= logged


def test_report_has_every_section_and_valid_embedded_figures(homework):
    workdir, parent_id, _ = homework
    html = (workdir / "reports" / parent_id / "report.html").read_text()
    for section in SECTIONS:
        assert section in html, section
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 11  # 2 sample grids, MLP curves/confusion/GT-P, 3x2 LeNet figures
    assert all(base64.b64decode(data)[:8] == PNG for data in images)
    # Self-contained: nothing fetched from the network when opened.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html and "url(" not in html and "@import" not in html

    markdown = (workdir / "reports" / parent_id / "report.md").read_text()
    for section in SECTIONS[:5]:
        assert section in markdown
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (workdir / "reports" / parent_id / name).read_bytes()[:8] == PNG


def test_report_numbers_are_the_runs_numbers(homework):
    workdir, parent_id, client = homework
    html = (workdir / "reports" / parent_id / "report.html").read_text()
    parent = client.get_run(parent_id)
    for child in client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    ):
        assert child.info.run_id in html
        metrics = child.data.metrics
        if child.info.run_name in PRESETS:
            if child.data.params["trainer.seed"] == "0":  # the run whose sections are shown
                assert f"{metrics['test_categorical_accuracy']:.4f}" in html
                assert f"{metrics['test_loss']:.4f}" in html
        else:
            assert str(metrics["L"]) in html and "0.1332476222330792" in html
    assert "Total params: 109,386" in html and "Total params: 61,706" in html


def test_report_shows_mean_and_std_over_the_repeats_beside_the_homework(homework):
    import numpy as np

    workdir, parent_id, client = homework
    markdown = (workdir / "reports" / parent_id / "report.md").read_text()
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    for name, (_, title, homework_accuracy) in PRESETS.items():
        values = [c.data.metrics["test_categorical_accuracy"] for c in children if c.info.run_name == name]
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {title} | {homework_accuracy:.3f}"))
        assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in row and "| 2 |" in row


def test_hw4_report_rebuilds_from_the_store(homework):
    workdir, parent_id, _ = homework
    from hw4.commands import report

    # The latest hw4-homework parent, without training; in this process (tests/console.py).
    result = console.run(report.main, "hw4-report", "out=rebuilt", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    rebuilt = (workdir / "rebuilt" / parent_id / "report.md").read_text()
    assert rebuilt == (workdir / "reports" / parent_id / "report.md").read_text()


def test_results_file_names_the_command_commit_and_machine(homework):
    workdir, parent_id, client = homework
    results = (workdir / "reports" / parent_id / "results.md").read_text()
    assert "| MLP 784-128-64-10 | 0.870 |" in results
    assert "Command: `hw4-homework data.dir=" in results and "repeats=2" in results
    # The README quotes this file: no absolute path of the machine it ran on (issue 21, section 4).
    data_dir = next(a for a in client.get_run(parent_id).data.tags["command"].split() if a.startswith("data.dir="))
    assert data_dir == f"data.dir={os.path.relpath(homework_data(workdir), workdir)}" and "/tmp/" not in results
    commit = client.get_run(parent_id).data.tags.get("mlflow.source.git.commit")
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    commits = {c.data.tags.get("mlflow.source.git.commit") for c in children if c.info.run_name in PRESETS}
    assert commits == {commit} and commit  # the code's own commit, though it ran elsewhere
    assert f"Commit: `{commit}`" in results
    machine = next(c.data.tags["machine"] for c in children if c.info.run_name in PRESETS)
    assert "cores" in machine and f"Machine: {machine}" in results


def test_hw4_homework_fails_with_the_jobs_error_and_keeps_the_record(tiny_data_dir, tracking_uri, tmp_path):
    """Every preset failing (here: bad data settings) is exit 1 with the jobs' one-line error;
    the parent run still holds the failed children and Part 1, and ends FAILED. Started with
    this interpreter and a PATH without hw4's console scripts: its steps must not need them."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hw4.commands.homework",
            f"data.dir={tiny_data_dir}",
            "data.limit=100000",
            "trainer.epochs=1",
            "trainer.verbose=0",
            f"tracking.uri={tracking_uri}",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "data.limit=100000 is larger than the development set" in result.stderr
    assert "Traceback" not in result.stderr
    parent_id = re.search(r"parent run (\w+)", result.stdout).group(1)
    client = MlflowClient(tracking_uri)
    assert client.get_run(parent_id).info.status == "FAILED"
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    statuses = sorted(c.info.status for c in children)
    assert statuses == ["FAILED"] * len(PRESETS) + ["FINISHED"]  # the presets failed; Part 1 ran


@pytest.mark.parametrize(
    "argument, code, message",
    [("repeats=0", 2, "repeats must be a whole number >= 1"), ("trainer.no_such_key=1", 1, "no_such_key")],
)
def test_hw4_homework_refuses_bad_arguments_before_anything_runs(argument, code, message, tmp_path):
    result = subprocess.run(["hw4-homework", argument], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == code and message in result.stderr
    assert not (tmp_path / "reports").exists()  # no report, no parent run: nothing ran
