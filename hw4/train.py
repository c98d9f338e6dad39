"""`hw4-train`: the Hydra entrypoint. It only wires data, model, training and tracking together.

    hw4-train +experiment=part4_lenet_bn data.dir=../shared/datasets/fashion-mnist
    hw4-train -m optimizer.lr=1e-3,1e-2 model=mlp,lenet

TensorFlow is imported inside `main`, after the config is composed and checked, so `--help`
and `--cfg job` stay fast.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from hw4 import config
from hw4.errors import ConfigError

config.register_configs()


def checkpoint_folder(cfg: DictConfig, launch_dir: str, run_id: str) -> Path:
    return Path(launch_dir) / cfg.trainer.checkpoint_dir / run_id


def stop_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C does (status KILLED, epochs so far kept)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():  # signals need the main thread
        signal.signal(signal.SIGTERM, interrupt)


def run_name(cfg: DictConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.model.name}-{cfg.optimizer.name}-lr{cfg.optimizer.lr:g}"


@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train, evaluate and track one configuration; returns the final validation accuracy."""
    config.check(cfg)
    stop_on_sigterm()
    # Imported here, not at the top: --help and --cfg must not pay for MLflow and scikit-learn.
    from hw4 import data, sweep, tracking

    launch_dir = get_original_cwd()
    hydra_cfg = HydraConfig.get()
    if cfg.data.dir:
        cfg.data.dir = to_absolute_path(cfg.data.dir)

    # Fail fast: the tracking store, then the data, before TensorFlow's slow start.
    client, experiment_id, parent_run_id, sweep_tags = sweep.open_tracking(cfg.tracking, launch_dir)

    class_names = list(cfg.data.class_names)
    raw = data.load(cfg.data.dir, n_classes=len(class_names))
    splits = data.prepare(
        raw,
        input_shape=cfg.model.input_shape,
        n_classes=len(class_names),
        val_fraction=cfg.data.val_fraction,
        seed=cfg.trainer.seed,
        limit=cfg.data.limit,
    )

    params = tracking.flatten(OmegaConf.to_container(cfg, resolve=True))
    resume_id = cfg.trainer.resume
    if resume_id:
        tracking.check_resumable(client, resume_id, params)
        if not checkpoint_folder(cfg, launch_dir, resume_id).is_dir():
            raise ConfigError(f"trainer.resume={resume_id}: no checkpoint was kept for that run")

    from hw4 import artifacts, checkpoints, models, training  # TensorFlow loads here

    threads = training.configure_runtime(cfg.trainer, parallel_jobs=sweep.parallel_jobs())
    tags = {
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "overrides": " ".join(hydra_cfg.overrides.task),
        "git_commit": tracking.git_commit(launch_dir) or "none",
        "tf_threads": threads,
        **sweep_tags,
    }
    with tracking.start_run(
        client, experiment_id, run_name(cfg), tags, parent_run_id, run_id=resume_id
    ) as run:
        folder = checkpoint_folder(cfg, launch_dir, run.run_id)
        if resume_id:
            model, state = checkpoints.load(folder)
            # Epochs the checkpoint holds but MLflow missed (killed between the two writes).
            logged = {m.step for m in client.get_metric_history(run.run_id, "loss")}
            for epoch in range(state.epoch + 1):
                if epoch not in logged:
                    run.log_metrics(state.epoch_logs(epoch), step=epoch)
            print(f"resuming run {run.run_id} after epoch {state.epoch + 1}")
        else:
            model = training.build_model(cfg.model, num_classes=len(class_names))
            training.compile_model(
                model,
                training.build_optimizer(cfg.optimizer),
                cfg.trainer.jit_compile,
                cfg.trainer.steps_per_execution,
            )
            state = checkpoints.CheckpointState()
            run.log_params(params)
            if hydra_cfg.output_subdir:  # .hydra/: config.yaml, hydra.yaml, overrides.yaml
                run.log_artifacts(
                    os.path.join(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir), "config"
                )
            run.log_text(models.summary_text(model), artifacts.SUMMARY)
            run.log_dict(artifacts.data_summary(raw, splits), artifacts.DATA_SUMMARY)
            artifacts.log_sample_grids(run, raw, class_names)

        # The checkpoint is written before the metrics (see hw4/checkpoints.py).
        callbacks = [training.EpochMetricsLogger(run.log_metrics)]
        if cfg.trainer.checkpoint:
            run.set_tags({"checkpoint_dir": folder})
            callbacks.insert(0, checkpoints.EpochCheckpoint(folder, state))
        history = training.fit(
            model, splits, cfg.trainer, callbacks, state.epoch + 1, past_history=state.history
        )
        evaluation = training.evaluate(model, splits, cfg.trainer.eval_batch_size)
        run.log_dict(artifacts.first_sample_output(model, splits), artifacts.FIRST_SAMPLE)
        run.log_metrics(evaluation.metrics())
        print(
            f"test loss {evaluation.test_loss:.4f}, "
            f"test accuracy {evaluation.test_accuracy:.4f} (run {run.run_id})"
        )
        artifacts.log_evaluation(
            run,
            history,
            splits.x_test,
            splits.test_labels,
            evaluation.predicted,
            evaluation.confusion,
            class_names,
            title=run_name(cfg),
        )
        if cfg.tracking.log_model:
            run.log_keras_model(model, splits.x_test[:5])
    checkpoints.remove(folder)  # finished: the logged model replaces it
    return float(history[f"val_{training.METRIC}"][-1])


if __name__ == "__main__":
    main()
