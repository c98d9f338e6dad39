"""What a client takes away (issue 34): the promoted model is the whole inference pipeline.

For each preparation (scale, standardize, augment) and a warm-up schedule, a run is trained in a
one-job sweep and promoted with hw4-promote's own function; then real clients that never import
hw4 load it: MLflow's pyfunc loader in a fresh Python process, and `mlflow models serve`. They
send raw test images (uint8 pixels 0-255, 28x28, as the IDX files and keras.datasets give them)
and must score the run's own logged test accuracy on the same 1,000 images.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest
from conftest import write_dataset
from mlflow.tracking import MlflowClient
from services import free_port, wait_for

from hw4 import api, data, names
from hw4.commands import promote

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("served")]

# The run settings each case adds to a 2-epoch MLP run on the synthetic data.
CASES = {
    "scale": ["prep=scale"],
    "standardize": ["prep=standardize"],
    "augment": ["prep=augment"],
    "warmup": ["schedule=constant", "schedule.warmup_epochs=1"],  # LinearWarmup, an hw4 schedule
}
# Trained under KERAS_BACKEND=jax (a process of its own: the backend is chosen at import), served
# by the default install (TensorFlow): the .keras file is backend-neutral.
JAX_CASES = {"jax": ["prep=standardize"]} if importlib.util.find_spec("jax") else {}
ALL_CASES = [*CASES, *JAX_CASES]
N_TEST = 1000
DEFAULT_BACKEND = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the clients': TensorFlow

# A client: MLflow and numpy only. It loads each model by its alias and predicts the raw images.
CLIENT = r"""
import json, sys
import numpy as np
import mlflow.pyfunc

images = np.load(sys.argv[1])
answers = {}
for name in sys.argv[2:]:
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    answers[name] = {
        "probabilities": np.asarray(model.predict(images)).tolist(),
        "input": repr(model.metadata.get_input_schema().inputs[0]),
        "output": repr(model.metadata.get_output_schema().inputs[0]),
    }
hw4 = sorted(m for m in sys.modules if m == "hw4" or m.startswith(("hw4.", "hydra_plugins")))
answers["imported_hw4"] = hw4
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, _migrated_store):
    """The four cases trained, each promoted as fm-<case>@champion; the store's URI, the raw test
    images and labels, and each case's run."""
    import shutil

    workdir = tmp_path_factory.mktemp("served")
    folder = write_dataset(workdir / "data", n_dev=400, n_test=N_TEST)
    (workdir / "mlruns").mkdir()
    shutil.copy(_migrated_store, workdir / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{workdir}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        for case, overrides in CASES.items():
            table = api.sweep([
                *overrides, "trainer.epochs=2", "trainer.verbose=0", f"data.dir={folder}", f"tracking.uri={uri}",
                f"hydra.sweep.dir={workdir}/multirun/{case}",
            ])  # fmt: skip
            version = promote.promote(client, table.attrs["parent_run_id"], None, f"fm-{case}", "champion")
            runs[case] = client.get_run(version.run_id)
    for case, overrides in JAX_CASES.items():
        trained = subprocess.run(
            ["hw4-train", "-m", *overrides, "trainer.epochs=2", "trainer.verbose=0", f"data.dir={folder}",
             f"tracking.uri={uri}", f"hydra.sweep.dir={workdir}/multirun/{case}"],
            env={**os.environ, "KERAS_BACKEND": "jax"}, cwd=workdir, capture_output=True, text=True,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        (parent,) = client.search_runs(
            [client.get_experiment_by_name("hw4").experiment_id],
            f"tags.{names.SWEEP_ROLE} = 'parent' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )  # fmt: skip
        version = promote.promote(client, parent.info.run_id, None, f"fm-{case}", "champion")
        runs[case] = client.get_run(version.run_id)
        assert runs[case].data.tags[names.BACKEND] == "jax"
    raw = data.load(folder, n_classes=10)
    return uri, raw.x_test, raw.y_test, runs


def logged_confusion(client: MlflowClient, run_id: str, folder) -> np.ndarray:
    from hw4 import artifacts

    path = client.download_artifacts(run_id, artifacts.CONFUSION_CSV, str(folder))
    return pd.read_csv(path, index_col=0).to_numpy()


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((10, 10), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def assert_scores_as_logged(probabilities: np.ndarray, labels: np.ndarray, run, confusion_logged: np.ndarray) -> None:
    assert probabilities.shape == (len(labels), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)  # class probabilities
    predicted = probabilities.argmax(axis=1)
    logged = run.data.metrics[names.TEST_ACCURACY]
    assert (predicted == labels).mean() == pytest.approx(logged, abs=0.01)
    # The same predictions as the run's own evaluation, image by image, up to float rounding.
    assert np.abs(confusion(labels, predicted) - confusion_logged).sum() <= 0.01 * len(labels)


def test_a_fresh_process_without_hw4_loads_each_model_and_scores_its_test_accuracy(served, tmp_path):
    uri, images, labels, runs = served
    np.save(tmp_path / "images.npy", images)
    assert images.dtype == np.uint8 and images.shape == (N_TEST, 28, 28)
    client = subprocess.run(
        [sys.executable, "-c", CLIENT, str(tmp_path / "images.npy"), *(f"fm-{case}" for case in ALL_CASES)],
        env={**DEFAULT_BACKEND, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr[-3000:]
    answers = json.loads(client.stdout.strip().splitlines()[-1])
    assert answers.pop("imported_hw4") == []
    store = MlflowClient(uri)
    for case, run in runs.items():
        answer = answers[f"fm-{case}"]
        assert "uint8" in answer["input"] and "(-1, 28, 28)" in answer["input"], answer["input"]
        assert "(-1, 10)" in answer["output"], answer["output"]
        assert_scores_as_logged(
            np.array(answer["probabilities"]), labels, run, logged_confusion(store, run.info.run_id, tmp_path / case)
        )


def invoke(url: str, server: subprocess.Popen, images: np.ndarray) -> np.ndarray:
    """POST the images as JSON (plain integers) to a model server's /invocations."""
    wait_for(f"{url}/ping", server, seconds=180)
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"inputs": images.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return np.array(json.load(response)["predictions"])


def test_mlflow_models_serve_answers_raw_images_with_each_runs_test_accuracy(served, tmp_path):
    uri, images, labels, runs = served
    servers, logs = {}, []
    try:
        for case in ALL_CASES:  # started together: each pays TensorFlow's import while the others do
            port = free_port()
            logs.append(open(tmp_path / f"{case}.log", "w"))  # read when it fails
            servers[case] = (f"http://127.0.0.1:{port}", subprocess.Popen(
                ["mlflow", "models", "serve", "-m", f"models:/fm-{case}@champion", "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", str(port)],
                env={**DEFAULT_BACKEND, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path, stdout=subprocess.DEVNULL,
                stderr=logs[-1], start_new_session=True,
            ))  # fmt: skip
        store = MlflowClient(uri)
        for case, (url, server) in servers.items():
            try:
                probabilities = invoke(url, server, images)
            except Exception as exc:
                raise AssertionError(f"{case}: {exc}\n{(tmp_path / f'{case}.log').read_text()[-3000:]}") from exc
            run = runs[case]
            assert_scores_as_logged(
                probabilities, labels, run, logged_confusion(store, run.info.run_id, tmp_path / case)
            )
    finally:
        for _, server in servers.values():
            if server.poll() is None:
                os.killpg(server.pid, 15)
        for _, server in servers.values():
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
        for log in logs:
            log.close()
