"""The steps of one training run, each on one typed `RunContext`.

`hw4.train` wires them, top to bottom: prepare the context (store, data, tags), open the run,
restore or build the model, fit, evaluate and log. TensorFlow, MLflow and scikit-learn are
imported inside the steps, never at import time, so `hw4-train --help` stays fast; their types
are imported for type checkers only.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, cast

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hw4 import names
from hw4.errors import ConfigError, TrainingDiverged
from hw4.runtime import timing

if TYPE_CHECKING:
    import keras

    from hw4.artifacts import Background
    from hw4.checkpoints import CheckpointState
    from hw4.data import RawData, Splits
    from hw4.runtime.signals import RunSignals
    from hw4.sweep.job import Job
    from hw4.tracking import RunLogger


@dataclass(kw_only=True)
class RunContext:
    """One run's state, handed from step to step. The first group is known once the config is
    checked and the data loaded; `run`, `folder` and `background` once the run is open."""

    cfg: DictConfig
    job: Job
    launch_dir: str
    params: dict[str, Any]  # as the run logs them (run_params)
    raw: RawData
    splits: Splits
    signals: RunSignals
    clock: timing.Timings
    verbose: int  # trainer.verbose, or 2 (a line per epoch) where jobs share the console
    resume_id: Optional[str] = None  # the run to reopen: trainer.resume, or a continued sweep's
    tags: dict[str, Any] = field(default_factory=dict)
    run: Optional[RunLogger] = None
    folder: Optional[Path] = None  # the run's checkpoints
    background: Optional[Background] = None  # figures drawn while the run goes on


@dataclass
class StartingPoint:
    """What training starts from: a checkpoint's model and state, or a new compiled model."""

    model: keras.Model
    state: CheckpointState
    best_weights: Optional[list] = None  # the best epoch's weights, kept by trainer.restore_best
    # Epochs the store holds for the run: fit logs the others (read once, when the run resumes).
    logged_epochs: frozenset[int] = frozenset()


@dataclass
class Fitted:
    """What fit left: the full history, tags saying why training stopped, and the epoch whose
    weights the model now holds."""

    history: dict[str, list[float]]
    stop_tags: dict[str, Any]
    evaluated_epoch: int


@dataclass(frozen=True)
class Evaluated:
    """What evaluate_and_log left: the sweep objective and the test metrics it logged."""

    objective: float
    test_metrics: dict[str, float]


def run_name(cfg: DictConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.model.name}-{cfg.optimizer.name}-lr{cfg.optimizer.lr:g}"


def checkpoint_folder(cfg: DictConfig, launch_dir: str, run_id: str) -> Path:
    return Path(launch_dir) / cfg.trainer.checkpoint_dir / run_id


def lock_file(cfg: DictConfig, launch_dir: str, run_id: str) -> Path:
    from hw4.runtime import locks

    return locks.lock_path(Path(launch_dir) / cfg.trainer.checkpoint_dir, run_id)


