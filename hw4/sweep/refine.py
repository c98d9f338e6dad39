"""Coarse to fine: `hw4-train +sweep=refine sweep.from=<parent run id>`.

Reads a finished learning-rate sweep from the store, takes the rates tied with its best (Welch's
t-test over seeds, hw4.ranking), and runs a finer log-spaced grid around them with the same seeds
and the same other overrides, as a continuation under the same parent run: the parent's summary
then ranks old and new rates together, and `hw4-compare parent=<id>` shows them side by side.

It works on the command line, before Hydra parses it (`expand`): the refine options become the
sweep's own overrides (`optimizer.lr=a,b,c trainer.seed=0,1,2 ...`), and the new sweep folder
gets the parent's context file, so the sweep callback continues that parent as it continues any
sweep folder. The printed continue command of a stopped refinement is then a plain sweep's.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from hw4 import names
from hw4.errors import ConfigError
from hw4.sweep.context import SweepContext

if TYPE_CHECKING:
    from mlflow import MlflowClient

PRESET = "sweep=refine"
FROM, POINTS = "sweep.from", "sweep.points"
DEFAULT_POINTS = 5
RATE = "optimizer.lr"
# What the refinement sets itself: the original's values for them are dropped, and the refine
# command line may not set them.
SWEPT = (RATE, names.SEED)
# The original's choices that the refine command replaces (its own store and presets).
REPLACED = ("tracking.uri", "sweep", "hparams_search")
CONFIG_ONLY = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--cfg", "-c")


def fine_grid(grid: list[float], tied: list[float], points: int) -> list[float]:
    """`points` log-spaced rates over the span of the tied rates, out to half a grid step beyond
    them on each side (the log midpoint with the next coarse rate), without the rates that ran
    already (within a tenth of a grid step); rounded to 3 significant digits."""
    coarse = sorted(set(grid))
    logs = [math.log(v) for v in coarse]
    steps = [b - a for a, b in zip(logs, logs[1:])]
    step = sorted(steps)[len(steps) // 2] if steps else math.log(10)
    low, high = coarse.index(min(tied)), coarse.index(max(tied))
    start = (logs[low] + logs[low - 1]) / 2 if low > 0 else logs[low] - step / 2
    stop = (logs[high] + logs[high + 1]) / 2 if high < len(coarse) - 1 else logs[high] + step / 2
    spaced = [start + (stop - start) * i / (points - 1) for i in range(points)] if points > 1 else [(start + stop) / 2]
    new = [v for v in spaced if all(abs(v - done) > step / 10 for done in logs)]
    return sorted({float(f"{math.exp(v):.3g}") for v in new})


@dataclass
class Refinement:
    """What the finer grid runs: the original sweep's other overrides, its seeds, the new rates,
    and its parent run (as the sweep context the callback reopens)."""

    overrides: list[str]
    seeds: list[int]
    rates: list[float]
    tied: list[float]
    context: SweepContext


def option(args: list[str], key: str) -> Optional[str]:
    """The value `key` has on the command line (Hydra's grammar: quotes removed), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = [a for a in args if a.startswith(f"{key}=")]
    if not found:
        return None
    value = OverridesParser.create().parse_override(found[-1]).value()
    return None if value is None else str(value)


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def quoted(value: str) -> str:
    """`value` as one Hydra override value, whatever it holds (commas, spaces, quotes)."""
    return "'" + value.replace("'", "\\'") + "'"  # a backslash stays as it is unless a quote follows


def original_overrides(client: MlflowClient, parent_id: str) -> list[str]:
    """The task overrides the original sweep was launched with (its sweep.json), without the keys
    the refinement sets; a sweep of any other key (on the command line or in its sweeper's
    params) is refused: only a learning-rate sweep is refined."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(parent_id, names.SWEEP_DEFINITION, folder)
            definition = json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError) as exc:
        raise ConfigError(f"{FROM}={parent_id}: its {names.SWEEP_DEFINITION} cannot be read ({exc})") from None
    swept = set(((definition.get("sweeper") or {}).get("params") or {}).keys())
    kept: list[str] = []
    for override in OverridesParser.create().parse_overrides(definition.get("overrides", [])):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            swept.add(key)
        if key not in SWEPT + REPLACED and not override.is_sweep_override():
            assert override.input_line is not None  # the parser keeps each override's text
            kept.append(override.input_line)
    others = sorted(swept - set(SWEPT))
    if others:
        raise ConfigError(
            f"{FROM}={parent_id}: that sweep also swept {', '.join(others)}; only a learning-rate sweep is refined"
        )
    return kept


def plan(client: MlflowClient, parent_id: str, points: int) -> Refinement:
    """Read the finished sweep `parent_id` and plan its finer grid."""
    from hw4 import ranking, runs, tracking

    parent = tracking.get_run_or_none(client, parent_id)
    if parent is None or parent.data.tags.get(names.SWEEP_ROLE) != names.PARENT_ROLE:
        raise ConfigError(
            f"{FROM}={parent_id}: no sweep parent run of that id in {tracking.redact(client.tracking_uri)}"
        )
    if parent.info.status != "FINISHED":
        raise ConfigError(f"{FROM}={parent_id}: that sweep is {parent.info.status}; finish it first")
    experiment_id = parent.info.experiment_id
    children = runs.training_runs(client, experiment_id, parent_id)
    frame = runs.table(children)
    finished = ranking.finished_runs(frame)
    grid = sorted({float(v) for v in finished["lr"].dropna()})
    if len(grid) < 2:
        raise ConfigError(f"{FROM}={parent_id}: that sweep finished {len(grid)} learning rate(s); refining needs 2")
    configurations = ranking.group(frame, parent.data.tags.get(names.RANKED_BY, names.OBJECTIVE), sweep=True)
    tied = sorted({float(v) for v in frame[frame["config_key"].isin(ranking.tied_keys(configurations))]["lr"]})
    seeds = sorted({int(run.data.params[names.SEED]) for run in children if names.SEED in run.data.params})
    context = SweepContext(
        tracking.redact(client.tracking_uri), experiment_id, parent_id, parent.data.tags.get(names.SWEEP_ID, parent_id)
    )
    rates = fine_grid(grid, tied, points)
    return Refinement(original_overrides(client, parent_id), seeds or [0], rates, tied, context)


def tracking_uri(args: list[str]) -> str:
    """The store the command names (tracking.uri=...), else the schema's default (which reads
    MLFLOW_TRACKING_URI)."""
    from omegaconf import OmegaConf

    from hw4.config import TrackingConfig

    return option(args, "tracking.uri") or OmegaConf.create({"uri": TrackingConfig.uri}).uri


def expand(args: list[str]) -> list[str]:
    """The command line with `sweep=refine sweep.from=ID [sweep.points=N]` replaced by the finer
    grid's own overrides (a multirun continuing that sweep's parent); others unchanged. With
    `--help` nothing is expanded; with `--cfg` the plan is shown but no sweep folder is made."""
    if PRESET not in args or any(a in CONFIG_ONLY for a in args if a not in ("--cfg", "-c")):
        return args
    parent_id = option(args, FROM)
    if not parent_id:
        raise ConfigError(f"{PRESET} needs {FROM}=<the parent run id of a finished learning-rate sweep>")
    points = option(args, POINTS) or str(DEFAULT_POINTS)
    if not points.isdigit() or int(points) < 1:
        raise ConfigError(f"{POINTS} must be a whole number >= 1, got {points}")
    own = [a for a in args if a not in (PRESET, "-m", "--multirun") and not a.startswith("sweep.")]
    fixed_here = sorted({key_of(a) for a in own if "=" in a} & set(SWEPT))
    if fixed_here:
        raise ConfigError(f"{PRESET} sets {', '.join(fixed_here)} itself (the finer rates, the sweep's seeds)")
    folder = option(own, "hydra.sweep.dir")
    if folder and "${" in folder:
        raise ConfigError(f"{PRESET}: give hydra.sweep.dir as a plain folder, got {folder}")
    from hw4 import tracking

    client = tracking.connect(tracking.resolve_uri(tracking_uri(own), os.getcwd()))
    refinement = plan(client, parent_id, int(points))
    if not refinement.rates:
        raise ConfigError(f"{FROM}={parent_id}: no new rate between the tied ones; try a larger {POINTS}")
    folder = str(Path(os.getcwd(), folder or f"multirun/refine-{parent_id[:8]}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"))
    if not any(a in ("--cfg", "-c") for a in args):
        refinement.context.save(Path(folder))  # the callback continues this parent (hw4.sweep.callback)
    print(
        f"refining sweep {refinement.context.sweep_id}: tied rates {refinement.tied} -> new rates "
        f"{refinement.rates}, seeds {refinement.seeds}, under parent run {parent_id}",
        file=sys.stderr,
    )
    mine = {key_of(a) for a in own if "=" in a}
    return [
        "--multirun",
        *[o for o in refinement.overrides if key_of(o) not in mine],  # the refine command line wins
        *[a for a in own if not a.startswith("hydra.sweep.dir=")],
        f"{RATE}=" + ",".join(f"{v:g}" for v in refinement.rates),
        f"{names.SEED}=" + ",".join(str(s) for s in refinement.seeds),
        f"hydra.sweep.dir={quoted(folder)}",
    ]
