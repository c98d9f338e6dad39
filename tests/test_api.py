"""hw4.api, as a notebook calls it, and examples/homework.ipynb executed end to end (issue 25)."""

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


@pytest.mark.slow
def test_train_twice_in_one_process_then_a_sweep_and_its_comparison(tiny_data_dir, tracking_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["debug=fast", "trainer.epochs=2", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}"]
    first = api.train(common)
    second = api.train([*common, "optimizer.lr=0.003", "prep=standardize"])  # a second call: Hydra set up again
    assert first.run_id != second.run_id
    assert len(first.history["val_categorical_accuracy"]) == 2 and "test_categorical_accuracy" in first.test_metrics
    assert first.model.count_params() == 109386 and first.ui.startswith("see it: mlflow ui")
    from mlflow.tracking import MlflowClient

    recorded = MlflowClient(tracking_uri).get_run(second.run_id)
    assert recorded.info.status == "FINISHED" and recorded.data.params["prep.name"] == "standardize"
    assert recorded.data.metrics["test_categorical_accuracy"] == pytest.approx(
        second.test_metrics["test_categorical_accuracy"]
    )

    table = api.sweep([*common, "optimizer.lr=1e-3,1e-2"])
    assert len(table) == 2 and table.attrs["summary"]["jobs_finished"] == 2
    compared = api.compare(parent=table.attrs["parent_run_id"], uri=tracking_uri)
    assert len(compared) == 2


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
    assert sum(r.data.tags.get("sweep") != "parent" for r in runs) == 4 + 5  # the presets, then the lr grid