def load_data(cfg: DictConfig) -> tuple[RawData, Splits]:
    """The raw arrays and the prepared splits; the split follows data.split_seed only. Kept for
    the next job of a sweep in this process (see data.load_prepared)."""
    from hw4 import data

    return data.load_prepared(
        cfg.data.dir,
        input_shape=cfg.model.input_shape,
        n_classes=len(cfg.data.class_names),
        val_fraction=cfg.data.val_fraction,
        seed=cfg.data.split_seed,
        limit=cfg.data.limit,
        prep=cfg.prep,
    )


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, flattened, as a run records it: credentials masked (tracking.uri),
    and the data's content digest, which the run's identity hashes instead of data.dir."""
    from hw4 import data, tracking

    params = tracking.redact_params(tracking.flatten(cast(dict, OmegaConf.to_container(cfg, resolve=True))))
    params[names.DATA_DIGEST] = data.source_digest(cfg.data.dir)
    return params


def run_tags(ctx: RunContext, *, threads: int) -> dict[str, Any]:
    from hw4 import tracking

    cfg = ctx.cfg
    source = tracking.source_tags("hw4-train", ctx.launch_dir)
    return {
        **source,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "overrides": " ".join(tracking.redact(o) for o in HydraConfig.get().overrides.task),
        "git_commit": source.get("mlflow.source.git.commit", "none"),
        "tf_threads": threads,
        names.DTYPE_POLICY: cfg.trainer.precision,  # the Keras dtype policy the model is built in
        names.CONFIG_KEY: names.config_key(ctx.params),
        names.JOB_KEY: names.job_key(ctx.params),
        names.PLAN_KEY: names.plan_key(ctx.params),
        **ctx.job.tags,
    }


@contextlib.contextmanager
def opened_run(ctx: RunContext) -> Iterator[RunLogger]:
    """Open (or reopen) the run; every resource it takes (lock, figure thread, system metrics)
    is released before the run ends with the status of how the block ended."""
    from hw4 import artifacts, checkpoints, tracking
    from hw4.runtime import locks
    from hw4.sweep import context, job

    cfg, client = ctx.cfg, ctx.job.client
    with contextlib.ExitStack() as stack:
        if ctx.resume_id:  # locked before the run is reopened: a live process's run stays untouched
            stack.enter_context(locks.RunLock(lock_file(cfg, ctx.launch_dir, ctx.resume_id), ctx.resume_id))
            # Again, now that no other process can end it: it may have finished since the check
            # made before the data loaded.
            tracking.check_resumable(client, ctx.resume_id, ctx.params)
        ctx.run = stack.enter_context(
            tracking.start_run(
                client,
                ctx.job.experiment_id,
                run_name(cfg),
                tags=ctx.tags,
                parent_run_id=ctx.job.parent_run_id,
                run_id=ctx.resume_id,
            )  # fmt: skip
        )
        run_id = ctx.job.run_id = ctx.run.run_id
        context.mark_started()
        if ctx.job.trial is not None:
            ctx.job.trial.link(run_id)
        # A sweep's continue command resumes its jobs; the range test keeps no checkpoint.
        if ctx.job.parent_run_id is None and not ctx.resume_id and not cfg.lr_find.enabled:
            print(f"run {run_id}: if it is interrupted, continue it with the same command and trainer.resume={run_id}")
        if not ctx.resume_id:
            stack.enter_context(locks.RunLock(lock_file(cfg, ctx.launch_dir, run_id), run_id))
        job.supersede(client, ctx.job.supersedes, run_id)  # FAILED attempts this run replaces
        for replaced in ctx.job.supersedes:  # their checkpoints will not be resumed
            checkpoints.remove(checkpoint_folder(cfg, ctx.launch_dir, replaced))
        stack.enter_context(tracking.system_metrics(client, run_id, cfg.tracking.system_metrics))
        ctx.background = stack.enter_context(artifacts.Background(ctx.clock))  # ends before the run does
        ctx.folder = checkpoint_folder(cfg, ctx.launch_dir, run_id)
        yield ctx.run


def log_run_inputs(ctx: RunContext, model: keras.Model) -> None:
    """What a new run records before training: config, model summary, data, sample grids (drawn
    in the background)."""
    from hw4 import artifacts, data, models, tracking

    cfg, run = ctx.cfg, ctx.run
    assert run is not None and ctx.background is not None  # opened_run set it
    hydra_cfg = HydraConfig.get()
    # A run reopened before its first epoch holds the params of its first attempt: MLflow refuses
    # to change one, and the bookkeeping ones (trainer.resume, data.dir) may differ; the others
    # were checked equal (tracking.check_resumable).
    logged = run.client.get_run(run.run_id).data.params
    run.log_params({k: v for k, v in ctx.params.items() if k not in logged})
    if hydra_cfg.output_subdir:  # .hydra/: config.yaml, hydra.yaml, overrides.yaml
        # They keep the command line as typed (a tracking.uri with its password): the local copy
        # is the user's own disk; the one others can read goes up redacted.
        saved = Path(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir)
        for path in sorted(p for p in saved.iterdir() if p.is_file()):
            run.log_text(tracking.redact(path.read_text(encoding="utf-8")), f"config/{path.name}")
    run.log_text(models.summary_text(model), artifacts.SUMMARY)
    summary = artifacts.data_summary(ctx.raw, ctx.splits)  # with the preparation's record (hw4.data.prepare)
    run.log_dict(summary, artifacts.DATA_SUMMARY)
    digest = data.digest(ctx.raw)
    run.log_dataset(cfg.data.name, digest, cfg.data.dir or "keras.datasets", summary["prepared_shapes"])
    ctx.background.submit("sample_grids", artifacts.log_sample_grids, run, ctx.raw, digest, list(cfg.data.class_names))


def logged_epochs(run: RunLogger) -> set[int]:
    return {m.step for m in run.client.get_metric_history(run.run_id, names.LOSS)}


def restore_or_build(ctx: RunContext) -> StartingPoint:
    """The checkpoint of a resumed run, else a new compiled model whose run gets its inputs
    logged. Epochs a checkpoint holds but the store missed (a kill between the two) are logged."""
    from hw4 import checkpoints
    from hw4.training import runtime, schedules

    run, resumed = ctx.run, bool(ctx.resume_id)
    assert run is not None and ctx.folder is not None  # opened_run set it
    logged = logged_epochs(run) if resumed else set()
    if resumed and checkpoints.exists(ctx.folder):
        model, state, best_weights = checkpoints.load(ctx.folder)
        from hw4.training import step

        if step.learning_rate_position(model.optimizer) is None:
            raise ConfigError(
                f"run {run.run_id}: its checkpoint holds a learning-rate schedule inside the optimizer "
                "(saved before hw4 set the rate in the training step); it cannot be continued: train it again"
            )
        for epoch in range(state.epoch + 1):
            if epoch not in logged:
                run.log_metrics(state.epoch_logs(epoch), step=epoch)
        print(f"resuming run {run.run_id} after epoch {state.epoch + 1}")
        return StartingPoint(model, state, best_weights, frozenset(logged | set(range(state.epoch + 1))))
    if logged:
        raise ConfigError(f"trainer.resume={run.run_id}: no checkpoint was kept for that run")
    if resumed:
        print(f"run {run.run_id} ended before its first epoch: training it from the start")
    cfg = ctx.cfg
    model = runtime.build_model(cfg.model, num_classes=len(cfg.data.class_names), seed=cfg.trainer.seed)
    runtime.compile_model(model, schedules.build_optimizer(cfg.optimizer))
    log_run_inputs(ctx, model)
    return StartingPoint(model, checkpoints.CheckpointState())


@dataclass(eq=False)
class Training:
    """One run's part in a training program: its member of the loop, and the callbacks whose
    decisions its run records."""

    member: Any  # hw4.training.loop.Member, made once the callbacks are
    past: dict[str, list[float]] = field(default_factory=dict)  # the epochs before this attempt
    settings: Any = None  # hw4.training.loop.LoopSettings, what the run's program needs
    best: Any = None  # hw4.training.callbacks.BestEpoch
    pruner: Any = None  # hw4.training.callbacks.EpochPruner


def loop_settings(cfg: DictConfig, model: keras.Model, n_train: int, *, verbose: Optional[int] = None) -> Any:
    """What the members of one program share (hw4.training.loop.LoopSettings); `verbose`:
    the run's (RunContext.verbose), else trainer.verbose."""
    from hw4 import data
    from hw4.training import compile, loop, schedules

    trainer = cfg.trainer
    augment = data.preparation(cfg.prep).augment  # drawn per training batch: none but for prep=augment
    steps_per_epoch = math.ceil(n_train / trainer.batch_size)
    return loop.LoopSettings(
        epochs=trainer.epochs, batch_size=trainer.batch_size, eval_batch_size=trainer.eval_batch_size,
        schedule=schedules.build_schedule(cfg.schedule, steps_per_epoch=steps_per_epoch, epochs=trainer.epochs),
        augment=augment, verbose=trainer.verbose if verbose is None else verbose,
        jit=compile.wants_xla(
            model, trainer.jit_compile, augment=augment is not None, steps=trainer.epochs * steps_per_epoch
        ),
    )  # fmt: skip


