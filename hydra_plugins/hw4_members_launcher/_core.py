"""The members launch: compose every job's config, group them (hw4.sweep.members.group_jobs),
run a group's jobs up to their training, train the group's program in this (the main) thread,
then let each job end as it would alone. A job that cannot join a group runs alone, as Hydra's
basic launcher runs it, after one line saying why."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

log = logging.getLogger(__name__)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    from hw4.sweep import members
    from hw4.sweep.context import STOP_FILE, sweep_dir

    setup_globals()
    config, context = launcher.config, launcher.hydra_context
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    if config.hydra.job.chdir:  # the jobs share this process and take turns: one working folder
        from hw4.errors import ConfigError

        raise ConfigError("hydra/launcher=members needs hydra.job.chdir=false (its jobs share one process)")
    configs = []
    for offset, overrides in enumerate(job_overrides):
        sweep_config = context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = initial_job_idx + offset
        configs.append(sweep_config)
    grouping = members.group_jobs(configs)
    returns: dict[int, JobReturn] = {}

    def job(index: int) -> Any:
        def run() -> JobReturn:
            return run_job(
                hydra_context=context, task_function=launcher.task_function, config=configs[index],
                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
            )  # fmt: skip

        return run

    for group in grouping.groups:
        numbers = [initial_job_idx + i for i in group]
        if len(group) == 1:
            (index,) = group
            if index in grouping.reasons:
                print(f"job {numbers[0]} trains alone: {grouping.reasons[index]}")
            returns[index] = job(index)()
        else:
            print(f"jobs {', '.join(map(str, numbers))}: one program of {len(group)} members")
            for index in group:
                log.info("\t#%d : %s", initial_job_idx + index, " ".join(filter_overrides(job_overrides[index])))
            returns.update(_launch_group(group, job, sweep_dir(config.hydra) / STOP_FILE))
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return [returns[i] for i in range(len(configs))]


def _launch_group(group: list[int], job: Any, stop: Any) -> dict[int, JobReturn]:
    from hw4.runtime.signals import RunSignals
    from hw4.sweep import members
    from hw4.sweep.callback import held_signals
    from hw4.training import loop

    coordinator = members.Coordinator(loop.train)
    threads: dict[int, Any] = {}
    try:
        for index in group:  # one at a time, each up to its training
            threads[index] = coordinator.start(job(index))
            coordinator.wait()
        with RunSignals(stop) as signals:  # the main thread trains: signals come here
            coordinator.train(signals)
    except BaseException as error:  # a second Ctrl-C while jobs set up: each parked job ends its run
        coordinator.fail(error)
    returns = {}
    for index, thread in threads.items():
        try:
            coordinator.finish(thread)
        except BaseException as error:  # a second Ctrl-C while jobs end: the others still end theirs
            coordinator.fail(error)
            with held_signals():
                coordinator.finish(thread)
        result = thread.result
        if "error" in result:  # not the job's own failure (run_job catches those): the launch's
            returns[index] = JobReturn(status=JobStatus.FAILED, _return_value=result["error"])
        else:
            returns[index] = result["value"]
    if isinstance(coordinator.error, KeyboardInterrupt):  # a second Ctrl-C: the launch stops here
        raise coordinator.error
    return returns
