"""Shared fixtures: tiny synthetic Fashion-MNIST-shaped IDX files and throwaway MLflow stores."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from hw4.data import IDX_FILES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
N_CLASSES = 10


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups (pytest-xdist#1241)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `serial` (a process group and its signals, a server's ports, a browser, a
    store stopped for real) run on one xdist worker, one after another, beside the other tests."""
    for item in items:
        if item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group("serial"))


def _absl_logs_to_the_process_stderr() -> None:
    """absl's log handler (TensorFlow imports absl) writes to the sys.stderr of its import, which
    in a test is pytest's capture. Each in-process Hydra run sets up logging, which closes every
    handler ever made (logging.config), and absl's handler then closes its stream unless that is
    sys.stderr or sys.stdout at the time: a test that redirects them (capfd, tests/console.py)
    would close pytest's capture under the tests after it. Made here, before any test imports
    TensorFlow, on the process's own stderr (which pytest still captures, at the descriptor)."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # no TensorFlow installed: no absl handler either
        return
    absl_logging.get_absl_handler().python_handler.setStream(sys.__stderr__)


_absl_logs_to_the_process_stderr()
_TRACKING_URI_AT_START = os.environ.get("MLFLOW_TRACKING_URI")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each test starts with the environment's MLFLOW_TRACKING_URI: a run logged in-process sets
    it (MLflow's set_tracking_uri, for Model.log), and a console script a later test starts in
    the same worker would otherwise write to that earlier test's store."""
    if _TRACKING_URI_AT_START is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = _TRACKING_URI_AT_START


@pytest.fixture(autouse=True)
def _op_determinism_switched_back_off():
    """A run with trainer.deterministic=true in the test's process turns TensorFlow's op
    determinism on for the process (the next run of a sweep turns it off; a test's own loop does
    not): a later test of the worker would train under it, and XLA refuses LeNet-5's MaxPool
    gradient under it."""
    yield
    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config as tf_config

        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


@pytest.fixture(scope="session", autouse=True)
def _xla_cache_of_the_session(tmp_path_factory):
    """Every run the tests start, in-process or not, keeps XLA's compiled programs in one folder
    of the session (trainer.xla_cache=auto under XDG_CACHE_HOME), not in the developer's cache."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Serialise uint8 data in the IDX layout: magic, one big-endian uint32 per dimension, data."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.write_bytes(gzip.compress(idx_bytes(array, magic)))


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise plus a bright 7x7 block whose position encodes the class, so models can learn it."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 7 * row : 7 * row + 7, 7 * col : 7 * col + 7] = 255
    return images


def write_dataset(folder: Path, n_dev: int = 400, n_test: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for images_key, labels_key, n in (("x_dev", "y_dev", n_dev), ("x_test", "y_test", n_test)):
        labels = rng.permutation(np.arange(n) % N_CLASSES).astype(np.uint8)
        write_idx(folder / IDX_FILES[images_key], synthetic_images(labels, rng), IDX_IMAGES_MAGIC)
        write_idx(folder / IDX_FILES[labels_key], labels, IDX_LABELS_MAGIC)
    return folder


def own_option(
    folder: Path, monkeypatch: pytest.MonkeyPatch, *, group: str, module: str, source: str, yaml: str
) -> Path:
    """A user's config folder (`folder`/conf) holding one option of `group`: its factory in
    `module`.py (on sys.path) and `yaml` as conf/`group`/<the yaml's name>.yaml."""
    (folder / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    conf = folder / "conf"
    (conf / group).mkdir(parents=True)
    name = next(line.split(":", 1)[1].strip() for line in yaml.splitlines() if line.startswith("name:"))
    (conf / group / f"{name}.yaml").write_text(yaml)
    return conf


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """400 development and 100 test images, balanced over the 10 classes (read-only: copy to edit)."""
    return write_dataset(tmp_path_factory.mktemp("tiny-fashion-mnist"))


@pytest.fixture
def data_copy(tiny_data_dir, tmp_path) -> Path:
    """A writable copy of the tiny dataset, for tests that damage a file."""
    return Path(shutil.copytree(tiny_data_dir, tmp_path / "data"))


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, created once: its schema migrations take seconds."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking_uri(_migrated_store, tmp_path) -> str:
    """A fresh, private sqlite store for one test."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_migrated_store, db)
    return f"sqlite:///{db}"


@pytest.fixture
def real_data_dir() -> Path:
    if not all((REAL_DATA / name).is_file() for name in IDX_FILES.values()):
        pytest.skip(f"the real Fashion-MNIST is not at {REAL_DATA} (only on the project's machines)")
    return REAL_DATA


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the module's own (tests/services.py); skips where none is installed."""
    from services import Postgres

    server = Postgres()
    try:
        yield server
    finally:
        server.remove()


# An Optuna search on the tiny data whose pruning is known in advance (tests/sweep/test_optuna.py,
# tests/integration/test_server.py). 1e-7 learns nothing: with the sampler's seed 0 and two trials
# at a time, the first batch draws 1e-7 and 0.01, the second 1e-7 twice, which the median of the
# first batch prunes after their first epoch.
PRUNABLE = [
    "optimizer.lr=choice(0.01,0.0000001)", "hydra.sweeper.pruner.n_startup_trials=1",
    "hydra.sweeper.pruner.n_warmup_steps=0", "trainer.epochs=3",
]  # fmt: skip