def prepare_training(ctx: RunContext, start: StartingPoint) -> Training:
    """The run as a member of a program: its callbacks in fit's order (best epoch, checkpoint,
    metrics, pruner last: the epoch is saved and logged before a stop), its seed and peak rate."""
    from hw4 import checkpoints
    from hw4.sweep import job
    from hw4.training import callbacks as epoch_callbacks
    from hw4.training import compile, loop

    trainer, run, state = ctx.cfg.trainer, ctx.run, start.state
    assert run is not None and ctx.folder is not None  # opened_run set it
    best = None
    if trainer.early_stopping or trainer.restore_best:
        best = epoch_callbacks.BestEpoch(
            trainer.early_stopping, trainer.restore_best, state.history, start.best_weights
        )
    callbacks = [best] if best else []  # first: the checkpoint saves the best weights it holds
    settings = loop_settings(ctx.cfg, start.model, len(ctx.splits.x_train), verbose=ctx.verbose)
    run.set_tags({
        names.XLA: str(settings.jit).lower(), names.BACKEND: compile.backend(),
        **({"checkpoint_dir": ctx.folder} if trainer.checkpoint else {}),
    })  # fmt: skip
    training = Training(
        member=None,
        past={name: list(values) for name, values in state.history.items()},
        settings=settings,
        best=best,
    )  # the history copied before training: the checkpoint's state extends its own lists
    checkpoint = None
    if trainer.checkpoint:
        kept = (lambda: best.best_weights) if best is not None and trainer.restore_best else None
        checkpoint = checkpoints.EpochCheckpoint(ctx.folder, state, kept, ended_tags=lambda: stop_tags(training))
        callbacks.append(checkpoint)
    callbacks.append(epoch_callbacks.EpochMetricsLogger(run.log_metrics, start.logged_epochs))
    if ctx.verbose:  # verbose 2 is one line per epoch
        callbacks.append(epoch_callbacks.StepProgress())
    if ctx.job.trial is not None:  # an Optuna search: the study's pruner decides
        ctx.job.trial.report_history(state.history)
        training.pruner = epoch_callbacks.EpochPruner(ctx.job.trial.decide)
    elif trainer.prune == "median" and ctx.job.parent_run_id:
        training.pruner = epoch_callbacks.MedianPruner(
            job.sibling_values(ctx.job.client, ctx.job, run.run_id), trainer.prune_after
        )
    ended = state.ended is not None  # a resume of a run that ended early: nothing left to train
    training.member = loop.Member(
        model=start.model, callbacks=callbacks, seed=trainer.seed, peak=ctx.cfg.optimizer.lr,
        initial_epoch=trainer.epochs if ended else state.epoch + 1,
        # After every member's epoch is saved and logged: a pruner compares it with its siblings'.
        deciders=[training.pruner] if training.pruner else [],
        on_ended=(lambda: checkpoint.mark_ended(stop_tags(training))) if checkpoint else None,
    )  # fmt: skip
    return training


