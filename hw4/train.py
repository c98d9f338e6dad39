"""`hw4-train`: the Hydra entrypoint. It only wires data, model, training and tracking together.

    hw4-train +experiment=part4_lenet_bn data.dir=../shared/datasets/fashion-mnist
    hw4-train -m optimizer.lr=1e-3,1e-2 model=mlp,lenet

TensorFlow is imported inside `main`, after the config is composed and checked, so `--help`
and `--cfg job` stay fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from hw4 import config, names, quiet, timing
from hw4.errors import ConfigError
from hw4.signals import RunSignals, signal_name

config.register_configs()


def checkpoint_folder(cfg: DictConfig, launch_dir: str, run_id: str) -> Path:
    return Path(launch_dir) / cfg.trainer.checkpoint_dir / run_id


def lock_file(cfg: DictConfig, launch_dir: str, run_id: str) -> Path:
    from hw4 import locks

    return locks.lock_path(Path(launch_dir) / cfg.trainer.checkpoint_dir, run_id)


def run_name(cfg: DictConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.model.name}-{cfg.optimizer.name}-lr{cfg.optimizer.lr:g}"


def load_data(cfg: DictConfig) -> tuple[Any, Any]:
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
    )


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, flattened, as a run records it: credentials masked (tracking.uri),
    and the data's content digest, which the run's identity hashes instead of data.dir."""
    from hw4 import data, tracking

    params = tracking.redact_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
    params[names.DATA_DIGEST] = data.source_digest(cfg.data.dir)
    return params


def run_tags(cfg: DictConfig, launch_dir: str, params: dict, threads: int, extra: dict) -> dict:
    from hw4 import tracking

    source = tracking.source_tags("hw4-train", launch_dir)
    return {
        **source,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "overrides": " ".join(tracking.redact(o) for o in HydraConfig.get().overrides.task),
        "git_commit": source.get("mlflow.source.git.commit", "none"),
        "tf_threads": threads,
        names.CONFIG_KEY: names.config_key(params),
        names.JOB_KEY: names.job_key(params),
        names.PLAN_KEY: names.plan_key(params),
        **extra,
    }


def log_run_inputs(cfg: DictConfig, run: Any, params: dict, model: Any, raw: Any, splits: Any, background: Any) -> None:
    """What a new run records before training: config, model summary, data, sample grids (drawn
    in the background)."""
    from hw4 import artifacts, data, models

    hydra_cfg = HydraConfig.get()
    # A run reopened before its first epoch holds the params of its first attempt: MLflow refuses
    # to change one, and the bookkeeping ones (trainer.resume, data.dir) may differ; the others
    # were checked equal (tracking.check_resumable).
    logged = run.client.get_run(run.run_id).data.params
    run.log_params({k: v for k, v in params.items() if k not in logged})
    if hydra_cfg.output_subdir:  # .hydra/: config.yaml, hydra.yaml, overrides.yaml
        run.log_artifacts(os.path.join(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir), "config")
    run.log_text(models.summary_text(model), artifacts.SUMMARY)
    summary = artifacts.data_summary(raw, splits)
    run.log_dict(summary, artifacts.DATA_SUMMARY)
    digest = data.digest(raw)
    run.log_dataset(cfg.data.name, digest, cfg.data.dir or "keras.datasets", summary["prepared_shapes"])
    background.submit("sample_grids", artifacts.log_sample_grids, run, raw, digest, list(cfg.data.class_names))


