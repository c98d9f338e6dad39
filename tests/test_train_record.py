"""What one run records: a run trained once in this process through hw4.api.train (the path of
hw4-train's job: Hydra composes the config, runs the job, its callbacks and output folder), read
back from MLflow, one test per claim. What needs a process of its own (exit statuses, what a
fresh process prints and its start-up time) is in tests/test_train.py."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Experiment, Run
from mlflow.tracking import MlflowClient

from hw4 import api
from hw4.train import TrainedRun

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_record")]  # one run for the module

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
    "timing.json",
}
EPOCH_METRICS = ("loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy")
# Relative data and store paths, and a job that changes directory: both must resolve against
# the folder the user started from.
OVERRIDES = [
    "model=lenet_bn", "trainer.epochs=2", "trainer.verbose=2", "data.dir=data",
    "tracking.uri=sqlite:///mlruns/mlflow.db", "tracking.experiment=e2e", "hydra.job.chdir=true",
    "trainer.restore_best=true", "tracking.system_metrics=true",
]  # fmt: skip


@dataclass
class Recorded:
    folder: Path  # where the run was launched from
    result: TrainedRun
    printed: str  # what the run printed
    client: MlflowClient
    experiment: Experiment
    run: Run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def artifact(self, path: str) -> Path:
        downloads = self.folder / "downloads"
        downloads.mkdir(exist_ok=True)
        return Path(self.client.download_artifacts(self.run_id, path, str(downloads)))

    def history(self, name: str) -> list[float]:
        return [m.value for m in sorted(self.client.get_metric_history(self.run_id, name), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def recorded(tiny_data_dir, _migrated_store, tmp_path_factory) -> Recorded:
    folder = tmp_path_factory.mktemp("complete-run")
    shutil.copytree(tiny_data_dir, folder / "data")
    (folder / "mlruns").mkdir()
    shutil.copy(_migrated_store, folder / "mlruns" / "mlflow.db")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(folder)
        result = api.train(OVERRIDES)
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    return Recorded(folder, result, printed.getvalue(), client, experiment, run)


def test_the_run_finishes_under_its_configurations_name(recorded):
    assert recorded.run.info.status == "FINISHED"
    assert recorded.run.info.run_name == "lenet_bn-adam-lr0.001"


def test_relative_data_and_store_paths_resolve_against_the_launch_folder(recorded):
    assert recorded.experiment.artifact_location == (recorded.folder / "mlruns" / "artifacts").as_uri()
    assert recorded.run.data.params["data.dir"] == str(recorded.folder / "data")


def test_it_prints_the_test_accuracy_and_where_to_see_the_run(recorded):
    assert "test accuracy" in recorded.printed
    assert "see it: mlflow ui --backend-store-uri sqlite:///" in recorded.printed


def test_the_params_are_the_composed_configs(recorded):
    params = recorded.run.data.params
    assert params["model.name"] == "lenet_bn" and params["optimizer.lr"] == "0.001"
    assert params["trainer.epochs"] == "2"


def test_the_tags_name_model_optimizer_precision_and_overrides(recorded):
    tags = recorded.run.data.tags
    expected = {"model": "lenet_bn", "optimizer": "adam", "dtype_policy": "float32", "xla": "false"}
    assert {key: tags[key] for key in expected} == expected
    assert "model=lenet_bn" in tags["overrides"] and "git_commit" in tags


def test_the_config_key_and_the_job_key_are_set_and_differ(recorded):
    tags = recorded.run.data.tags
    assert tags["config_key"] and tags["job_key"] and tags["config_key"] != tags["job_key"]


def test_mlflows_own_tags_and_the_training_view_show_in_its_ui(recorded):
    tags = recorded.run.data.tags
    assert tags["mlflow.source.name"] == "hw4-train" and tags["mlflow.user"]
    assert recorded.experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize("name", EPOCH_METRICS)
def test_every_epoch_metric_has_one_value_per_epoch(recorded, name):
    assert sorted(m.step for m in recorded.client.get_metric_history(recorded.run_id, name)) == [0, 1]


def test_the_best_epoch_metrics_come_from_the_history_and_the_best_epoch_is_evaluated(recorded):
    metrics, val = recorded.run.data.metrics, recorded.history("val_categorical_accuracy")
    assert metrics["best_val_categorical_accuracy"] == max(val)
    assert metrics["best_epoch"] == val.index(max(val)) == metrics["evaluated_epoch"]  # restore_best
    assert metrics["best_val_loss"] == min(recorded.history("val_loss"))


def test_the_test_metrics_are_an_accuracy_and_a_loss(recorded):
    metrics = recorded.run.data.metrics
    assert 0.0 <= metrics["test_categorical_accuracy"] <= 1.0
    assert metrics["test_loss"] > 0


def test_system_metrics_are_logged(recorded):
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        recorded.run.data.metrics
    )


def test_the_data_is_the_runs_input_with_its_digest_and_shapes(recorded):
    (dataset,) = recorded.run.inputs.dataset_inputs
    assert dataset.dataset.name == "fashion_mnist" and len(dataset.dataset.digest) == 16
    assert '"x_train": [320, 28, 28, 1]' in dataset.dataset.profile


def test_every_artifact_is_logged(recorded):
    def listed(path: str = "") -> set[str]:
        found = set()
        for item in recorded.client.list_artifacts(recorded.run_id, path):
            found |= listed(item.path) if item.is_dir else {item.path}
        return found

    assert EXPECTED_ARTIFACTS <= listed()


def test_the_timed_steps_add_up_to_the_total_and_the_figures_are_drawn_in_the_background(recorded):
    # The start-up step is a fresh process's only (tests/test_train.py times it).
    timings = json.loads(recorded.artifact("timing.json").read_text())
    steps = timings["steps_s"]
    assert {"imports", "store", "data", "build", "fit", "evaluate", "log_model", "wait_background"} <= set(steps)
    assert sum(steps.values()) + timings["other_s"] == pytest.approx(timings["total_s"], abs=0.01)
    assert {"sample_grids", "evaluation_figures"} <= set(timings["background_s"])


def test_the_timing_metrics_are_timing_jsons(recorded):
    timings = json.loads(recorded.artifact("timing.json").read_text())
    metrics = recorded.run.data.metrics
    assert metrics["time_total_s"] == timings["total_s"] and metrics["time_fit_s"] == timings["steps_s"]["fit"]


def test_the_summary_is_the_models(recorded):
    assert "BatchNormalization" in recorded.artifact("summary.txt").read_text()


def test_the_confusion_matrix_counts_every_test_image_with_the_tested_weights(recorded):
    csv = recorded.artifact("confusion_matrix.csv").read_text()
    rows = [[int(v) for v in row.split(",")[1:]] for row in csv.strip().splitlines()[1:]]
    assert len(rows) == 10 and sum(map(sum, rows)) == 100
    # The weights the test metrics measured (restore_best), not the last epoch's.
    assert sum(rows[i][i] for i in range(10)) / 100 == pytest.approx(
        recorded.run.data.metrics["test_categorical_accuracy"]
    )


def test_the_logged_model_takes_uint8_images_and_scores_the_test_accuracy(recorded):
    import mlflow.pyfunc

    from hw4 import data

    (logged,) = recorded.client.search_logged_models([recorded.experiment.experiment_id])
    assert logged.source_run_id == recorded.run_id
    model = mlflow.pyfunc.load_model(logged.artifact_location)
    (pixels,) = model.metadata.get_input_schema().inputs  # the images as published: uint8, 28x28
    assert pixels.shape == (-1, 28, 28) and pixels.type == np.dtype("uint8")
    raw = data.load(recorded.folder / "data", n_classes=10)
    predicted = np.asarray(model.predict(raw.x_test)).argmax(axis=1)
    assert (predicted == raw.y_test).mean() == pytest.approx(recorded.run.data.metrics["test_categorical_accuracy"])


def test_api_train_returns_what_the_run_recorded(recorded):
    result, metrics = recorded.result, recorded.run.data.metrics
    assert result.run_id == recorded.run_id
    assert result.test_metrics == {name: metrics[name] for name in ("test_loss", "test_categorical_accuracy")}
    assert result.history["val_categorical_accuracy"] == pytest.approx(recorded.history("val_categorical_accuracy"))
    assert result.objective == metrics["best_val_categorical_accuracy"]
    assert recorded.run_id in result.ui


def test_logging_the_model_prints_no_progress_bar(recorded):
    """MLflow predicts the logged model's input example to check it, through Keras' predict,
    whose progress bar then came after the test metrics' line; with trainer.verbose=2 the run
    prints no bar at all."""
    (logged,) = recorded.client.search_logged_models([recorded.experiment.experiment_id])  # it was logged
    assert logged.source_run_id == recorded.run_id
    assert "━" not in recorded.printed
