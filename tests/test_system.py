"""The cores a process may use: affinity and cgroup quota, not the machine's count."""

from __future__ import annotations

import os

import pytest

from hw4 import system


@pytest.fixture
def cpu_max(tmp_path, monkeypatch):
    path = tmp_path / "cpu.max"
    monkeypatch.setattr(system, "CGROUP_CPU_MAX", path)
    return path


def test_usable_cores_follow_the_affinity(cpu_max, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert system.usable_cores() == 3  # no cgroup file: the affinity alone
    cpu_max.write_text("max 100000\n")
    assert system.usable_cores() == 3  # no quota


@pytest.mark.parametrize(("quota", "cores"), [("150000 100000", 2), ("50000 100000", 1), ("800000 100000", 3)])
def test_a_cgroup_quota_caps_the_cores(cpu_max, monkeypatch, quota, cores):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    cpu_max.write_text(quota + "\n")
    assert system.usable_cores() == cores


def test_parallel_sweep_jobs_split_the_usable_cores(monkeypatch):
    from omegaconf import OmegaConf

    from hw4 import sweep

    assert sweep.jobs_at_once(-1, system.usable_cores()) == system.usable_cores()
    training = pytest.importorskip("hw4.training")
    monkeypatch.setattr(system, "usable_cores", lambda: 4)
    seen = {}
    monkeypatch.setattr(training.tf.config.threading, "set_intra_op_parallelism_threads", lambda n: seen.update(intra=n))
    monkeypatch.setattr(training.tf.config.threading, "set_inter_op_parallelism_threads", lambda n: seen.update(inter=n))
    trainer = OmegaConf.create({"seed": 0, "precision": "float32", "deterministic": False, "threads": None})
    training.configure_runtime(trainer, parallel_jobs=2)
    assert seen == {"intra": 2, "inter": 2}
