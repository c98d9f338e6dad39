"""`hw4-train`: the Hydra entrypoint. It only wires the steps of a run (hw4.steps) together,
and reads top to bottom: the console script, Hydra's job, one run, its training.

    hw4-train +experiment=part4_lenet_bn data.dir=../shared/datasets/fashion-mnist
    hw4-train -m optimizer.lr=1e-3,1e-2 model=mlp,lenet

A stop (Ctrl-C, SIGTERM) of a single run raises `Stopped(signum)` out of `run`, a
KeyboardInterrupt: the console script turns it into the exit status of a process ended by that
signal, hw4.api lets it reach the notebook. A sweep's job returns instead, so that its launcher
ends the sweep in order. TensorFlow is imported inside `run`, after the config is composed and
checked, so `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from hw4 import config, steps
from hw4.errors import ConfigError, Hw4Error
from hw4.runtime import quiet, system, timing
from hw4.runtime.signals import RunSignals, Stopped, exit_status, signal_name
from hw4.sweep import refine

if TYPE_CHECKING:
    import keras

    from hw4.sweep.job import Job

config.register_configs("config")


def command_line(args: list[str]) -> list[str]:
    """hw4-train's overrides as Hydra is to read them: `+experiment=X` as `experiment=X`
    (config.plain_preset_overrides), `sweep=refine` as the finer grid it runs (hw4.sweep.refine).
    hw4.api reads its overrides through here too."""
    args = config.plain_preset_overrides(args)
    return refine.expand(args) if refine.PRESET in args else args


def expands_presets(app: Callable[..., float]) -> Callable[..., float]:
    """Apply `command_line` to the command line before Hydra parses it (its error as one line,
    exit 1); a config passed in (compose API) is left alone."""

    @functools.wraps(app)
    def from_the_command_line(*args: Any, **kwargs: Any) -> float:
        if not args and not kwargs:
            try:
                sys.argv[1:] = command_line(sys.argv[1:])
            except Hw4Error as error:
                print(error, file=sys.stderr)
                raise SystemExit(1) from None
        return app(*args, **kwargs)

    return from_the_command_line


def cli() -> None:
    """The `hw4-train` console script: `main`, and the exit status of a process ended by a
    signal when one stopped it (a run, a sweep after it ended in order, or a launcher stopped
    at once by a second signal: joblib then ends its workers, the parent run ends at exit). A
    run that ended in order exits without the interpreter's slow teardown of TensorFlow
    (system.exit_now)."""
    from hw4 import redaction
    from hw4.sweep import callback

    with redaction.redacted_console():  # Hydra and MLflow echo a tracking.uri typed here
        try:
            main()
            callback.raise_if_stopped()
        except KeyboardInterrupt as stop:
            print(str(stop) or f"stopped at once ({signal_name(signal.SIGINT)})", file=sys.stderr)
            sys.exit(exit_status(stop))
    system.exit_now(0)


@expands_presets
@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train, evaluate and track one configuration; returns the sweep objective
    (tracking.objective, by default the best epoch's validation accuracy)."""
    return run(cfg).objective


@dataclass(frozen=True, repr=False)
class TrainedRun:
    """What one trained run made (hw4.api.train returns it to a notebook)."""

    run_id: str
    objective: float  # tracking.objective, as a sweep ranks it
    history: dict[str, list[float]]  # per-epoch metrics, every epoch (a resumed run's included)
    test_metrics: dict[str, float]
    model: keras.Model  # the weights the test metrics are of
    ui: str  # where to see the run in MLflow's UI

    def __repr__(self) -> str:  # not the whole history and model
        return f"TrainedRun(run_id={self.run_id!r}, objective={self.objective:.4f}, test_metrics={self.test_metrics})"

    def _repr_html_(self) -> str:  # a notebook shows this for the cell's value
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in self.test_metrics.items())
        return f"<b>run {self.run_id}</b>: {metrics}<br>{self.ui}"


@dataclass(frozen=True)
class Outcome:
    """What one job returned: the sweep objective, and the run when one was trained."""

    objective: float
    trained: Optional[TrainedRun] = None
    note: str = ""  # why no run was trained: already finished, stopped, a range test


