"""The epoch loop: K members (one run each) trained side by side by one compiled program, with
fit's callbacks per member. A single run is a program of one member.

Each epoch: every member draws its batches (hw4.training.batches, from its own seed), the
program trains them in chunks of CHUNK_BATCHES batches (between chunks a second Ctrl-C is
felt and the progress bar moves), validates them, and each member's state goes back into its
own Keras model, where its callbacks see the epoch as fit would show it: metrics logged,
checkpoint saved, best epoch, early stopping, pruning. A member that stops (early stopping,
pruning, a diverged loss) stops updating; the others go on. After a first Ctrl-C or SIGTERM
every member stops after the epoch, unless it was its last or it ended anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np

from hw4 import names
from hw4.data import Splits
from hw4.runtime.signals import RunSignals
from hw4.training import compile, schedules, step
from hw4.training.batches import Augment, epoch_draws, stacked

# Batches per compiled call: a second Ctrl-C waits at most this many batches (an MLP's 32
# batches take ~20 ms here, LeNet-5's ~0.3 s), and the progress bar moves as often. Chunks cost
# one call each: 12 calls an epoch of 375 batches, no slower than one (BENCHMARKS.md).
CHUNK_BATCHES = 32


@dataclass(frozen=True)
class LoopSettings:
    """What every member of one program shares."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    schedule: schedules.Schedule  # the unit-peak shape (build_schedule with peak=1)
    augment: Optional[Augment] = None
    jit: bool = False  # TensorFlow: XLA (JAX always compiles with XLA)
    verbose: int = 0


@dataclass(eq=False)
class Member:
    """One run in the program: its model (compiled with its optimizer; new, or restored from a
    checkpoint), its callbacks in fit's order, its seed (batch order) and peak learning rate,
    and the epoch it starts from. `on_ended` is called when its training ends early (the
    checkpoint records it: never resumed past it). Filled while training: the epochs' logs, and how it stopped."""

    model: keras.Model
    callbacks: Sequence[keras.callbacks.Callback]
    seed: int
    peak: float
    initial_epoch: int = 0
    # Callbacks that decide from the other members' epochs too (pruners reading siblings from the
    # store): they see an epoch once every member's other callbacks have logged it.
    deciders: Sequence[keras.callbacks.Callback] = ()
    on_ended: Optional[Callable[[], None]] = None
    history: dict[str, list[float]] = field(default_factory=dict)
    ended_early: bool = False  # early stopping, pruning or a diverged loss
    stopped_after: Optional[int] = None  # the epoch after which a signal stopped it
    done: bool = False


@dataclass(frozen=True)
class _Epoch:
    """What one epoch of the program gave each member it ran: the new state (pure programs
    only), and the sums of training loss, hits, validation loss and hits."""

    states: list
    sums: np.ndarray  # (4, members)


class _Program:
    """The compiled programs of one architecture and the data they train on."""

    def __init__(self, template: keras.Model, splits: Splits, settings: LoopSettings):
        self.template, self.settings = template, settings
        self.stateful = not compile.side_by_side()
        programs = step.programs(
            template, schedule=settings.schedule, augment=settings.augment,
            value_and_grad=compile.value_and_grad, stateful=self.stateful,
        )  # fmt: skip
        self.train = compile.Compiled(programs.train_batches, jit=settings.jit)
        self.validate = compile.Compiled(programs.validate, jit=settings.jit)
        self.x, self.y = compile.tensor(splits.x_train), compile.tensor(splits.y_train)
        self.val = stacked(splits.x_val, splits.y_val, settings.eval_batch_size)
        self.val_arrays = (compile.tensor(self.val.x), compile.tensor(self.val.y), compile.tensor(self.val.weight))
        self.n = len(splits.x_train)
        self.n_full, self.tail = divmod(self.n, settings.batch_size)
        self.n_batches = math.ceil(self.n / settings.batch_size)

    def epoch(self, members: Sequence[Member], epoch: int, on_chunk: Callable[[int], None]) -> _Epoch:
        """Train `members` one epoch side by side (a stateful program: one member)."""
        batch, n_full = self.settings.batch_size, self.n_full
        draws = [epoch_draws(self.n, seed=m.seed, epoch=epoch, augment=self.settings.augment) for m in members]
        if self.stateful:  # the member's values into the template's variables
            (member,) = members
            if member.model is not self.template:
                step.write_state(self.template, step.read_state(member.model))
            states: list[Any] = [()]
        else:
            states = [step.read_state(m.model) for m in members]
        peaks = [np.float32(m.peak) for m in members]
        sums = np.zeros((4, len(members)))

        def group(rows: slice, shape: tuple[int, int], states: list) -> Any:
            return compile.join([
                (s, p, d.order[rows].reshape(shape), d.flip[rows].reshape(shape), d.shift[rows].reshape(*shape, 2))
                for s, p, d in zip(states, peaks, draws)
            ])  # fmt: skip

        args = group(slice(0, n_full * batch), (n_full, batch), states)
        results = None
        for start in range(0, n_full, CHUNK_BATCHES):
            stop = min(start + CHUNK_BATCHES, n_full)
            results = self.train(args, (self.x, self.y, np.int32(start), np.int32(stop)))
            args = compile.with_first(args, results)
            sums[:2] += [compile.column(results, 1), compile.column(results, 2)]
            on_chunk(stop - 1)
        if self.tail:  # the epoch's last, smaller batch: its own (once traced) shape
            states = [s for (s,) in compile.split(compile.states(args), len(members))]
            tail = group(slice(n_full * batch, self.n), (1, self.tail), states)
            results = args = self.train(tail, (self.x, self.y, np.int32(0), np.int32(1)))
            sums[:2] += [compile.column(results, 1), compile.column(results, 2)]
        validation = self.validate(compile.states(args), self.val_arrays)
        sums[2:] = [compile.column(validation, 0), compile.column(validation, 1)]
        if self.stateful:
            (member,) = members
            if member.model is not self.template:
                step.write_state(member.model, step.read_state(self.template))
            return _Epoch([None], sums)
        return _Epoch([s for (s,) in compile.split(compile.states(args), len(members))], sums)


