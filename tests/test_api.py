"""hw4.api, as a notebook calls it: examples/homework.ipynb executed end to end (train four
times in one kernel, a sweep, the comparison), and its errors (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hw4 import api
from hw4.errors import ConfigError

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "homework.ipynb"


def test_a_sweep_given_to_train_and_bad_input_raise_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="make a sweep: call api.sweep"):
        api.train(["sweep=lr"])
    with pytest.raises(ConfigError, match="optimizer.lr must be a positive number"):
        api.train(["optimizer.lr=-1"])
    with pytest.raises(ConfigError, match="sweep=refine needs sweep.from="):
        api.sweep(["+sweep=refine"])
    with pytest.raises(ConfigError, match="api.compare: .*tracking config's keys"):
        api.compare(no_such_key=1)


@pytest.mark.slow
def test_the_homework_notebook_runs_end_to_end(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the test extra (nbclient) is not installed")
    from nbclient import NotebookClient

    monkeypatch.setenv("HW4_DATA_DIR", str(tiny_data_dir))
    monkeypatch.setenv("HW4_NOTEBOOK_OVERRIDES", "debug=fast trainer.epochs=1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = {i: cell.outputs for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = "".join(o.get("text", "") for cell in outputs.values() for o in cell)
    assert "L = 0.1332476222330792" in text  # Part 1, the homework's loss
    assert "parameters: 109386" in text  # Part 3's MLP
    images = [o for cell in outputs.values() for o in cell if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the two sample grids and the learning curves, shown inline
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    assert len(children) == 4 + 5  # the presets, then the lr grid: train() called 4 times in one kernel
    assert {r.info.status for r in runs} == {"FINISHED"}  # the sweep's parent too
    assert {r.data.params["model.name"] for r in children} == {"mlp", "lenet", "lenet_dropout", "lenet_bn"}


@pytest.mark.slow  # not serial: the signal goes to its own child process alone
def test_a_ctrl_c_during_api_train_raises_keyboard_interrupt_and_the_kernel_lives_on(tmp_path, tracking_uri):
    """A notebook's interrupt: the run ends KILLED with its checkpoint, api.train raises
    KeyboardInterrupt, and the process goes on (no SystemExit)."""
    import signal
    import subprocess
    import sys

    from conftest import write_dataset
    from test_reliability import logged_epochs, start_and_wait_for

    data_dir = write_dataset(tmp_path / "data", n_dev=3000, n_test=200)
    script = (
        "from hw4 import api\n"
        "try:\n"
        f"    api.train(['model=mlp', 'trainer.epochs=100', 'trainer.verbose=0', 'tracking.log_model=false',"
        f" 'data.dir={data_dir}', 'tracking.uri={tracking_uri}'])\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted; the kernel lives on')\n"
    )
    process = start_and_wait_for(
        [sys.executable, "-c", script], tmp_path, tracking_uri, logged_epochs(2), stdout=subprocess.PIPE
    )
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-3000:]
    assert "interrupted; the kernel lives on" in out.decode()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hw4").experiment_id])
    assert run.info.status == "KILLED"


def test_train_refuses_lr_find_before_any_run(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    """Issue 34, section 5: the range test has no model to return: refused before it runs, so
    the store holds no run (it was refused only after a whole range test, before)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    overrides = ["+sweep=lr_find", "model=mlp", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}"]
    with pytest.raises(ConfigError, match="sweep=lr_find is a range test, not a training run"):
        api.train(overrides)
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
