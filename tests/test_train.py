"""End to end: the real `hw4-train` entrypoint on tiny synthetic data, read back from MLflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    "timing.json",
}
EPOCH_METRICS = ("loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy")


def hw4_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["hw4-train", "trainer.verbose=2", *overrides], cwd=cwd, capture_output=True, text=True)


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
        "trainer.restore_best=true",
        "tracking.system_metrics=true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout
    assert "see it: mlflow ui --backend-store-uri sqlite:///" in result.stdout

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
    expected = {"model": "lenet_bn", "optimizer": "adam", "dtype_policy": "float32", "xla": "false"}
    assert {key: tags[key] for key in expected} == expected
    assert "model=lenet_bn" in tags["overrides"] and "git_commit" in tags

    assert tags["config_key"] and tags["job_key"] and tags["config_key"] != tags["job_key"]
    # MLflow's own tags, which its UI shows; the experiment opens in the UI's training view.
    assert tags["mlflow.source.name"] == "hw4-train" and tags["mlflow.user"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for name in EPOCH_METRICS:
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == [0, 1], name
    metrics = run.data.metrics
    val = [m.value for m in sorted(client.get_metric_history(run_id, "val_categorical_accuracy"), key=lambda m: m.step)]
    val_loss = [m.value for m in client.get_metric_history(run_id, "val_loss")]
    assert metrics["best_val_categorical_accuracy"] == max(val)
    assert metrics["best_epoch"] == val.index(max(val)) == metrics["evaluated_epoch"]  # restore_best
    assert metrics["best_val_loss"] == min(val_loss)
    assert 0.0 <= metrics["test_categorical_accuracy"] <= 1.0
    assert metrics["test_loss"] > 0
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    (dataset,) = run.inputs.dataset_inputs  # the data the run saw, as an MLflow input
    assert dataset.dataset.name == "fashion_mnist" and len(dataset.dataset.digest) == 16
    assert '"x_train": [320, 28, 28, 1]' in dataset.dataset.profile

    assert EXPECTED_ARTIFACTS <= all_artifacts(client, run_id)
    # Where the run's time went: a fresh process, so the startup counts; the steps and the rest
    # add up to the total, and the figures were drawn in the background.
    timings = json.loads(Path(client.download_artifacts(run_id, "timing.json", str(tmp_path))).read_text())
    steps = timings["steps_s"]
    assert {"startup", "imports", "store", "data", "build", "fit", "evaluate", "log_model", "wait_background"} <= set(
        steps
    )
    assert sum(steps.values()) + timings["other_s"] == pytest.approx(timings["total_s"], abs=0.01)
    assert {"sample_grids", "evaluation_figures"} <= set(timings["background_s"])
    assert metrics["time_total_s"] == timings["total_s"] and metrics["time_fit_s"] == steps["fit"]
    summary = Path(client.download_artifacts(run_id, "summary.txt", str(tmp_path)))
    assert "BatchNormalization" in summary.read_text()
    csv = Path(client.download_artifacts(run_id, "confusion_matrix.csv", str(tmp_path))).read_text()
    rows = [[int(v) for v in row.split(",")[1:]] for row in csv.strip().splitlines()[1:]]
    assert len(rows) == 10 and sum(map(sum, rows)) == 100
    # The confusion matrix and the logged model come from the weights the test metrics measured.
    assert sum(rows[i][i] for i in range(10)) / 100 == pytest.approx(metrics["test_categorical_accuracy"])

    (logged,) = client.search_logged_models([experiment.experiment_id])
    assert logged.source_run_id == run_id
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(logged.artifact_location)
    (pixels,) = model.metadata.get_input_schema().inputs  # the images as published: uint8, 28x28
    assert pixels.shape == (-1, 28, 28) and pixels.type == np.dtype("uint8")
    from hw4 import data

    raw = data.load(tmp_path / "data", n_classes=10)
    predicted = np.asarray(model.predict(raw.x_test)).argmax(axis=1)
    assert (predicted == raw.y_test).mean() == pytest.approx(metrics["test_categorical_accuracy"])


def test_the_split_follows_data_split_seed_not_trainer_seed(tiny_data_dir):
    from hydra import compose, initialize_config_dir

    from hw4.config import CONFIG_DIR, register_configs
    from hw4.steps import load_data

    register_configs()
    validation = {}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for overrides in (["trainer.seed=0"], ["trainer.seed=5"], ["data.split_seed=1"]):
            cfg = compose("config", overrides=[f"data.dir={tiny_data_dir}", *overrides])
            validation[overrides[0]] = load_data(cfg)[1].x_val
    assert np.array_equal(validation["trainer.seed=0"], validation["trainer.seed=5"])
    assert not np.array_equal(validation["trainer.seed=0"], validation["data.split_seed=1"])


def test_bad_data_fails_fast_with_one_line_and_no_run(data_copy, tracking_uri, tmp_path):
    (data_copy / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    result = hw4_train(tmp_path, f"data.dir={data_copy}", f"tracking.uri={tracking_uri}")
    assert result.returncode == 1
    assert "t10k-labels-idx1-ubyte.gz: not a complete gzip file" in result.stderr
    assert "Traceback" not in result.stderr
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


START_UP_NOISE = re.compile(r"^[IWE]\d{4} |oneDNN|cuInit|cuda|absl|CPU instructions|rebuild TensorFlow")


@pytest.mark.slow
def test_a_run_prints_no_start_up_noise_and_an_honest_progress_bar(tiny_data_dir, tracking_uri, tmp_path):
    # 320 training images in batches of 16: 20 steps an epoch, the last compiled call (16 steps
    # at a time by default) runs only 4.
    result = hw4_train(
        tmp_path, "trainer.verbose=1", "trainer.epochs=2", "trainer.batch_size=16",
        f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}", "tracking.log_model=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    lines = [line for line in re.split(r"[\r\n\x08]+", plain) if line.strip()]
    assert not [line for line in lines if START_UP_NOISE.search(line)]
    assert "Warning" not in plain and "retracing" not in plain
    for epoch_text in plain.split("Epoch ")[1:]:
        counts = [(int(a), int(b)) for a, b in re.findall(r"\b(\d+)/(\d+) ━", epoch_text)]
        assert counts and all(done <= total for done, total in counts), counts
        assert counts[-1] == (20, 20)


def test_tensorflow_start_up_lines_show_with_the_switch_and_real_errors_always():
    from hw4.runtime import quiet

    assert not quiet.keep("I0000 00:00:1 port.cc:153] oneDNN custom operations are on. You may see")
    assert not quiet.keep("E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error")
    assert quiet.keep("E0000 00:00:1 some_kernel.cc:10] Out of memory while allocating a tensor")
    load = [sys.executable, "-c", "from hw4.runtime import quiet; quiet.load_keras()"]
    silent = subprocess.run(load, capture_output=True, text=True)
    shown = subprocess.run(load, capture_output=True, text=True, env={**os.environ, "HW4_TF_LOGS": "1"})
    assert silent.returncode == shown.returncode == 0
    assert silent.stderr == ""
    if not any(START_UP_NOISE.search(line) for line in shown.stderr.splitlines()):
        pytest.skip("this TensorFlow printed no start-up lines to hide")


def write_user_model(folder: Path, **fields) -> Path:
    """A model YAML of the user's own, outside the package, for Hydra's --config-dir."""
    (folder / "model").mkdir(parents=True, exist_ok=True)
    lines = ["_target_: hw4.models.mlp", "name: wide_mlp", "input_shape: [784]"]
    lines += [f"{key}: {value}" for key, value in fields.items()]
    (folder / "model" / "wide_mlp.yaml").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
def test_a_users_own_model_trains_from_config_dir_and_a_typo_is_one_clear_error(tiny_data_dir, tracking_uri, tmp_path):
    common = [f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}", "trainer.epochs=1",
              "trainer.verbose=0", "tracking.log_model=false"]  # fmt: skip
    mine = write_user_model(tmp_path / "my_conf", hidden_units="[256, 128]")
    result = subprocess.run(["hw4-train", "--config-dir", str(mine), "model=wide_mlp", *common],
                            cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert run.data.params["model.hidden_units"] == "[256, 128]" and run.data.params["model.name"] == "wide_mlp"
    summary = Path(client.download_artifacts(run.info.run_id, "summary.txt", str(tmp_path))).read_text()
    assert "Total params: 235,146" in summary  # 784*256+256 + 256*128+128 + 128*10+10

    typo = write_user_model(tmp_path / "typo_conf", hidden_unit="[256, 128]")
    result = subprocess.run(["hw4-train", "--config-dir", str(typo), "model=wide_mlp", *common],
                            cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1
    assert "model 'wide_mlp': hidden_unit not an argument of hw4.models.mlp" in result.stderr
    assert "hidden_units" in result.stderr  # the builder's arguments are listed
    assert len(client.search_runs([client.get_experiment_by_name("hw4").experiment_id])) == 1  # no run for it


@pytest.mark.slow
def test_the_range_test_records_loss_against_rate_and_suggests_a_sweep(tiny_data_dir, tracking_uri, tmp_path):
    """`hw4-train +sweep=lr_find` (issue 25): one run, the loss of every batch against its rate,
    a figure, the suggestion as metrics and the sweep command that would cover it."""
    done = hw4_train(tmp_path, "+sweep=lr_find", "lr_find.steps=40", "lr_find.min_lr=1e-5", "lr_find.max_lr=10",
                     "trainer.batch_size=32", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    command = done.stdout.splitlines()[-1].strip()  # the sweep to run, with this run's own overrides
    assert command.startswith("hw4-train sweep=lr ") and "trainer.batch_size=32" in command
    assert "lr_find." not in command and "sweep=lr_find" not in command and " optimizer.lr=" in command
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert run.info.status == "FINISHED" and "trainer.resume" not in done.stdout  # nothing to resume
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr_find_lr"), key=lambda m: m.step)]
    losses = client.get_metric_history(run.info.run_id, "lr_find_loss")
    assert len(lrs) == len(losses) >= 10 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    low, high = run.data.metrics["lr_find_low"], run.data.metrics["lr_find_high"]
    assert low < run.data.metrics["lr_find_suggested"] < high and high / low == pytest.approx(100)
    assert run.data.tags["lr_find_sweep"] == command
    assert "lr_find.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "test_categorical_accuracy" not in run.data.metrics  # a range test, not a training run
