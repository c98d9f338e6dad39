"""Run timings: steps, the process's start, background work kept apart (no TensorFlow)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hw4.runtime import timing


def test_steps_add_up_and_the_rest_is_other():
    clock = timing.Timings()
    with clock.step("store"):
        time.sleep(0.05)
    assert clock.call("data", lambda x: x * 2, 21) == 42
    with clock.step("store"):  # a step that runs twice adds up
        time.sleep(0.05)
    time.sleep(0.03)
    report = clock.report()
    assert set(report["steps_s"]) == {"store", "data"} and "startup" not in report["steps_s"]
    assert 0.1 <= report["steps_s"]["store"] < 0.5
    assert report["other_s"] >= 0.03
    assert abs(sum(report["steps_s"].values()) + report["other_s"] - report["total_s"]) < 0.002


def test_the_first_run_in_a_process_counts_the_process_start(monkeypatch):
    monkeypatch.setattr(timing, "_first_in_process", True)
    monkeypatch.setattr(timing, "process_start", lambda: time.time() - 2.0)
    assert timing.first_in_process() and not timing.first_in_process()
    first, second = timing.Timings(since_process_start=True), timing.Timings()
    assert 1.9 < first.steps["startup"] < 2.5 and first.total() >= 2.0
    assert "startup" not in second.steps and second.total() < 1.0


@pytest.mark.serial
def test_the_process_start_is_when_the_interpreter_started():
    # A fresh interpreter reads the clock first thing: its process began a few hundredths of a
    # second earlier, not most of a second (psutil's boot time in whole seconds was 0.66 s off).
    code = "import time; now = time.time(); from hw4.runtime import timing; print(now - timing.process_start())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.0 <= age < 0.4


def test_background_work_is_reported_apart_from_the_critical_path():
    clock = timing.Timings()
    with clock.step("figures", background=True):
        time.sleep(0.05)
    with clock.step("fit"):
        pass
    metrics = timing.as_metrics(clock.report())
    assert metrics["time_figures_background_s"] >= 0.05
    assert "time_figures_s" not in metrics and "time_fit_s" in metrics
    # background seconds are not part of the sum that makes up the total
    assert metrics["time_other_s"] >= 0.05
    assert set(metrics) == {"time_figures_background_s", "time_fit_s", "time_other_s", "time_total_s"}