def restore_or_build(cfg: DictConfig, run: Any, folder: Path, resumed: bool, params: dict, raw: Any, splits: Any, background: Any):
    """(model, checkpoint state, best weights or None): from the checkpoint of a resumed run,
    else a new compiled model whose run gets its inputs logged."""
    from hw4 import checkpoints, training

    logged = {m.step for m in run.client.get_metric_history(run.run_id, names.LOSS)} if resumed else set()
    if resumed and checkpoints.exists(folder):
        model, state, best_weights = checkpoints.load(folder)
        for epoch in range(state.epoch + 1):  # epochs the checkpoint holds but MLflow missed
            if epoch not in logged:
                run.log_metrics(state.epoch_logs(epoch), step=epoch)
        print(f"resuming run {run.run_id} after epoch {state.epoch + 1}")
        return model, state, best_weights
    if logged:
        raise ConfigError(f"trainer.resume={run.run_id}: no checkpoint was kept for that run")
    if resumed:
        print(f"run {run.run_id} ended before its first epoch: training it from the start")
    model = training.build_model(cfg.model, num_classes=len(cfg.data.class_names))
    optimizer = training.build_optimizer(cfg.optimizer)
    training.compile_model(model, optimizer, cfg.trainer.jit_compile, cfg.trainer.steps_per_execution)
    log_run_inputs(cfg, run, params, model, raw, splits, background)
    return model, checkpoints.CheckpointState(), None


def train(cfg: DictConfig, job: Any, run: Any, splits: Any, folder: Path, signals: RunSignals, model: Any, state: Any, best_weights: Any):
    """Fit with checkpoints, per-epoch metrics, early stopping, best weights and pruning as
    configured. Returns the full history, tags saying why training stopped, and the epoch
    whose weights the model now holds."""
    from hw4 import checkpoints, sweep, training

    trainer = cfg.trainer
    best = None
    if trainer.early_stopping or trainer.restore_best:
        best = training.BestEpoch(trainer.early_stopping, trainer.restore_best, state.history, best_weights)
    callbacks = [best] if best else []  # first: the checkpoint saves the best weights it holds
    if trainer.checkpoint:
        run.set_tags({"checkpoint_dir": folder})
        kept = (lambda: best.best_weights) if trainer.restore_best else None
        callbacks.append(checkpoints.EpochCheckpoint(folder, state, kept))
    logged = {m.step for m in run.client.get_metric_history(run.run_id, names.LOSS)} if state.epoch >= 0 else set()
    callbacks.append(training.EpochMetricsLogger(run.log_metrics, frozenset(logged)))
    pruner = None
    if trainer.prune == "median" and job.parent_run_id:
        pruner = training.MedianPruner(sweep.sibling_values(job.client, job, run.run_id), trainer.prune_after)
        callbacks.append(pruner)  # last: the epoch is saved and logged before a stop
    signals.check()  # a signal before training: stop before the first epoch
    try:
        history = training.fit(model, splits, trainer, callbacks, state.epoch + 1, state.history, signals)
    except training.TrainingDiverged:
        checkpoints.remove(folder)  # its last weights are NaN: nothing to resume
        raise
    tags: dict[str, Any] = {}
    if pruner and pruner.pruned_at is not None:
        tags.update({names.PRUNED: "true", names.PRUNED_AT: pruner.pruned_at})
    if best and best.stopped_epoch:
        tags[names.EARLY_STOPPED_AT] = best.stopped_epoch
    restored = best is not None and trainer.restore_best and best.best_weights is not None
    evaluated = best.best_epoch if restored else len(history[names.LOSS]) - 1
    return history, tags, evaluated


