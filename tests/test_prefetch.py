"""The trajectory-schedule prefetch (`verify.harness._prefetch`): same results, faults contained."""

from __future__ import annotations

import numpy as np

from ngd_ref import zoo
from verify.harness._prefetch import SchedulePrefetch, prefetch_worthwhile
from verify.harness._trajectory import FAMILIES, compute_schedule

PROBLEMS = tuple(zoo.problems(quick=True)[:3])
FEW = ("shampoo", "lbfgs")


def test_the_worker_computes_what_the_parent_would():
    prefetch = SchedulePrefetch(PROBLEMS, FEW, "float64")
    try:
        for problem in PROBLEMS:
            for family in FEW:
                got, own = prefetch.get(problem, family, "float64"), compute_schedule(
                    problem, family, "float64")
                assert type(got) is type(own)
                if isinstance(own, str):
                    assert got == own
                    continue
                assert (got.method, got.hyper) == (own.method, own.hyper)
                assert got.tolerances == own.tolerances  # the same float64 arithmetic
                assert np.array_equal(got.reference.float64(), own.reference.float64())
    finally:
        prefetch.close()


def test_what_the_worker_was_not_given_is_left_to_the_parent():
    prefetch = SchedulePrefetch(PROBLEMS[:1], FEW, "float64")
    try:
        assert prefetch.get(PROBLEMS[1], "shampoo", "float64") is None  # another problem
        assert prefetch.get(PROBLEMS[0], "shampoo", "float32") is None  # another dtype
        assert prefetch.get(PROBLEMS[0], "kfac_fixed", "float64") is None  # another family
    finally:
        prefetch.close()


def test_a_dead_worker_leaves_every_schedule_to_the_parent():
    prefetch = SchedulePrefetch(PROBLEMS, FAMILIES, "float64")
    assert prefetch._worker._process is not None
    prefetch._worker._process.kill()
    assert prefetch.get(PROBLEMS[-1], "lbfgs", "float64") is None  # returns, does not hang
    prefetch.close()


def test_small_runs_are_scheduled_in_the_parent():
    assert not prefetch_worthwhile(PROBLEMS[:2])