def stop_tags(training: Training) -> dict[str, Any]:
    """Why training ended before its last epoch, as the run's tags (none when it did not)."""
    tags: dict[str, Any] = {}
    if training.pruner and training.pruner.pruned_at is not None:
        tags.update({names.PRUNED: "true", names.PRUNED_AT: training.pruner.pruned_at})
    if training.best and training.best.stopped_epoch:
        tags[names.EARLY_STOPPED_AT] = training.best.stopped_epoch
    return tags


def finish_training(ctx: RunContext, start: StartingPoint, training: Training) -> Fitted:
    """What the program left for this run: its whole history and why it stopped. Raises Stopped
    when a signal stopped it before its last epoch, TrainingDiverged on a NaN loss."""
    from hw4 import checkpoints
    from hw4.runtime.signals import Stopped, signal_name

    member, state = training.member, start.state
    history = {name: list(values) for name, values in training.past.items()}
    for name, values in member.history.items():
        history.setdefault(name, []).extend(values)
    if member.stopped_after is not None:
        signum = ctx.signals.signum()
        raise Stopped(signum, f"{signal_name(signum)}: stopped after epoch {member.stopped_after + 1}")
    losses = history.get(names.LOSS, [])
    if losses and not math.isfinite(losses[-1]):
        if ctx.folder is not None:  # its last weights are NaN: nothing to resume
            checkpoints.remove(ctx.folder)
        raise TrainingDiverged(
            f"loss became {losses[-1]} in epoch {len(losses)}; training stopped (lower optimizer.lr?)"
        )
    tags = state.ended if state.ended is not None else stop_tags(training)
    best = training.best
    restored = best is not None and ctx.cfg.trainer.restore_best and best.best_weights is not None
    evaluated = best.best_epoch if restored else len(history[names.LOSS]) - 1
    return Fitted(history, tags, evaluated)


