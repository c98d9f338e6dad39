"""The training core and a members sweep under KERAS_BACKEND=jax as well: the suite runs on
TensorFlow (the default backend, chosen when Keras is imported), so the JAX pass is a pytest of
its own, in a process of its own. Skips where JAX is not installed (pip install -e '.[jax]')."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parents[1]
# The resume of a checkpoint is the same code on both backends (and costs 35 s of JAX compiles).
UNDER_JAX = [
    "training/test_loop.py::test_a_member_of_a_program_equals_the_job_trained_alone",
    "training/test_loop.py::test_a_stopped_member_stops_updating_while_the_others_go_on",
    "training/test_loop.py::test_a_signal_in_the_epoch_where_early_stopping_fires_ends_the_run_as_finished",
    "training/test_loop.py::test_a_second_ctrl_c_interrupts_within_a_few_batches",
    "training/test_loop.py::test_loss_scaling_is_inside_the_gradient",
    "training/test_loop.py::test_an_augmented_image_moves_by_its_shift_and_flips",
    "sweep/test_members.py::test_each_member_is_its_own_run_equal_to_the_job_trained_alone",
]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed: pip install -e '.[jax]'")
def test_the_training_core_and_a_members_sweep_pass_under_jax(tmp_path):
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("this process is the JAX pass")
    # The tests train the same programs more than once (a member, then the job alone): XLA's
    # CPU compiles are most of the pass, so every compiled program goes to a cache of the pass.
    cache = {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:randomly", "-q", "--no-header",
         *(str(TESTS / path) for path in UNDER_JAX)],
        env={**os.environ, **cache, "KERAS_BACKEND": "jax"}, cwd=TESTS.parent, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