def train(members: Sequence[Member], splits: Splits, settings: LoopSettings, signals: RunSignals) -> None:
    """Train every member from its initial epoch to settings.epochs (or its stop)."""
    program = _Program(_template(members), splits, settings)
    n, n_val = program.n, program.val.n

    def callback_list(member: Member, callbacks: Sequence[keras.callbacks.Callback]) -> keras.callbacks.CallbackList:
        return keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=False, model=member.model,
            verbose=settings.verbose, epochs=settings.epochs, steps=program.n_batches,
        )  # fmt: skip

    lists = {member: callback_list(member, member.callbacks) for member in members}
    deciders = {member: callback_list(member, member.deciders) for member in members}
    for member in members:
        member.model.stop_training = False
        member.done = member.initial_epoch >= settings.epochs  # a resumed run that had ended
        lists[member].on_train_begin()
        deciders[member].on_train_begin()
    for epoch in range(min(m.initial_epoch for m in members), settings.epochs):
        if signals.stop_requested:  # no member begins an epoch after a stop: those still to
            for member in members:  # begin (a run resumed ahead of the others) stop where they are
                if not member.done:
                    member.stopped_after, member.done = member.initial_epoch - 1, True
            break
        if all(m.done for m in members):
            break
        active = [m for m in members if not m.done and m.initial_epoch <= epoch]
        if not active:  # the members that begin later (resumed runs ahead of the others)
            continue
        for member in active:
            lists[member].on_epoch_begin(epoch)
        rates = {m: schedules.rate_at(settings.schedule, m.peak, _iterations(m.model)) for m in active}

        def moved(batch: int, active: list = active) -> None:
            for member in active:
                lists[member].on_train_batch_end(batch, {})

        if program.stateful:  # one after another, through the same traced program
            runs = [(m, program.epoch([m], epoch, moved), 0) for m in active]
        else:  # side by side; the stopped and not yet begun ride along, their results dropped
            together = program.epoch(members, epoch, moved)
            runs = [(m, together, k) for k, m in enumerate(members) if m in rates]
        ended = []
        for member, result, k in runs:
            if result.states[k] is not None:
                step.write_state(member.model, result.states[k])
            sums = result.sums[:, k]
            logs = {names.LOSS: sums[0] / n, names.ACCURACY: sums[1] / n}
            lists[member].on_train_batch_end(program.n_batches - 1, dict(logs))  # the bar's last update
            logs.update({
                names.VAL_LOSS: sums[2] / n_val, names.VAL_ACCURACY: sums[3] / n_val,
                names.LEARNING_RATE: rates[member],
            })  # fmt: skip
            logs = {name: float(value) for name, value in logs.items()}
            lists[member].on_epoch_end(epoch, logs)
            for name, value in logs.items():
                member.history.setdefault(name, []).append(value)
            ended.append((member, logs, member.model.stop_training))
        for member, logs, already in ended:  # every member's epoch is logged: the deciders' turn
            deciders[member].on_epoch_end(epoch, logs)
            if not np.isfinite(logs[names.LOSS]):  # as TerminateOnNaN
                member.model.stop_training = True
            if member.model.stop_training:  # its callbacks ended it: finished, never resumed past
                member.ended_early = member.done = True
                if member.on_ended is not None and not already:  # (its checkpoint knew already)
                    member.on_ended()
            elif signals.stop_requested and epoch + 1 < settings.epochs:
                member.stopped_after, member.done = epoch, True
    for member in members:
        if member.history:  # as fit: an optimizer's EMA weights, before BestEpoch's restore
            member.model.optimizer.finalize_variable_values(member.model.trainable_variables)
        lists[member].on_train_end({})
        deciders[member].on_train_end({})


def _template(members: Sequence[Member]) -> keras.Model:
    """The model the programs are traced on. Pure programs never read it: the first member's.
    Stateful ones train in its variables, each member's values copied in and out in turn: a
    run alone trains in its own; members of a group in a clone, or the first member's values
    would be overwritten by the second's."""
    model = members[0].model
    if compile.side_by_side() or len(members) == 1:
        return model
    template = keras.models.clone_model(model)
    optimizer = model.optimizer.__class__.from_config(model.optimizer.get_config())
    template.compile(optimizer=optimizer, loss=model.loss)
    optimizer.build(template.trainable_variables)
    return template


def _iterations(model: keras.Model) -> int:
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return int(optimizer.iterations)  # a variable: convert_to_numpy of one warns under NumPy 2