def fit(ctx: RunContext, start: StartingPoint) -> Fitted:
    """Train the run: alone, a program of one member; under hydra/launcher=members, as a member
    of its group's program (hw4.sweep.members), trained once every job of the group is here."""
    from hw4.sweep import members
    from hw4.training import loop

    training = prepare_training(ctx, start)
    ctx.signals.check()  # a signal before training: stop before the first epoch
    coordinator = members.current()
    if coordinator is not None:
        coordinator.park(training.member, ctx.splits, training.settings)
    else:
        loop.train([training.member], ctx.splits, training.settings, ctx.signals)
    return finish_training(ctx, start, training)


def evaluate_and_log(ctx: RunContext, model: keras.Model, fitted: Fitted) -> Evaluated:
    """Test metrics, best-epoch metrics, figures (in the background) and the model."""
    from hw4 import artifacts
    from hw4.training import evaluate

    cfg, run, splits, background = ctx.cfg, ctx.run, ctx.splits, ctx.background
    assert run is not None and background is not None  # opened_run set it
    with ctx.clock.step("evaluate"):
        evaluation = evaluate.evaluate(model, splits, cfg.trainer.eval_batch_size)
    best = evaluate.best_epoch(fitted.history)
    run.log_metrics({**evaluation.metrics(), **best, names.EVALUATED_EPOCH: fitted.evaluated_epoch})
    run.set_tags(fitted.stop_tags)
    background.submit(
        "evaluation_figures", artifacts.log_evaluation, run, fitted.history, splits.x_test, splits.test_labels,
        evaluation.predicted, evaluation.confusion, list(cfg.data.class_names), title=run_name(cfg),
    )  # fmt: skip
    run.log_dict(artifacts.first_sample_output(model, splits), artifacts.FIRST_SAMPLE)
    print(
        f"test loss {evaluation.test_loss:.4f}, test accuracy {evaluation.test_accuracy:.4f} "
        f"(weights of epoch {fitted.evaluated_epoch + 1}; best validation accuracy "
        f"{best.get(names.BEST_VAL_ACCURACY, float('nan')):.4f} at epoch "
        f"{int(best.get(names.BEST_EPOCH, -1)) + 1}; run {run.run_id})"
    )
    if cfg.tracking.log_model:
        with ctx.clock.step("log_model"):
            log_inference_model(ctx, model)
    with ctx.clock.step("wait_background"):
        background.wait()
    return Evaluated(float(best.get(cfg.tracking.objective, float("nan"))), evaluation.metrics())


