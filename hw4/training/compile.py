"""How each Keras backend compiles the step's programs (hw4.training.step) and runs K members.

The one place that knows the backend. TensorFlow: `tf.function` (XLA where `jit`), a gradient
tape, and members one after another through the same traced program (side by side in one graph
lost on a 2-core CPU: BENCHMARKS.md). JAX: `jax.jit` always (XLA is its compiler),
`jax.value_and_grad`, and members as one program by `jax.vmap` over stacked states.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np


def backend() -> str:
    return keras.backend.backend()


def value_and_grad(fn: Callable[[list], tuple[Any, Any]]) -> Callable[[list], tuple[tuple[Any, Any], list]]:
    """`fn(trainable) -> (value, aux)` to `(value, aux), gradients of value`."""
    if backend() == "jax":
        import jax

        return jax.value_and_grad(fn, has_aux=True)
    import tensorflow as tf

    def tape(trainable: list) -> tuple[tuple[Any, Any], list]:
        with tf.GradientTape() as gradient_tape:
            gradient_tape.watch(trainable)
            value, aux = fn(trainable)
        return (value, aux), gradient_tape.gradient(value, trainable)

    return tape


def is_jax() -> bool:
    return backend() == "jax"


def join(members: Sequence[tuple]) -> Any:
    """K members' argument tuples as the compiled program takes them: stacked on a first axis
    (JAX), a list (TensorFlow)."""
    if is_jax():
        import jax

        return jax.tree_util.tree_map(lambda *leaves: jax.numpy.stack(leaves), *members)
    return list(members)


def split(group: Any, k: int) -> list:
    """`join`'s inverse, for a program's results too: one entry per member."""
    if is_jax():
        import jax

        return [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], group) for i in range(k)]
    return list(group)


def with_first(group: Any, results: Any) -> Any:
    """The members' arguments with their first (the state) replaced by the results' first."""
    if is_jax():
        return (results[0], *group[1:])
    return [(result[0], *member[1:]) for member, result in zip(group, results)]


def column(results: Any, position: int) -> np.ndarray:
    """Each member's value at `position` of its results (a scalar each), as one array."""
    if is_jax():
        return np.asarray(results[position])
    return np.array([float(result[position]) for result in results])


def states(results: Any) -> Any:
    """The members' states (the results' first) as a group of one-argument tuples."""
    if is_jax():
        return (results[0],)
    return [(result[0],) for result in results]


def side_by_side() -> bool:
    """Whether members train side by side in one call (JAX's vmap, pure programs over stacked
    states: a member that stopped still rides along, its results dropped, rather than a program
    being compiled for K - 1), or one after another through the same traced program
    (TensorFlow: stateful programs over one template model's variables)."""
    return is_jax()


class Compiled:
    """One program of `fn(*member_args, *shared_args)`, compiled once for every member:
    `__call__(group, shared)` runs it for each member of a `join`ed group and returns their
    results (grouped as `join` groups them). `jit` asks TensorFlow for XLA; JAX always jits."""

    def __init__(self, fn: Callable[..., Any], *, jit: bool):
        self._compiled: set[tuple] = set()  # the argument shapes compiled so far
        if is_jax():
            import jax

            self._program = jax.jit(jax.vmap(lambda member, shared: fn(*member, *shared), in_axes=(0, None)))
        else:
            import tensorflow as tf

            self._program = tf.function(
                lambda member, shared: fn(*member, *shared), jit_compile=jit, reduce_retracing=True
            )

    def __call__(self, group: Any, shared: tuple) -> Any:
        shapes = tuple(tuple(getattr(leaf, "shape", ())) for leaf in keras.tree.flatten((group, shared)))
        if shapes not in self._compiled:  # a new shape compiles (and reads XLA's cache)
            self._compiled.add(shapes)
            from hw4.runtime import quiet

            with quiet.native_noise_dropped():
                return self(group, shared)
        if is_jax():
            import jax

            return jax.block_until_ready(self._program(group, shared))  # a second Ctrl-C is seen here
        return [self._program(tuple(member), shared) for member in group]


def tensor(value: Any) -> Any:
    """An array as the backend's tensor, converted once (not at every call)."""
    return keras.ops.convert_to_tensor(value)


def as_numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


# XLA's compile costs 0.6 to 1 s more than tracing without it and saves about 0.9 ms an MLP
# step on TensorFlow: cold, it pays back after about 700 to 1100 steps; with its disk cache warm
# (a later run of the same shapes), at once. "auto" leaves it out of runs shorter than about one
# full-data epoch (debug=fast's 6 steps) and keeps every full-data run on it (BENCHMARKS.md).
XLA_MIN_STEPS = 300


def wants_xla(model: keras.Model, jit_compile: str, *, augment: bool, steps: int) -> bool:
    """trainer.jit_compile: "auto" is XLA for models without convolutions (measured faster: the
    MLP's epoch; XLA's CPU convolutions are slower than oneDNN's) that train at least
    XLA_MIN_STEPS batches (`steps`: the run's planned epochs times its batches an epoch, resumed
    or not, so a resume compiles as the run did). JAX compiles everything with XLA."""
    if is_jax():
        return True
    setting = str(jit_compile).lower()
    if setting in ("true", "false"):
        return setting == "true"
    from hw4.models import has_convolutions

    return not has_convolutions(model) and steps >= XLA_MIN_STEPS and not augment
