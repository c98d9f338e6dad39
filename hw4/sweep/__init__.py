"""Sweeps: one MLflow parent run per Hydra sweep, every job a child run under it.

Split by the process that runs the code:

- `hw4.sweep.callback`: the launcher side, Hydra's callback (`MlflowSweepCallback`, registered
  under `hydra.callbacks` in conf/config.yaml): creates or reopens the parent run, backfills
  jobs that failed without a run, and ends the parent with the sweep's summary.
- `hw4.sweep.job`: the job side: where a job's run goes, what earlier launches left of it.
- `hw4.sweep.context`: the sweep folder's files, which both sides read and write.
- `hw4.sweep._hydra`: the one use of Hydra's private API (counting a grid's jobs).
"""

from typing import Any

__all__ = ["MlflowSweepCallback"]


def __getattr__(name: str) -> Any:
    # Hydra's callback, as conf/config.yaml names it (hw4.sweep.MlflowSweepCallback), loaded
    # only when asked for: a job importing hw4.sweep.job or .context does not load the launcher's side.
    if name == "MlflowSweepCallback":
        from hw4.sweep.callback import MlflowSweepCallback

        return MlflowSweepCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