def log_inference_model(ctx: RunContext, model: keras.Model) -> None:
    """The model a client takes away (hw4/serving.py): raw uint8 images in, class probabilities
    out, the run's preparation inside; its signature and input example are raw test images."""
    import numpy as np

    from hw4 import artifacts, serving

    pipeline = serving.inference_pipeline(model, ctx.splits.preparation)
    example = serving.example_input(ctx.raw.x_test[: artifacts.MODEL_EXAMPLES])
    assert ctx.run is not None  # opened_run set it
    ctx.run.log_keras_model(pipeline, example, np.asarray(pipeline(example, training=False)))


def log_timings(ctx: RunContext) -> None:
    timings = ctx.clock.report()
    assert ctx.run is not None  # opened_run set it
    ctx.run.log_metrics(timing.as_metrics(timings))
    ctx.run.log_dict(timings, timing.ARTIFACT)


def sweep_command(grid: list[float]) -> str:
    """The learning-rate sweep over `grid`, with this run's own overrides (the range test's left
    out, credentials masked): the same model, data preparation, batch size and data."""
    import shlex

    from hw4 import tracking

    own = [
        o for o in HydraConfig.get().overrides.task
        if not o.lstrip("+~").startswith(("sweep=", "lr_find.", "optimizer.lr="))
    ]  # fmt: skip
    words = ["sweep=lr", *own, "optimizer.lr=" + ",".join(f"{v:g}" for v in grid)]
    return "hw4-train " + " ".join(shlex.quote(tracking.redact(w)) for w in words)


def find_learning_rate(ctx: RunContext) -> Optional[float]:
    """sweep=lr_find: the range test on a new model (hw4/lr_find.py), its curve logged per batch
    and as a figure, its suggestion printed and tagged; returns the suggested rate (None when
    the curve is too short to tell)."""
    from hw4 import lr_find, plots
    from hw4.training import runtime, schedules

    cfg, run, settings = ctx.cfg, ctx.run, ctx.cfg.lr_find
    assert run is not None  # opened_run set it
    run.log_params(ctx.params)
    model = runtime.build_model(cfg.model, num_classes=len(cfg.data.class_names), seed=cfg.trainer.seed)
    runtime.compile_model(model, schedules.build_optimizer(cfg.optimizer))
    with ctx.clock.step("fit"):
        curve = lr_find.range_test(
            model, ctx.splits.x_train, ctx.splits.y_train, batch_size=cfg.trainer.batch_size,
            min_lr=settings.min_lr, max_lr=settings.max_lr, steps=settings.steps, explode=settings.explode,
            seed=cfg.trainer.seed,
        )  # fmt: skip
    run.log_series({names.LR_FIND_LR: curve.lrs, names.LR_FIND_LOSS: curve.losses})
    suggestion = lr_find.suggest(curve.lrs, curve.losses)
    run.log_figure(
        plots.lr_range_test(curve.lrs, curve.losses, suggestion.lr if suggestion else None), names.LR_FIND_FIGURE
    )
    ended = f"exploded at batch {curve.exploded_at + 1}" if curve.exploded_at is not None else "reached max_lr"
    if suggestion is None:
        print(f"lr_find: {len(curve.lrs)} batches ({ended}): too few to suggest a rate; lower lr_find.min_lr")
        run.set_tags({names.LR_FIND_ENDED: ended})
        return None
    command = sweep_command(suggestion.grid)
    run.log_metrics(
        {names.LR_FIND_SUGGESTED: suggestion.lr, names.LR_FIND_LOW: suggestion.low, names.LR_FIND_HIGH: suggestion.high}
    )
    run.set_tags({names.LR_FIND_ENDED: ended, names.LR_FIND_SWEEP: command})
    print(
        f"lr_find: {len(curve.lrs)} batches, {ended}. Steepest descent at lr {suggestion.lr:.3g}; "
        f"sweep {suggestion.low:.3g} to {suggestion.high:.3g}:\n  {command}"
    )
    return suggestion.lr
