"""The battery in a second process (`verify.battery.BatteryWorker`): the same results."""

from __future__ import annotations

from ngd_ref import zoo
from verify.battery import BatteryWorker, run_battery

PROBLEMS = list(zoo.problems(quick=True))[:2]


def _rows(results):
    return [repr(r) for r in results]


def test_the_worker_computes_what_the_caller_would():
    worker = BatteryWorker(PROBLEMS)
    try:
        assert _rows(worker.collect()) == _rows(run_battery(PROBLEMS))
    finally:
        worker.close()


def test_a_dead_worker_leaves_the_battery_to_the_caller():
    worker = BatteryWorker(PROBLEMS)
    assert worker._worker._process is not None
    worker._worker._process.kill()
    try:
        assert _rows(worker.collect()) == _rows(run_battery(PROBLEMS))
    finally:
        worker.close()
