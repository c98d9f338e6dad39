"""The homework report, built only from what the tracking store holds.

`build(client, parent_run_id, out_dir)` reads the runs under one homework parent run (Part 1's
scratch run and the four experiment presets), downloads their figures and texts, and renders
one self-contained HTML file (figures embedded as data URIs, no external resources) and the same
content as Markdown beside the PNGs. Every number comes from a run's metrics, params or
artifacts; nothing is recomputed here except summaries of logged histories (the final
train/validation loss gap, and the best epoch of runs from before best-epoch metrics). Sweeps are
ranked as hw4-compare, the sweep summary and hw4-promote rank them (hw4.ranking): by their best
configuration's mean over seeds, complete ones first.

No TensorFlow.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from jinja2 import Environment, PackageLoader, StrictUndefined

from hw4 import artifacts, names
from hw4.commands.scratch import SCRATCH_RUN_NAME

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

PRESETS = {  # run name -> (part, title, the homework's own test accuracy)
    "part3_mlp": (3, "MLP 784-128-64-10", 0.870),
    "part4_lenet": (4, "LeNet-5", 0.883),
    "part4_lenet_dropout": (4, "LeNet-5 with dropout", 0.856),
    "part4_lenet_bn": (4, "LeNet-5 with batch normalization", 0.902),
}
SCRATCH_RUN = SCRATCH_RUN_NAME
HOMEWORK_TAG = "homework"
FIGURES = {
    "curves": artifacts.CURVES,
    "confusion": artifacts.CONFUSION_PNG,
    "predictions": artifacts.PREDICTIONS_TEST,
    "samples_dev": artifacts.SAMPLES_DEV,
    "samples_test": artifacts.SAMPLES_TEST,
}
REPORT_HTML, REPORT_MD, RESULTS_MD = "report.html", "report.md", "results.md"
SAMPLES_FROM = "part3_mlp"
# A sweep parent's summary (hw4.ranking.summarize): its best configuration's mean, its verdict.
SWEEP_MEAN, SWEEP_VERDICT = "best_config_mean_val_categorical_accuracy", "verdict"


def history(client: MlflowClient, run_id: str, metric: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


def _artifact(client: MlflowClient, run_id: str, path: str, into: Path) -> Optional[Path]:
    """The artifact downloaded into `into`; None when the run has none (a failed run, say: the
    section says so). Other errors (auth, network) are not an absent artifact: they propagate."""
    from mlflow.exceptions import MlflowException

    from hw4 import tracking

    try:
        return Path(client.download_artifacts(run_id, path, str(into)))
    except MlflowException as exc:
        if tracking.does_not_exist(exc):
            return None
        raise


def training_section(client: MlflowClient, run: Run, scratch_dir: Path, figures_dir: Path) -> dict:
    """Numbers, texts and figure files of one preset's run."""
    run_id, name = run.info.run_id, run.info.run_name
    section: dict[str, Any] = {
        "name": name,
        "title": PRESETS[name][1],
        "run_id": run_id,
        "status": run.info.status,
        "params": run.data.params,
        "homework_accuracy": PRESETS[name][2],
        "test_loss": run.data.metrics.get(names.TEST_LOSS),
        "test_accuracy": run.data.metrics.get(names.TEST_ACCURACY),
    }
    curves = {m: history(client, run_id, m) for m in (names.LOSS, names.VAL_LOSS, names.VAL_ACCURACY)}
    section.update(best_epoch(run.data.metrics, curves[names.VAL_ACCURACY]))
    if curves[names.VAL_ACCURACY]:
        section["final_val_accuracy"] = curves[names.VAL_ACCURACY][-1]
    if curves[names.LOSS] and curves[names.VAL_LOSS]:
        section["final_loss"], section["final_val_loss"] = curves[names.LOSS][-1], curves[names.VAL_LOSS][-1]
        section["loss_gap"] = curves[names.VAL_LOSS][-1] - curves[names.LOSS][-1]
        section["epochs_run"] = len(curves[names.LOSS])
    local = _artifact(client, run_id, artifacts.SUMMARY, scratch_dir / run_id)
    section["summary"] = local.read_text() if local else None
    for key, path in (("data", artifacts.DATA_SUMMARY), ("first_sample", artifacts.FIRST_SAMPLE)):
        local = _artifact(client, run_id, path, scratch_dir / run_id)
        section[key] = json.loads(local.read_text()) if local else None
    section["figures"] = {}
    for key, path in FIGURES.items():
        if key.startswith("samples") and name != SAMPLES_FROM:
            continue  # Part 2's grids are the same in every run: take them from one
        local = _artifact(client, run_id, path, scratch_dir / run_id)
        if local:
            target = figures_dir / f"{name}_{path}"
            shutil.copy(local, target)
            section["figures"][key] = target.name
    return section


