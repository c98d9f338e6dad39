"""End to end: the real `hw4-train` entrypoint on tiny synthetic data, read back from MLflow."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

EXPECTED_ARTIFACTS = {
    "config/config.yaml",
    "config/overrides.yaml",
    "config/hydra.yaml",
    "summary.txt",
    "data_summary.json",
    "first_sample_output.json",
    "curves.png",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "samples_dev.png",
    "samples_test.png",
    "predictions_test.png",
}
EPOCH_METRICS = ("loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy")


def hw4_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["hw4-train", "trainer.verbose=2", *overrides], cwd=cwd, capture_output=True, text=True
    )


def all_artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_train_logs_a_complete_run(tiny_data_dir, _migrated_store, tmp_path):
    # Relative data and store paths, and a job that changes directory: both must resolve
    # against the folder the user started from.
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(_migrated_store, tmp_path / "mlruns" / "mlflow.db")
    result = hw4_train(
        tmp_path,
        "model=lenet_bn",
        "trainer.epochs=2",
        "data.dir=data",
        "tracking.uri=sqlite:///mlruns/mlflow.db",
        "tracking.experiment=e2e",
        "hydra.job.chdir=true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("e2e")
    assert experiment.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "lenet_bn-adam-lr0.001"

    params = run.data.params
    assert params["model.name"] == "lenet_bn" and params["optimizer.lr"] == "0.001"
    assert params["trainer.epochs"] == "2" and params["data.dir"] == str(tmp_path / "data")
    tags = run.data.tags
    assert (tags["model"], tags["optimizer"]) == ("lenet_bn", "adam")
    assert "model=lenet_bn" in tags["overrides"] and "git_commit" in tags

    for name in EPOCH_METRICS:
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == [0, 1], name
    assert 0.0 <= run.data.metrics["test_categorical_accuracy"] <= 1.0
    assert run.data.metrics["test_loss"] > 0

    assert EXPECTED_ARTIFACTS <= all_artifacts(client, run_id)
    summary = Path(client.download_artifacts(run_id, "summary.txt", str(tmp_path)))
    assert "BatchNormalization" in summary.read_text()
    csv = Path(client.download_artifacts(run_id, "confusion_matrix.csv", str(tmp_path))).read_text()
    rows = csv.strip().splitlines()[1:]
    assert len(rows) == 10 and sum(int(v) for row in rows for v in row.split(",")[1:]) == 100

    (logged,) = client.search_logged_models([experiment.experiment_id])
    assert logged.source_run_id == run_id
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(logged.artifact_location)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 28, 28, 1)


def test_bad_data_fails_fast_with_one_line_and_no_run(data_copy, tracking_uri, tmp_path):
    (data_copy / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    result = hw4_train(tmp_path, f"data.dir={data_copy}", f"tracking.uri={tracking_uri}")
    assert result.returncode == 1
    assert "t10k-labels-idx1-ubyte.gz: not a complete gzip file" in result.stderr
    assert "Traceback" not in result.stderr
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
