"""A run's process set-up on its Keras backend: seeds, dtype policy, determinism, threads, the
compile cache; and the model built from its config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import keras
from hydra.utils import instantiate
from omegaconf import DictConfig

from hw4 import names
from hw4.runtime import system
from hw4.training import compile

log = logging.getLogger(__name__)
METRIC = names.ACCURACY  # categorical_accuracy: the name hw4 logs, for Keras' fit and evaluate too


def configure_runtime(trainer: DictConfig, parallel_jobs: int = 1) -> int:
    """Seed Python, NumPy and the backend; set the dtype policy, thread pools (TensorFlow) and
    op determinism. Returns the backend's intra-op thread count.

    Parallel sweep jobs share the cores: each gets cores // parallel_jobs threads unless
    trainer.threads says otherwise, so that they do not oversubscribe the machine."""
    # Sweep jobs sharing a process start from a clean slate. Without the full garbage collection
    # clear_session would run (0.3 s with TensorFlow loaded): an earlier job's small model is
    # freed by Python's next collection anyway.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(trainer.seed)
    keras.mixed_precision.set_global_policy(str(trainer.precision))  # a plain name, not the config's Precision
    threads = trainer.threads or max(1, system.usable_cores() // parallel_jobs)
    if compile.is_jax():  # XLA's CPU threads are fixed when JAX starts; its CPU ops are deterministic
        return system.usable_cores()
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_framework_config  # no public way to disable

    if trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    elif tf_framework_config.is_op_determinism_enabled():  # an earlier job of this process's sweep
        tf_framework_config.disable_op_determinism()
    # TensorFlow's default counts the machine's cores, not the ones this process may use.
    if threads != tf.config.threading.get_intra_op_parallelism_threads():
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # a reused worker process: TensorFlow already started its pools
            log.debug("thread pools already initialised; keeping them")
    return tf.config.threading.get_intra_op_parallelism_threads() or system.usable_cores()


def use_compile_cache(setting: Optional[str], base: Path) -> Optional[Path]:
    """trainer.xla_cache on the backend in use (before it compiles anything)."""
    if compile.backend() != "jax":
        return system.use_xla_cache(setting, base)
    folder = system.xla_cache_dir(setting, base)
    if folder is None or not system.writable(folder):
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder


def build_model(model: DictConfig, num_classes: int, *, seed: Optional[int] = None) -> keras.Model:
    """Call the builder named in `model._target_` with the model config's other fields; with
    `seed`, from that seed (a sweep program's member: the weights the job alone would start from)."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return instantiate(model, num_classes=num_classes, _convert_="all")


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    """The model with its optimizer (saved with it in checkpoints), loss and metric (for Keras'
    own fit and evaluate: the range test, a user's notebook)."""
    from hw4.training.step import LOSS

    model.compile(optimizer=optimizer, loss=LOSS, metrics=[METRIC])