def best_epoch(metrics: dict[str, float], val_accuracy: list[float]) -> dict[str, Any]:
    """The best epoch (1-based) and its validation accuracy, as the run logged them; from the
    history only for runs from before best-epoch metrics."""
    if names.BEST_EPOCH in metrics and names.BEST_VAL_ACCURACY in metrics:
        return {
            "best_val_epoch": int(metrics[names.BEST_EPOCH]) + 1,
            "best_val_accuracy": metrics[names.BEST_VAL_ACCURACY],
        }
    if not val_accuracy:
        return {}
    return {"best_val_epoch": 1 + val_accuracy.index(max(val_accuracy)), "best_val_accuracy": max(val_accuracy)}


def scratch_section(client: MlflowClient, run: Run, scratch_dir: Path) -> dict:
    local = _artifact(client, run.info.run_id, "gradients.json", scratch_dir / run.info.run_id)
    gradients = json.loads(local.read_text()) if local else {}
    return {"run_id": run.info.run_id, "L": run.data.metrics.get("L"), "gradients": gradients}


def sweep_result(client: MlflowClient, parent: Run) -> Optional[dict]:
    """A sweep's best configuration and its verdict, as its parent's summary logged them; for
    a sweep that logged no verdict (an older or unfinished one), recomputed from its children
    by the same ranking (hw4.ranking.summarize). None when nothing in it ranks."""
    from hw4 import ranking, runs

    tags, metrics = parent.data.tags, parent.data.metrics
    summary: dict[str, Any] = {**metrics, **tags}
    if SWEEP_VERDICT not in tags or SWEEP_MEAN not in metrics:
        children = runs.training_runs(client, parent.info.experiment_id, parent.info.run_id)
        summary = ranking.summarize(runs.table(children))[0]
    if summary.get(SWEEP_MEAN) is None or summary.get("best_model") is None:
        return None
    return {
        "model": summary["best_model"],
        "val": summary[SWEEP_MEAN],
        "test": summary.get("best_config_mean_test_categorical_accuracy"),
        "lr": summary.get("best_lr"),
        "n": int(summary.get("best_config_runs", 0)),
        "planned": int(summary.get("best_config_planned", summary.get("best_config_runs", 0))),
        "complete": bool(summary.get("best_config_complete", True)),
        "tied_with_best": summary.get("tied_with_best", ""),
        "verdict": summary.get(SWEEP_VERDICT, ""),
        "run_id": summary.get("best_run_id"),
        "sweep_run_id": parent.info.run_id,
    }


def best_sweep_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, dict]:
    """Per model, the best learning-rate sweep of the experiment (other than this one): complete
    best configurations first, then by their mean best-epoch validation accuracy over seeds."""
    from hw4 import ranking, runs

    higher = ranking.higher_is_better(names.OBJECTIVE)
    best: dict[str, dict] = {}
    for parent in runs.search_all(client, [experiment_id], f"tags.{names.SWEEP_ROLE} = 'parent'"):
        if parent.info.run_id == parent_run_id or HOMEWORK_TAG in parent.data.tags:
            continue
        result = sweep_result(client, parent)
        if result is None:
            continue
        rank = (result["complete"], result["val"] if higher else -result["val"])
        held = best.get(result["model"])
        if held is None or rank > (held["complete"], held["val"] if higher else -held["val"]):
            best[result["model"]] = result
    return best