def evaluate_and_log(
    cfg: DictConfig, run: Any, model: Any, splits: Any, history: dict, tags: dict, evaluated: int, background: Any
) -> float:
    """Test metrics, best-epoch metrics, figures (in the background) and the model; returns the
    sweep objective."""
    from hw4 import artifacts, training

    clock = background.timings
    evaluation = clock.call("evaluate", training.evaluate, model, splits, cfg.trainer.eval_batch_size)
    best = training.best_epoch(history)
    run.log_metrics({**evaluation.metrics(), **best, names.EVALUATED_EPOCH: evaluated})
    run.set_tags(tags)
    class_names = list(cfg.data.class_names)
    background.submit(
        "evaluation_figures", artifacts.log_evaluation, run, history, splits.x_test, splits.test_labels,
        evaluation.predicted, evaluation.confusion, class_names, title=run_name(cfg),
    )  # fmt: skip
    run.log_dict(artifacts.first_sample_output(model, splits), artifacts.FIRST_SAMPLE)
    print(
        f"test loss {evaluation.test_loss:.4f}, test accuracy {evaluation.test_accuracy:.4f} "
        f"(weights of epoch {evaluated + 1}; best validation accuracy "
        f"{best.get(names.BEST_VAL_ACCURACY, float('nan')):.4f} at epoch "
        f"{int(best.get(names.BEST_EPOCH, -1)) + 1}; run {run.run_id})"
    )
    if cfg.tracking.log_model:
        example = slice(0, artifacts.MODEL_EXAMPLES)
        clock.call("log_model", run.log_keras_model, model, splits.x_test[example], evaluation.probabilities[example])
    clock.call("wait_background", background.wait)
    return float(best.get(names.OBJECTIVE, float("nan")))


def track_run(cfg: DictConfig, job: Any, resume_id: Any, tags: dict, data: tuple, signals: RunSignals, clock: Any) -> float:
    """Open (or reopen) the run and train, evaluate and log it; every resource it takes (lock,
    figure thread, system metrics) is released before the run ends with its status."""
    from hw4 import artifacts, checkpoints, locks, sweep, tracking

    launch_dir, params, raw, splits = data
    with contextlib.ExitStack() as stack:
        if resume_id:  # locked before the run is reopened: a live process's run stays untouched
            stack.enter_context(locks.RunLock(lock_file(cfg, launch_dir, resume_id), resume_id))
            # Again, now that no other process can end it: it may have finished since the check
            # made before the data loaded.
            tracking.check_resumable(job.client, resume_id, params)
        run = stack.enter_context(
            tracking.start_run(job.client, job.experiment_id, run_name(cfg), tags, job.parent_run_id, resume_id)
        )
        job.run_id = run.run_id
        sweep.mark_started()
        if job.parent_run_id is None and not resume_id:  # a sweep's continue command resumes its jobs
            print(f"run {run.run_id}: if it is interrupted, continue it with the same command and trainer.resume={run.run_id}")
        if not resume_id:
            stack.enter_context(locks.RunLock(lock_file(cfg, launch_dir, run.run_id), run.run_id))
        sweep.supersede(job.client, job.supersedes, run.run_id)  # FAILED attempts this run replaces
        for replaced in job.supersedes:  # their checkpoints will not be resumed
            checkpoints.remove(checkpoint_folder(cfg, launch_dir, replaced))
        stack.enter_context(tracking.system_metrics(job.client, run.run_id, cfg.tracking.system_metrics))
        background = stack.enter_context(artifacts.Background(clock))  # ends before the run does
        folder = checkpoint_folder(cfg, launch_dir, run.run_id)
        built = clock.call("build", restore_or_build, cfg, run, folder, bool(resume_id), params, raw, splits, background)
        if cfg.tracking.log_model:
            background.submit("prepare_model_logging", tracking.prepare_model_logging)
        history, stop_tags, evaluated = clock.call("fit", train, cfg, job, run, splits, folder, signals, *built)
        objective = evaluate_and_log(cfg, run, built[0], splits, history, stop_tags, evaluated, background)
        timings = clock.report()
        run.log_metrics(timing.as_metrics(timings))
        run.log_dict(timings, timing.ARTIFACT)
    checkpoints.remove(folder)  # finished: the logged model replaces it
    if job.parent_run_id is None:  # a sweep's jobs: the sweep prints where to see them all
        print(tracking.where_to_see(job.client.tracking_uri, job.experiment_id, run.run_id))
    return objective