def run(cfg: DictConfig) -> Outcome:
    """Train, evaluate and track one configuration (hw4-train's job, and hw4.api's). Raises
    Stopped when a signal stopped a single run; a sweep's job returns."""
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
    cfg = config.typed_options(cfg)  # a copy where a float typed as an integer differs (0 -> 0.0)
    if cfg.data.dir:  # a copy with the data's absolute path, as the run records it
        cfg = cast(DictConfig, OmegaConf.merge(cfg, {"data": {"dir": to_absolute_path(cfg.data.dir)}}))

    # Fail fast: the tracking store, then the data, before TensorFlow's slow start.
    with clock.step("store"):
        job = sweep_job.open_job(cfg.tracking, launch_dir)
    with clock.step("data"):
        params = steps.run_params(cfg)
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
    with clock.step("data"):
        raw, splits = steps.load_data(cfg)
    with clock.step("imports"):
        quiet.load_keras()  # Keras and its backend load here, without their start-up lines
    from hw4.training import runtime

    config.check_model_arguments(cfg.model)  # before a run exists: a typo is one line, no run
    parallel_jobs = sweep_job.parallel_jobs()
    runtime.use_compile_cache(cfg.trainer.xla_cache, Path(launch_dir))
    threads = runtime.configure_runtime(cfg.trainer, parallel_jobs=parallel_jobs)
    shared_console = parallel_jobs > 1 or members.current() is not None
    ctx = steps.RunContext(
        cfg=cfg, job=job, launch_dir=launch_dir, params=params, raw=raw, splits=splits,
        signals=signals, clock=clock, resume_id=resume_id,
        # Parallel jobs' or members' progress bars would interleave: a line per epoch instead.
        verbose=2 if cfg.trainer.verbose == 1 and shared_console else cfg.trainer.verbose,
    )  # fmt: skip
    ctx.tags = steps.run_tags(ctx, threads=threads)
    try:
        with signals:
            if cfg.lr_find.enabled:
                outcome = Outcome(find_learning_rate(ctx), note="a learning-rate range test")
            else:
                trained = train(ctx)
                outcome = Outcome(trained.objective, trained)
    except KeyboardInterrupt as stop:
        return stopped(stop, signals, job)
    if signals.stop_requested and job.parent_run_id is None:  # a sweep job returns; its launcher stops
        signum = signals.signum()
        raise Stopped(
            signum, f"stopped ({signal_name(signum)}) after run {job.run_id} FINISHED: it came in the last epoch"
        )
    return outcome


def train(ctx: steps.RunContext) -> TrainedRun:
    """One run, top to bottom: open it, restore or build the model, fit, evaluate and log."""
    from hw4 import checkpoints, tracking

    with steps.opened_run(ctx) as run:
        assert ctx.background is not None and ctx.folder is not None  # opened_run set them
        with ctx.clock.step("build"):
            start = steps.restore_or_build(ctx)
        if ctx.cfg.tracking.log_model:
            ctx.background.submit("prepare_model_logging", tracking.prepare_model_logging)
        with ctx.clock.step("fit"):
            fitted = steps.fit(ctx, start)
        evaluated = steps.evaluate_and_log(ctx, start.model, fitted)
        steps.log_timings(ctx)
    checkpoints.remove(ctx.folder)  # finished: the logged model replaces it
    ui = tracking.where_to_see(ctx.job.client.tracking_uri, ctx.job.experiment_id, run.run_id)
    if ctx.job.parent_run_id is None:  # a sweep's jobs: the sweep prints where to see them all
        print(ui)
    return TrainedRun(
        run_id=run.run_id, objective=evaluated.objective, history=fitted.history,
        test_metrics=evaluated.test_metrics, model=start.model, ui=ui,
    )  # fmt: skip


def find_learning_rate(ctx: steps.RunContext) -> float:
    """sweep=lr_find: the range test, in a run of its own (no checkpoint, no test metrics)."""
    with steps.opened_run(ctx):
        suggested = steps.find_learning_rate(ctx)
    return float("nan") if suggested is None else suggested


def stopped(stop: KeyboardInterrupt, signals: RunSignals, job: Job) -> Outcome:
    """After a Ctrl-C or SIGTERM the run has ended KILLED (its epochs and checkpoint kept). A
    sweep's job says so and returns, so that the launcher ends the sweep in order; a single run
    raises Stopped with that line."""
    signum = getattr(stop, "signum", 0) or signals.signum() or signal.SIGINT
    if job.run_id is None:
        line = f"stopped ({signal_name(signum)}) before the run began"
    else:
        how_to_continue = (
            "" if job.parent_run_id else f"; continue it with the same command and trainer.resume={job.run_id}"
        )
        line = (
            f"stopped ({signal_name(signum)}): run {job.run_id} KILLED, its epochs and checkpoint kept{how_to_continue}"
        )
    if job.parent_run_id is None:
        raise Stopped(signum, line) from None
    print(line)
    return Outcome(float("nan"), note="stopped")


if __name__ == "__main__":
    cli()
