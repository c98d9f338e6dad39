"""Keras and its backend (TensorFlow, or JAX) loaded without their start-up noise, with real errors still shown.

While it loads and first looks for devices, TensorFlow's C++ runtime writes INFO and WARNING
lines straight to the process's stderr (oneDNN, CPU instructions, "Could not find cuda drivers",
and "failed call to cuInit: ... CUDA error" on a machine with no GPU, which reads like a failure).
absl writes them before its logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not remove them
(TensorFlow 2.21). `load_keras` therefore points file descriptor 2 at a temporary file while
TensorFlow imports and initialises its devices, then writes back every line that is not known
start-up noise: a real error still shows. It also keeps TensorFlow's Python logger to errors, so
in-process sweeps do not print "triggered tf.function retracing" for every new job's model.

HW4_TF_LOGS=1 shows everything, as TensorFlow prints it. No TensorFlow import at module level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

SHOW_ENV = "HW4_TF_LOGS"
# Lines TensorFlow prints on every start of a CPU-only machine; nothing a user can act on.
STARTUP_NOISE = re.compile(
    r"oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|failed call to cuInit"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    # XLA's persistent compile cache (trainer.xla_cache), when a program is first run: TF 2.21
    # reports its own tuning flags (+prefer-no-gather, +prefer-no-scatter) as machine features
    # the host lacks, on the very machine that compiled it; and an entry another process was
    # still writing is compiled again. Neither changes what runs.
    r"|Loading XLA:CPU AOT result\. Target machine feature \+prefer-no-(gather|scatter) is not"
    r"|Error parsing text-format tensorflow\.XlaSerializedCacheEntry"
)


def show_all() -> bool:
    return os.environ.get(SHOW_ENV, "").lower() in ("1", "true", "yes")


def keep(line: str) -> bool:
    return bool(line.strip()) and not STARTUP_NOISE.search(line)


def _start_devices() -> None:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.devices()
    else:
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA's probe (cuInit) runs here


def load_keras() -> None:
    """Import Keras and its backend (KERAS_BACKEND: TensorFlow by default, or JAX) and
    initialise the devices, printing only what matters."""
    if show_all():
        _start_devices()
        return
    if "keras" in sys.modules and _backend_loaded():  # loaded before (a sweep's later job, a test)
        return
    # Later INFO lines, XLA's "XLA service ... initialized" and "Compiled cluster using XLA!" at
    # the first compiled epoch, come after absl is initialised: this level drops them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with native_noise_dropped():
        _start_devices()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


@contextlib.contextmanager
def native_noise_dropped() -> Iterator[None]:
    """File descriptor 2 captured while the block runs (C++ writes there directly), then every
    line that is not known noise written back: a real error still shows."""
    if show_all():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
    kept = [line for line in text.splitlines() if keep(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)


def _backend_loaded() -> bool:
    import keras

    return keras.backend.backend() in sys.modules
