"""`hw4-train`: the Hydra entrypoint. It only wires the steps of a run (hw4.steps) together.

    hw4-train +experiment=part4_lenet_bn data.dir=../shared/datasets/fashion-mnist
    hw4-train -m optimizer.lr=1e-3,1e-2 model=mlp,lenet

TensorFlow is imported inside `run` (the job `main` and hw4.api call), after the config is
composed and checked, so `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path
from omegaconf import DictConfig

from hw4 import config, steps
from hw4.errors import ConfigError, Hw4Error
from hw4.runtime import quiet, system, timing
from hw4.runtime.signals import RunSignals, signal_name
from hw4.sweep import refine

if TYPE_CHECKING:
    from hw4.sweep.job import Job

config.register_configs("config")


@dataclass
class Outcome:
    """What one job returned: the sweep objective, and the run's context when one was trained
    (hw4.api reads the model, history and test metrics from it)."""

    objective: float
    ctx: Optional[steps.RunContext] = None
    note: str = ""  # why no run was trained: already finished, or stopped before it began


def train(ctx: steps.RunContext) -> float:
    """One run, top to bottom: open it, restore or build the model, fit, evaluate and log.
    Returns the sweep objective (tracking.objective)."""
    from hw4 import checkpoints, tracking

    with steps.opened_run(ctx):
        start = ctx.clock.call("build", steps.restore_or_build, ctx)
        if ctx.cfg.tracking.log_model:
            ctx.background.submit("prepare_model_logging", tracking.prepare_model_logging)
        fitted = ctx.fitted = ctx.clock.call("fit", steps.fit, ctx, start)
        ctx.model = start.model
        objective = steps.evaluate_and_log(ctx, start.model, fitted)
        steps.log_timings(ctx)
    checkpoints.remove(ctx.folder)  # finished: the logged model replaces it
    if ctx.job.parent_run_id is None:  # a sweep's jobs: the sweep prints where to see them all
        print(tracking.where_to_see(ctx.job.client.tracking_uri, ctx.job.experiment_id, ctx.run.run_id))
    return objective


def find_learning_rate(ctx: steps.RunContext) -> float:
    """sweep=lr_find: the range test, in a run of its own (no checkpoint, no test metrics)."""
    with steps.opened_run(ctx):
        suggested = steps.find_learning_rate(ctx)
    return float("nan") if suggested is None else suggested


def stopped(stop: KeyboardInterrupt, signals: RunSignals, job: Job, *, exit_on_stop: bool = True) -> float:
    """After a Ctrl-C or SIGTERM the run has ended KILLED (its epochs and checkpoint kept). A
    sweep job returns, so that the launcher ends the sweep in order; a single run exits as a
    process ended by that signal would (128 + its number), or (`exit_on_stop` false: hw4.api)
    raises the KeyboardInterrupt on."""
    signum = getattr(stop, "signum", 0) or signals.signum() or signal.SIGINT
    if job.run_id is None:
        print(f"stopped ({signal_name(signum)}) before the run began")
    else:
        how_to_continue = (
            "" if job.parent_run_id else (f"; continue it with the same command and trainer.resume={job.run_id}")
        )
        print(
            f"stopped ({signal_name(signum)}): run {job.run_id} KILLED, its epochs and checkpoint kept{how_to_continue}"
        )
    if job.parent_run_id:
        return float("nan")
    if not exit_on_stop:
        raise stop
    raise SystemExit(128 + signum)


def command_line(args: list[str]) -> list[str]:
    """hw4-train's overrides as Hydra is to read them: `+experiment=X` as `experiment=X`
    (config.plain_preset_overrides), `sweep=refine` as the finer grid it runs (hw4.sweep.refine).
    hw4.api reads its overrides through here too."""
    args = config.plain_preset_overrides(args)
    return refine.expand(args) if refine.PRESET in args else args


def expanded(args: list[str]) -> list[str]:
    """`command_line(args)`, its error (before Hydra, which would report it) as one line, exit 1."""
    try:
        return command_line(args)
    except Hw4Error as error:
        print(error, file=sys.stderr)
        raise SystemExit(1) from None


def expands_presets(app: Callable[..., float]) -> Callable[..., float]:
    """Let `hw4-train +experiment=X` mean `experiment=X` (config.plain_preset_overrides), and
    expand `sweep=refine` into the finer grid it runs (hw4.sweep.refine): applied to the command
    line before Hydra parses it; a config passed in (compose API) is left alone."""

    @functools.wraps(app)
    def from_the_command_line(*args: Any, **kwargs: Any) -> float:
        if not args and not kwargs:
            sys.argv[1:] = expanded(sys.argv[1:])
        return app(*args, **kwargs)

    return from_the_command_line


def run(cfg: DictConfig, *, exit_on_stop: bool = True) -> Outcome:
    """Train, evaluate and track one configuration (hw4-train's job, and hw4.api.train's)."""
    clock = timing.Timings(since_process_start=timing.first_in_process())  # logged at the run's end
    config.check(cfg)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend not in ("tensorflow", "jax"):  # torch: its gradient and compile are not built here
        raise ConfigError(f"KERAS_BACKEND={backend}: hw4 trains on tensorflow (the default) or jax")
    # Imported here, not at the top: --help and --cfg must not pay for MLflow and scikit-learn.
    with clock.step("imports"):
        from hw4 import tracking
        from hw4.sweep import context, members
        from hw4.sweep import job as sweep_job

    sweep_job.leave_ctrl_c_to_the_launcher()
    signals = RunSignals(context.stop_file())  # entered around the run; a sweep's stop reaches it too
    if signals.stop_requested:  # the sweep was stopped before this job began
        print(f"sweep stopped: job {HydraConfig.get().job.num} not started")
        return Outcome(float("nan"), note="the sweep was stopped before this job began")
    launch_dir = get_original_cwd()
    system.use_xla_cache(cfg.trainer.xla_cache, Path(launch_dir))  # before TensorFlow starts its devices
    cfg.data.dir = to_absolute_path(cfg.data.dir) if cfg.data.dir else None
    tracking.set_retry_budget(cfg.tracking.retry_s)

    # Fail fast: the tracking store, then the data, before TensorFlow's slow start.
    job = clock.call("store", sweep_job.open_job, cfg.tracking, launch_dir)
    params = clock.call("data", steps.run_params, cfg)
    sweep_job.find_earlier_attempts(job, params)
    if job.finished is not None:  # a continued sweep: this configuration and seed are done
        context.mark_started()
        if job.trial is not None:
            job.trial.found_finished(job.client, job.finished)
        print(f"already finished as run {job.finished.info.run_id}: not trained again")
        objective = job.finished.data.metrics.get(cfg.tracking.objective, float("nan"))
        return Outcome(objective, note=f"already finished as run {job.finished.info.run_id}")
    resume_id = cfg.trainer.resume or job.resume_run_id
    if resume_id:
        tracking.check_resumable(job.client, resume_id, params)
    raw, splits = clock.call("data", steps.load_data, cfg)
    clock.call("imports", quiet.load_keras)  # Keras and its backend load here, without their start-up lines
    from hw4.training import runtime

    config.check_model_arguments(cfg.model)  # before a run exists: a typo is one line, no run
    parallel_jobs = sweep_job.parallel_jobs()
    runtime.use_compile_cache(cfg.trainer.xla_cache, Path(launch_dir))
    threads = runtime.configure_runtime(cfg.trainer, parallel_jobs=parallel_jobs)
    if cfg.trainer.verbose == 1 and (parallel_jobs > 1 or members.current() is not None):
        cfg.trainer.verbose = 2  # parallel jobs' or members' progress bars would interleave: a line per epoch
    ctx = steps.RunContext(
        cfg=cfg, job=job, launch_dir=launch_dir, params=params, raw=raw, splits=splits,
        signals=signals, clock=clock, resume_id=resume_id,
    )  # fmt: skip
    ctx.tags = steps.run_tags(ctx, threads=threads)
    try:
        with signals:
            objective = find_learning_rate(ctx) if cfg.lr_find.enabled else train(ctx)
    except KeyboardInterrupt as stop:
        return Outcome(stopped(stop, signals, job, exit_on_stop=exit_on_stop), note="stopped")
    if signals.stop_requested and job.parent_run_id is None:  # a sweep job returns; its launcher stops
        print(f"stopped ({signal_name(signals.signum())}) after run {job.run_id} FINISHED: it came in the last epoch")
        if not exit_on_stop:
            raise KeyboardInterrupt(f"stopped after run {job.run_id} FINISHED")
        raise SystemExit(128 + signals.signum())
    return Outcome(objective, ctx)


def run_for_sweep(cfg: DictConfig) -> float:
    """A job of hw4.api.sweep: the sweep objective, as Hydra's sweepers take it."""
    return run(cfg, exit_on_stop=False).objective


@expands_presets
@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train, evaluate and track one configuration; returns the sweep objective
    (tracking.objective, by default the best epoch's validation accuracy)."""
    return run(cfg).objective


def cli() -> None:
    """The `hw4-train` console script: `main`, with the exit status of a process ended by a
    signal (128 + its number) when one stopped it: after a sweep ended in order (Hydra's own
    exit would be 0), or at once on a second signal to a sweep's launcher (joblib then ends
    its workers; the parent run is ended at exit). A run that ended in order exits without
    the interpreter's slow teardown of TensorFlow (system.exit_now)."""
    from hw4 import redaction
    from hw4.sweep import callback

    with redaction.redacted_console():  # Hydra and MLflow echo a tracking.uri typed here
        try:
            main()
        except KeyboardInterrupt as stop:
            signum = getattr(stop, "signum", 0) or signal.SIGINT
            print(str(stop) or f"stopped at once ({signal_name(signum)})", file=sys.stderr)
            sys.exit(128 + signum)
    callback.exit_if_stopped()
    system.exit_now(0)


if __name__ == "__main__":
    cli()
