"""Trajectory schedules computed ahead, in a second process, while the port is checked.

A schedule (`verify.harness._trajectory.schedule`: the candidate settings' float64 reference
runs, twins and restarts) runs no port code and is the largest piece of the oracle's own work
in a run: about a third of `check --adapter numpy-port --quick`. With two or more CPUs and
several problems, `run_checks` starts one `SchedulePrefetch`: a worker process
(`python -m verify.harness._prefetch`, with the parent's `sys.path`; no threads, JAX state,
port or `__main__` inherited) computes every (problem, family) schedule of the run, problem by
problem, while the parent checks the other capabilities, and `schedule` takes the worker's
result when it has one.

The prefetch changes when the work is done, never its result: the worker runs the same code
on a pickled copy of the same problem (the same float64 arithmetic, the same seeds derived
from the problem's name). A worker that cannot start, dies or fails on an item leaves that
schedule to the parent, which computes it itself (and contains its own errors as always);
`close` kills the worker, so an interrupted run does not wait for it.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ngd_ref import Problem
from verify._worker import Worker, serve, worthwhile

__all__ = ["SchedulePrefetch", "lookup", "prefetching", "prefetch_worthwhile"]

#: the prefetches of the runs in progress (`prefetching`)
_ACTIVE: list[SchedulePrefetch] = []


def prefetch_worthwhile(problems: Sequence[Problem]) -> bool:
    """Whether a worker would run beside the parent: two or more CPUs and enough problems."""
    return worthwhile(len(problems))


@contextmanager
def prefetching(problems: Sequence[Problem], families: tuple[str, ...],
                dtype: str) -> Iterator[None]:
    """Run a `SchedulePrefetch` of `problems` for the block's duration (where worthwhile)."""
    if not prefetch_worthwhile(problems):
        yield
        return
    prefetch = SchedulePrefetch(problems, families, dtype)
    _ACTIVE.append(prefetch)
    try:
        yield
    finally:
        _ACTIVE.remove(prefetch)
        prefetch.close()


def lookup(problem: Problem, family: str, dtype: str) -> Any:
    """A running prefetch's schedule of (problem, family, dtype), or None."""
    for prefetch in _ACTIVE:
        found = prefetch.get(problem, family, dtype)
        if found is not None:
            return found
    return None


class SchedulePrefetch:
    """A worker (`verify._worker.Worker`) computing the schedules of `problems` for `dtype`."""

    def __init__(self, problems: Sequence[Problem], families: tuple[str, ...], dtype: str):
        self._index = weakref.WeakKeyDictionary({p: i for i, p in enumerate(problems)})
        self._dtype = dtype
        self._worker = Worker("verify.harness._prefetch", (list(problems), families, dtype),
                              name="ngd-verify prefetch")

    def get(self, problem: Problem, family: str, dtype: str) -> Any:
        """The worker's schedule, waiting for it if needed; None where it has none."""
        index = self._index.get(problem)
        if index is None or dtype != self._dtype:
            return None
        return (self._worker.get(index) or {}).get(family)

    def close(self) -> None:
        """Stop the worker (at once: an interrupted run does not wait for it)."""
        self._worker.close()


def _schedules(job: tuple[list[Problem], tuple[str, ...], str]
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """The worker: `(index, {family: Schedule | str | None})` per problem, in order.

    `None` marks a schedule whose computation raised (the parent computes it again and
    reports its own error there).
    """
    from verify.harness._trajectory import compute_schedule

    problems, families, dtype = job
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, problem in enumerate(problems):
            out: dict[str, Any] = {}
            for family in families:
                try:
                    out[family] = compute_schedule(problem, family, dtype)
                except Exception:  # noqa: BLE001 -- the parent recomputes and contains it
                    out[family] = None
            yield index, out


if __name__ == "__main__":
    import sys

    serve(sys.argv, _schedules)
