"""`hw4-train +sweep=refine sweep.from=<parent>`: a finer grid around a finished sweep's tied
rates, with its seeds and overrides, continuing under its parent run (issue 22, item 6)."""

from __future__ import annotations

import contextlib
import io
import math
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from hw4 import api, names
from hw4.errors import ConfigError
from hw4.sweep import refine


def test_the_fine_grid_spans_the_tied_rates_out_to_half_a_coarse_step_and_skips_done_rates():
    grid = [1e-4, 1e-3, 1e-2, 1e-1]
    rates = refine.fine_grid(grid, tied=[1e-3, 1e-2], points=5)
    # From the log midpoint of 1e-4 and 1e-3 to that of 1e-2 and 1e-1, 1e-3 and 1e-2 left out.
    assert rates == [0.000316, 0.00316, 0.0316]
    assert refine.fine_grid(grid, tied=[1e-1], points=3) == [0.0316, 0.316]  # the last: half a step past
    assert refine.fine_grid(grid, tied=[1e-3, 1e-2], points=1) == [0.00316]  # one point: the centre
    assert all(1e-4 < r < 1e-1 for r in refine.fine_grid(grid, tied=[1e-3], points=7))


def test_the_fine_grid_is_log_spaced():
    rates = refine.fine_grid([1e-4, 1e-2], tied=[1e-2], points=4)  # 1e-3 to 1e-1, none already run
    ratios = [b / a for a, b in zip(rates, rates[1:])]
    assert len(rates) == 4 and all(math.isclose(r, 10 ** (2 / 3), rel_tol=0.01) for r in ratios)


def test_refine_without_a_parent_or_of_an_unknown_run_is_one_line_and_exit_1(tmp_path, tracking_uri):
    for args, message in [
        (["+sweep=refine"], "sweep=refine needs sweep.from="),
        (["+sweep=refine", "sweep.from=0123abcd", f"tracking.uri={tracking_uri}"], "no sweep parent run of that id"),
        (["+sweep=refine", "sweep.from=x", "sweep.points=many"], "sweep.points must be a whole number"),
    ]:
        done = subprocess.run(["hw4-train", *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_a_refinement_continues_the_sweep_under_its_parent_with_its_seeds_and_overrides(
    tiny_data_dir, tracking_uri, tmp_path, monkeypatch
):
    """Both sweeps in this process, as `hw4-train -m` and `hw4-train +sweep=refine` run them
    (hw4.api.sweep; the console script's refusals: the test above)."""
    monkeypatch.chdir(tmp_path)
    api.sweep([
        "optimizer.lr=1e-4,1e-2", "trainer.seed=0,1", "trainer.epochs=2", "data.limit=200",
        "trainer.verbose=0", "tracking.log_model=false", f"data.dir={tiny_data_dir}", f"tracking.uri={tracking_uri}",
        f"hydra.sweep.dir={tmp_path / 'coarse'}",
    ])  # fmt: skip
    client = MlflowClient(tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "hw4"]
    (parent,) = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("sweep") == "parent"]
    first = {
        r.info.run_id for r in client.search_runs([experiment.experiment_id], names.children_filter(parent.info.run_id))
    }

    # The tied rates, as the sweep's own summary names them ("lr 1e-2, lr 1e-4").
    tied = sorted(float(label.split()[-1]) for label in parent.data.tags["tied_with_best"].split(", "))
    planned = refine.fine_grid([1e-4, 1e-2], tied, 3)

    # Refused (in this process: the command line's one-line errors are tested above): the rate
    # set by hand, and a sweep that did not finish.
    refine_args = ["sweep=refine", f"sweep.from={parent.info.run_id}", "sweep.points=3", f"tracking.uri={tracking_uri}"]
    with pytest.raises(ConfigError, match="sweep=refine sets optimizer.lr itself"):
        refine.expand([*refine_args, "optimizer.lr=0.5"])
    client.set_terminated(parent.info.run_id, "KILLED")
    with pytest.raises(ConfigError, match="that sweep is KILLED; finish it first"):
        refine.expand(refine_args)
    client.set_terminated(parent.info.run_id, "FINISHED")

    # The refinement names only the parent: seeds, epochs, data and store come from the sweep.
    with contextlib.redirect_stderr(io.StringIO()) as printed:
        api.sweep(["+sweep=refine", *refine_args[1:]])
    assert "refining sweep" in printed.getvalue()

    children = client.search_runs([experiment.experiment_id], names.children_filter(parent.info.run_id))
    new = [c for c in children if c.info.run_id not in first]
    assert len(first) == 4 and len(new) == 2 * len(planned)  # the sweep's 2 seeds, none retrained
    assert {c.data.params[names.SEED] for c in new} == {"0", "1"}
    assert {c.data.params["trainer.epochs"] for c in new} == {"2"} and {c.data.params["data.limit"] for c in new} == {
        "200"
    }
    assert sorted({float(c.data.params["optimizer.lr"]) for c in new}) == planned
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    # Old and new rates ranked together in the parent's summary.
    assert parent.data.metrics["jobs"] == 4 + len(new)
    assert parent.data.metrics["configurations"] == 2 + len(planned)
