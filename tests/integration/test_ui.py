"""MLflow's UI in a real browser: a sweep's runs, their learning rates and accuracies, the chart.

Starts `mlflow server` on loopback over a store holding a real two-job sweep, then drives
headless Chromium (Debian's package) with Playwright. Skips, with the reason, where either is
missing (`apt-get install chromium`, `pip install playwright`). The screenshots land in the
test's temporary folder; set HW4_UI_SCREENSHOTS=DIR to keep them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import console
import pytest
from mlflow.tracking import MlflowClient
from services import mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.serial]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def sweep_server(tiny_data_dir, _migrated_store, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no Chromium to drive (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    workdir = tmp_path_factory.mktemp("ui")
    db = workdir / "mlflow.db"
    shutil.copy(_migrated_store, db)
    with pytest.MonkeyPatch.context() as patch:  # the sweep in this process (tests/console.py)
        printed = console.hw4_train(
            ["hw4-train", "-m", "optimizer.lr=1e-4,1e-2", "model=mlp", "trainer.epochs=2", "trainer.verbose=0",
             "tracking.log_model=false", f"data.dir={tiny_data_dir}", f"tracking.uri=sqlite:///{db}",
             f"hydra.sweep.dir={workdir / 'multirun'}"],
            cwd=workdir, monkeypatch=patch,
        ).stdout  # fmt: skip
    (link,) = re.findall(r"http://127\.0\.0\.1:\d+/(#/experiments/\S+)", printed)  # the "see it" line
    with mlflow_server("--backend-store-uri", f"sqlite:///{db}") as url:
        yield url, MlflowClient(f"sqlite:///{db}"), link


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)  # a loaded 2-core machine renders slowly
        yield page
        browser.close()


def screenshot(page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("HW4_UI_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name))
    assert (folder / name).stat().st_size > 10_000


def test_sweep_runs_lr_accuracy_and_chart_render(sweep_server, page, tmp_path):
    url, client, _ = sweep_server
    experiment = client.get_experiment_by_name("hw4")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r is not parent]

    # The experiment's runs: the sweep's parent, and its children once expanded.
    page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs")
    page.get_by_text(parent.info.run_name).wait_for()
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    for child in children:
        page.get_by_text(child.info.run_name).wait_for()
    screenshot(page, tmp_path, "experiment_runs.png")

    # The comparison view: each child's learning rate and validation accuracy.
    run_ids = quote(json.dumps([c.info.run_id for c in children]))
    page.goto(f"{url}/#/compare-runs?runs={run_ids}&experiments={quote(json.dumps([experiment.experiment_id]))}")
    page.get_by_text("val_categorical_accuracy").first.wait_for()
    text = page.inner_text("body")
    for child in children:
        assert child.info.run_name in text
        assert child.data.params["optimizer.lr"] in text
        assert f"{round(child.data.metrics['val_categorical_accuracy'], 3):g}" in text
    screenshot(page, tmp_path, "compare_runs.png")

    # Its per-epoch validation-accuracy chart: one line per run. Opened by its address, the one
    # the comparison view links to: that view's metrics table is a scrolling box that renders
    # only the rows in view, and with every run's time_* metrics the link sits below them.
    experiments = quote(json.dumps([experiment.experiment_id]))
    page.goto(
        f"{url}/#/metric?runs={run_ids}&metric=%22val_categorical_accuracy%22&experiments={experiments}"
        "&plot_metric_keys=%5B%22val_categorical_accuracy%22%5D"
    )
    page.wait_for_url("**/metric?**")
    page.locator(".js-plotly-plot").first.wait_for()
    for child in children:  # the chart's legend names one line per run
        page.get_by_text(f"{child.info.run_name} (val_categorical_accuracy)").wait_for()
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= len(children)
    page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot
    screenshot(page, tmp_path, "val_accuracy_chart.png")


def test_the_link_a_sweep_prints_opens_its_runs_in_the_training_view(sweep_server, page, tmp_path):
    """The first page a new user lands on from hw4's output: the runs table with the sweep's
    parent, not MLflow 3's GenAI overview (its default for an experiment)."""
    url, client, link = sweep_server
    experiment = client.get_experiment_by_name("hw4")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'parent'")
    page.goto(f"{url}/{link}")
    page.get_by_text(parent.info.run_name).wait_for()
    assert "workflowType=machine_learning" in page.url and "/overview" not in page.url
    assert page.get_by_role("heading", name="Runs").is_visible()
    assert page.get_by_text("Model registry").is_visible()  # the training view's navigation
    assert not page.get_by_text("Latency").is_visible()  # the GenAI overview's panels
    screenshot(page, tmp_path, "landing_runs.png")
