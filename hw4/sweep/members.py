"""hydra/launcher=members: a sweep's jobs trained as members of one program.

The launcher (hydra_plugins/hw4_members_launcher) groups a batch of jobs by what one program
needs them to share (`program_key`: everything but the learning rate, the seed and the
settings each run keeps for itself), and runs each job of a group through Hydra's own
`run_job`, in a thread of its own, one at a time. A job does everything it does alone (its
store, its checks, its MLflow run, a resume from its checkpoint) up to its training, where it
parks its member (`Coordinator.park`, called by hw4.steps.fit) and waits. Once every job of the
group has parked or ended, the launcher's main thread trains the parked members as one program
(hw4.training.loop: `jax.vmap` on JAX, one traced program on TensorFlow), and lets the jobs go
on, one at a time, to evaluate and log as they would alone. Only one thread runs at any moment,
so Hydra's global job config is set again by each job when it resumes; signals reach the
launcher's main thread, which trains, and the sweep's stop file reaches every job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log
from omegaconf import DictConfig, OmegaConf

from hw4.runtime.signals import RunSignals

# What members of one program may differ in (each keeps its own value): the rest of the job's
# config must be equal. Other per-run settings (callbacks, bookkeeping) are left out too.
MEMBER_KEYS = ("optimizer.lr", "trainer.seed")
PER_RUN_KEYS = (
    "trainer.early_stopping", "trainer.restore_best", "trainer.prune", "trainer.prune_after",
    "trainer.checkpoint", "trainer.checkpoint_dir", "trainer.resume", "trainer.verbose", "trainer.xla_cache",
    "trainer.threads", "tracking",
)  # fmt: skip


def program_key(cfg: DictConfig) -> dict[str, Any]:
    """The config a job's program depends on: jobs with equal keys train as one program."""
    plain = {str(key): OmegaConf.to_container(cfg[key], resolve=True) for key in cfg if key != "hydra"}
    for dotted in (*MEMBER_KEYS, *PER_RUN_KEYS):
        node, *path = dotted.split(".")
        parent: Any = plain
        for part in [node, *path][:-1]:
            parent = parent.get(part, {})
        parent.pop([node, *path][-1], None)
    return plain


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


@dataclass
class Grouping:
    """Jobs (indices into the batch) that train as one program, and why the others do not."""

    groups: list[list[int]]
    reasons: dict[int, str] = field(default_factory=dict)  # a job alone: what it differs in


def group_jobs(configs: list[DictConfig]) -> Grouping:
    """The batch's jobs grouped by program_key, in job order; the range test (lr_find) alone."""
    keys: list[Optional[dict]] = [None if c.lr_find.enabled else program_key(c) for c in configs]
    groups: list[list[int]] = []
    for index, key in enumerate(keys):
        for group in groups:
            if key is not None and keys[group[0]] == key:
                group.append(index)
                break
        else:
            groups.append([index])
    largest = max(groups, key=len)
    reasons = {}
    for group in groups:
        if len(group) == 1 and group is not largest:
            (index,) = group
            if keys[index] is None:
                reasons[index] = "the learning-rate range test trains alone"
            else:
                mine, theirs = _flat(keys[index]), _flat(keys[largest[0]])
                differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                reasons[index] = (
                    f"its {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''} differ from job {largest[0]}'s"
                )
    return Grouping(groups, reasons)


_this_thread = threading.local()


def current() -> Optional["Coordinator"]:
    """The coordinator of the job running in this thread, None outside a members launch."""
    return getattr(_this_thread, "coordinator", None)


class Coordinator:
    """One group's hand-over between its job threads and the launcher's main thread."""

    def __init__(self, train: Callable[[list, Any, Any, RunSignals], None]):
        self._train = train  # hw4.training.loop.train
        self._turn = threading.Condition()
        self._running: Optional[threading.Thread] = None  # the one thread allowed to run
        self._parked: list[tuple[threading.Thread, Any, Any, Any]] = []
        self._error: Optional[BaseException] = None

    # --- job side ---------------------------------------------------------------------------
    def park(self, member: Any, splits: Any, settings: Any) -> None:
        """Hand this job's member to the group and wait until the group has trained it (and
        this thread's turn has come again). Re-raises what stopped the group's training."""
        me = threading.current_thread()
        # Global: the other jobs set theirs meanwhile. The whole config (typed HydraConf by Hydra).
        hydra_config: Any = HydraConfig.instance().cfg
        with self._turn:
            if self._error is None:  # else the launch has stopped: no group will train this one
                self._parked.append((me, member, splits, settings))
                self._running = None
                self._turn.notify_all()
                self._turn.wait_for(lambda: self._running is me)
        HydraConfig.instance().cfg = hydra_config
        # Hydra's run_job pointed logging at the job that started last: this one's file again.
        configure_log(hydra_config.hydra.job_logging, hydra_config.hydra.verbose)
        if self._error is not None:
            raise self._error

    # --- launcher side ----------------------------------------------------------------------
    def start(self, job: Callable[[], Any]) -> threading.Thread:
        """Start `job` (Hydra's run_job) in a thread; `wait` for it to park or end."""
        result: dict[str, Any] = {}

        def body() -> None:
            _this_thread.coordinator = self
            try:
                result["value"] = job()
            except BaseException as error:  # noqa: BLE001 - handed to the launcher
                result["error"] = error
            finally:
                with self._turn:
                    self._running = None
                    self._turn.notify_all()

        thread = threading.Thread(target=body, name="hw4-member", daemon=True)
        thread.result = result  # type: ignore[attr-defined]
        with self._turn:
            self._running = thread
            thread.start()
        return thread

    def wait(self) -> None:
        """Until the running job has parked or ended."""
        with self._turn:
            self._turn.wait_for(lambda: self._running is None)

    def train(self, signals: RunSignals) -> None:
        """Train the parked members as one program, here, in the main thread."""
        if not self._parked:
            return
        members = [member for _, member, _, _ in self._parked]
        _, _, splits, settings = self._parked[0]
        # One program trains on one dataset: the jobs' splits are the one cached copy (hw4.data).
        assert all(parked[2] is splits for parked in self._parked), "a group's jobs loaded different data"
        try:
            self._train(members, splits, settings, signals)
        except BaseException as error:  # noqa: BLE001 - each job ends its run with it
            self._error = error

    def fail(self, error: BaseException) -> None:
        """What stopped the launch (a second Ctrl-C while jobs set up or end): every parked job
        raises it when it resumes, and its run ends as that makes it end (KILLED)."""
        if self._error is None:
            self._error = error

    def finish(self, thread: threading.Thread) -> None:
        """Let a parked job go on to its end (evaluation, logging); wait for it."""
        with self._turn:
            self._running = thread
            self._turn.notify_all()
        thread.join()

    @property
    def error(self) -> Optional[BaseException]:
        return self._error