def repeats(runs: list) -> dict:
    """Test and best validation accuracy over a preset's finished runs (its seeds): n of
    `planned` (its runs of any status), mean, std."""
    import numpy as np

    finished = [r for r in runs if r.info.status == "FINISHED"]
    result: dict[str, Any] = {"n": len(finished), "planned": len(runs), "run_ids": [r.info.run_id for r in finished]}
    for key, metric in (("test", names.TEST_ACCURACY), ("best_val", names.BEST_VAL_ACCURACY)):
        values = [r.data.metrics[metric] for r in finished if metric in r.data.metrics]
        result[f"{key}_mean"] = float(np.mean(values)) if values else None
        result[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return result


def collect(client: MlflowClient, parent_run_id: str, workdir: Path, figures_dir: Path) -> dict:
    from hw4 import runs, tracking

    parent = runs.get_run(client, parent_run_id, f"parent={parent_run_id}")
    by_name: dict[str, list] = {}
    for run in runs.sweep_runs(client, parent.info.experiment_id, parent_run_id):  # all pages, none replaced
        by_name.setdefault(run.info.run_name, []).append(run)
    sections = {}
    for name in PRESETS:
        if name not in by_name:
            continue
        # With repeats, figures and texts come from the lowest seed; numbers cover every seed.
        shown = min(by_name[name], key=lambda r: int(r.data.params.get(names.SEED, 0)))
        sections[name] = training_section(client, shown, workdir, figures_dir)
        sections[name]["repeats"] = repeats(by_name[name])
    sweeps = best_sweep_runs(client, parent.info.experiment_id, parent_run_id)
    for section in sections.values():
        section["sweep"] = sweeps.get(section["params"].get("model.name"))
    scratch = by_name.get(SCRATCH_RUN, [None])[0]
    trained = [r for name in PRESETS for r in by_name.get(name, [])]
    provenance = {
        "command": parent.data.tags.get("command") or f"hw4-train -m {parent.data.tags.get('overrides', '')}",
        "commits": sorted(
            {r.data.tags.get("mlflow.source.git.commit") or r.data.tags.get("git_commit", "none") for r in trained}
        ),
        "machines": sorted({r.data.tags["machine"] for r in trained if "machine" in r.data.tags}),
    }
    return {
        "parent_run_id": parent_run_id,
        "experiment_id": parent.info.experiment_id,
        "tracking_uri": tracking.redact(client.tracking_uri),
        "scratch": scratch_section(client, scratch, workdir) if scratch else None,
        "runs": sections,
        "missing": [name for name in PRESETS if name not in sections],
        "provenance": provenance,
    }


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(context: dict, out_dir: Path) -> tuple[Path, Path]:
    env = Environment(
        loader=PackageLoader("hw4", "templates"),
        undefined=StrictUndefined,
        autoescape=lambda name: name is not None and name.endswith(".html.j2"),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, digits=4: "n/a" if v is None else f"{v:.{digits}f}"
    html = env.get_template("report.html.j2").render(**context, image=lambda name: _data_uri(out_dir / name))
    markdown = env.get_template("report.md.j2").render(**context, image=lambda name: name)
    (out_dir / REPORT_HTML).write_text(html)
    (out_dir / REPORT_MD).write_text(markdown)
    # The results table alone, as the README quotes it.
    (out_dir / RESULTS_MD).write_text(env.get_template("results.md.j2").render(**context))
    return out_dir / REPORT_HTML, out_dir / REPORT_MD


def build(client: MlflowClient, parent_run_id: str, out_dir: Path, log_to_parent: bool = True) -> Path:
    """Write report.html, report.md and the PNGs to `out_dir`; log them to the parent run."""
    from hw4 import runs

    runs.get_run(client, parent_run_id, f"parent={parent_run_id}")  # a missing run: one clear line
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file
    with tempfile.TemporaryDirectory() as workdir:
        context = collect(client, parent_run_id, Path(workdir), out_dir)
    html, _ = render(context, out_dir)
    if log_to_parent:
        from hw4.tracking import RunLogger

        RunLogger(client, parent_run_id).log_artifacts(out_dir, "report")
    return html


def latest_homework_parent(client: MlflowClient, experiment_id: str) -> str:
    from hw4 import runs

    return runs.latest_run_id(
        client, experiment_id, f"tags.{HOMEWORK_TAG} = 'true'",
        "no hw4-homework run in this experiment; run hw4-homework or pass parent=",
    )  # fmt: skip


def main() -> None:
    """`hw4-report [parent=RUN_ID] [out=DIR]`: the report from runs already in the store."""
    from hw4 import config

    config.run_app("report", _report_app)


def _report_app(cfg: Any) -> None:
    from hydra.utils import get_original_cwd

    from hw4 import tracking

    client, experiment_id = tracking.open_experiment(cfg.tracking, get_original_cwd())
    parent = cfg.parent or latest_homework_parent(client, experiment_id)
    html = build(client, parent, Path(get_original_cwd()) / cfg.out / parent)
    print(f"report: {html} and {html.with_name(REPORT_MD)}")
