"""hw4-train end to end on tiny synthetic data: what needs a process of its own (exit statuses,
what a fresh process prints, --config-dir on the command line) through the real console script;
what a run records, in this process (tests/test_train_record.py holds one whole run's record)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import console
import numpy as np
import pytest
from mlflow.tracking import MlflowClient


def hw4_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["hw4-train", "trainer.verbose=2", *overrides], cwd=cwd, capture_output=True, text=True)


def train_in_process(cwd: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> str:
    """hw4-train's job run in this process, as hw4.api.train runs it (its command line read by
    hw4.train.command_line, the job through Hydra), without api.train's refusal of the range
    test; returns what it printed. (Not pytest's capsys: Hydra's log handlers keep the stream
    they were given, which capsys closes after the test.)"""
    from hw4 import config
    from hw4 import train as entrypoint
    from hw4.sweep import _hydra

    monkeypatch.chdir(cwd)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        _hydra.run(
            config.CONFIG_DIR, "config", entrypoint.run, entrypoint.command_line(list(overrides)), multirun=False
        )
    return printed.getvalue()


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
def test_a_fresh_process_prints_no_start_up_noise_an_honest_progress_bar_and_times_its_start(
    tiny_data_dir, tracking_uri, tmp_path
):
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
    # The first run of a process counts the process's start (interpreter, Hydra) as a step.
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert run.data.metrics["time_startup_s"] > 0


@pytest.mark.slow  # two fresh processes import TensorFlow
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
def test_a_users_own_model_from_its_own_config_folder_trains_and_records_its_size(
    tiny_data_dir, tracking_uri, tmp_path, monkeypatch
):
    """A model YAML outside the package, on Hydra's search path as --config-dir puts it there
    (the console script's flag itself: the typo test below)."""
    mine = write_user_model(tmp_path / "my_conf", hidden_units="[256, 128]")
    train_in_process(
        tmp_path, monkeypatch, f"hydra.searchpath=[file://{mine}]", "model=wide_mlp", f"data.dir={tiny_data_dir}",
        f"tracking.uri={tracking_uri}", "trainer.epochs=1", "trainer.verbose=0", "tracking.log_model=false",
    )  # fmt: skip
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert run.data.params["model.hidden_units"] == "[256, 128]" and run.data.params["model.name"] == "wide_mlp"
    summary = Path(client.download_artifacts(run.info.run_id, "summary.txt", str(tmp_path))).read_text()
    assert "Total params: 235,146" in summary  # 784*256+256 + 256*128+128 + 128*10+10


def test_a_typo_in_a_users_model_from_config_dir_is_one_clear_error_and_no_run(tiny_data_dir, tracking_uri, tmp_path):
    typo = write_user_model(tmp_path / "typo_conf", hidden_unit="[256, 128]")
    from hw4 import train

    # hw4-train's Hydra app in this process (its console script ends the process: tests/console.py).
    result = console.run(
        train.main, "hw4-train", "--config-dir", str(typo), "model=wide_mlp", f"data.dir={tiny_data_dir}",
        f"tracking.uri={tracking_uri}", "trainer.epochs=1", "trainer.verbose=0", "tracking.log_model=false",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "model 'wide_mlp': hidden_unit not an argument of hw4.models.mlp" in result.stderr
    assert "hidden_units" in result.stderr  # the builder's arguments are listed
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # no run for it


@pytest.mark.slow
def test_the_range_test_records_loss_against_rate_and_suggests_a_sweep(
    tiny_data_dir, tracking_uri, tmp_path, monkeypatch
):
    """`hw4-train +sweep=lr_find` (issue 25): one run, the loss of every batch against its rate,
    a figure, the suggestion as metrics and the sweep command that would cover it."""
    printed = train_in_process(
        tmp_path, monkeypatch, "trainer.verbose=2", "+sweep=lr_find", "lr_find.steps=40", "lr_find.min_lr=1e-5",
        "lr_find.max_lr=10", "trainer.batch_size=32", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
    )  # fmt: skip
    command = printed.splitlines()[-1].strip()  # the sweep to run, with this run's own overrides
    assert command.startswith("hw4-train sweep=lr ") and "trainer.batch_size=32" in command
    assert "lr_find." not in command and "sweep=lr_find" not in command and " optimizer.lr=" in command
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert run.info.status == "FINISHED" and "trainer.resume" not in printed  # nothing to resume
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr_find_lr"), key=lambda m: m.step)]
    losses = client.get_metric_history(run.info.run_id, "lr_find_loss")
    assert len(lrs) == len(losses) >= 10 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    low, high = run.data.metrics["lr_find_low"], run.data.metrics["lr_find_high"]
    assert low < run.data.metrics["lr_find_suggested"] < high and high / low == pytest.approx(100)
    assert run.data.tags["lr_find_sweep"] == command
    assert "lr_find.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "test_categorical_accuracy" not in run.data.metrics  # a range test, not a training run