def stopped(stop: KeyboardInterrupt, signals: RunSignals, job: Any) -> float:
    """After a Ctrl-C or SIGTERM the run has ended KILLED (its epochs and checkpoint kept). A
    sweep job returns, so that the launcher ends the sweep in order; a single run exits as a
    process ended by that signal would (128 + its number)."""
    signum = getattr(stop, "signum", 0) or signals.signum() or signal.SIGINT
    if job.run_id is None:
        print(f"stopped ({signal_name(signum)}) before the run began")
    else:
        how_to_continue = "" if job.parent_run_id else (
            f"; continue it with the same command and trainer.resume={job.run_id}"
        )
        print(f"stopped ({signal_name(signum)}): run {job.run_id} KILLED, its epochs and checkpoint kept{how_to_continue}")
    if job.parent_run_id:
        return float("nan")
    raise SystemExit(128 + signum)


@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train, evaluate and track one configuration; returns the best validation accuracy."""
    clock = timing.Timings(since_process_start=timing.first_in_process())  # logged at the run's end
    config.check(cfg)
    # Imported here, not at the top: --help and --cfg must not pay for MLflow and scikit-learn.
    with clock.step("imports"):
        from hw4 import sweep, tracking

    sweep.leave_ctrl_c_to_the_launcher()
    signals = RunSignals(sweep.stop_file())  # entered around the run; a sweep's stop reaches it too
    if signals.stop_requested:  # the sweep was stopped before this job began
        print(f"sweep stopped: job {HydraConfig.get().job.num} not started")
        return float("nan")
    launch_dir = get_original_cwd()
    cfg.data.dir = to_absolute_path(cfg.data.dir) if cfg.data.dir else None
    tracking.set_retry_budget(cfg.tracking.retry_s)

    # Fail fast: the tracking store, then the data, before TensorFlow's slow start.
    job = clock.call("store", sweep.open_job, cfg.tracking, launch_dir)
    params = clock.call("data", run_params, cfg)
    sweep.find_earlier_attempts(job, params)
    if job.finished is not None:  # a continued sweep: this configuration and seed are done
        sweep.mark_started()
        print(f"already finished as run {job.finished.info.run_id}: not trained again")
        return job.finished.data.metrics.get(names.OBJECTIVE, float("nan"))
    resume_id = cfg.trainer.resume or job.resume_run_id
    if resume_id:
        tracking.check_resumable(job.client, resume_id, params)
    raw, splits = clock.call("data", load_data, cfg)
    clock.call("imports", quiet.load_tensorflow)  # TensorFlow loads here, without its start-up lines
    from hw4 import training

    config.check_model_arguments(cfg.model)  # before a run exists: a typo is one line, no run
    parallel_jobs = sweep.parallel_jobs()
    threads = training.configure_runtime(cfg.trainer, parallel_jobs=parallel_jobs)
    if cfg.trainer.verbose == 1 and parallel_jobs > 1:
        cfg.trainer.verbose = 2  # parallel jobs' progress bars would interleave: a line per epoch
    tags = run_tags(cfg, launch_dir, params, threads, job.tags)
    try:
        with signals:
            objective = track_run(cfg, job, resume_id, tags, (launch_dir, params, raw, splits), signals, clock)
    except KeyboardInterrupt as stop:
        return stopped(stop, signals, job)
    if signals.stop_requested and job.parent_run_id is None:  # a sweep job returns; its launcher stops
        print(f"stopped ({signal_name(signals.signum())}) after run {job.run_id} FINISHED: it came in the last epoch")
        raise SystemExit(128 + signals.signum())
    return objective


def cli() -> None:
    """The `hw4-train` console script: `main`, with the exit status of a process ended by a
    signal (128 + its number) when one stopped it: after a sweep ended in order (Hydra's own
    exit would be 0), or at once on a second signal to a sweep's launcher (joblib then ends
    its workers; the parent run is ended at exit). A run that ended in order exits without
    the interpreter's slow teardown of TensorFlow (system.exit_now)."""
    from hw4 import sweep, system

    try:
        main()
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", 0) or signal.SIGINT
        print(str(stop) or f"stopped at once ({signal_name(signum)})", file=sys.stderr)
        sys.exit(128 + signum)
    sweep.exit_if_stopped()
    system.exit_now(0)


if __name__ == "__main__":
    cli()
