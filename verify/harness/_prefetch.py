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

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ngd_ref import Problem

__all__ = ["SchedulePrefetch", "lookup", "prefetching", "prefetch_worthwhile"]

#: fewer problems than this are scheduled in the parent (a worker costs ~1 s to start)
MIN_PROBLEMS = 3
#: the prefetches of the runs in progress (`prefetching`)
_ACTIVE: list[SchedulePrefetch] = []


def prefetch_worthwhile(problems: Sequence[Problem]) -> bool:
    """Whether a worker would run beside the parent: two or more CPUs and enough problems."""
    return len(problems) >= MIN_PROBLEMS and _cpus() >= 2


def _cpus() -> int:
    """The CPUs this process may run on (all of the machine's where that is not known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    """One worker computing the trajectory schedules of `problems` for a port of `dtype`."""

    def __init__(self, problems: Sequence[Problem], families: tuple[str, ...], dtype: str):
        self._index = weakref.WeakKeyDictionary({p: i for i, p in enumerate(problems)})
        self._dtype = dtype
        self._done: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition()
        self._ended = True  # until a worker runs
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._job: str | None = None
        try:
            with tempfile.NamedTemporaryFile("wb", suffix=".pkl", delete=False) as job:
                self._job = job.name
                pickle.dump((list(problems), families, dtype), job)
        except (OSError, pickle.PicklingError):  # no worker: the parent schedules everything
            self._remove_job()
            return
        read, write = os.pipe()
        try:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self._process = subprocess.Popen(
                [sys.executable, "-m", "verify.harness._prefetch", job.name, str(write)],
                pass_fds=(write,), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, ValueError):  # ValueError: no pass_fds (not POSIX)
            os.close(read)
            self._remove_job()
            return
        finally:
            os.close(write)
        self._conn = Connection(read, writable=False)
        self._ended = False
        self._reader = threading.Thread(target=self._drain, name="ngd-verify prefetch",
                                        daemon=True)
        self._reader.start()

    def get(self, problem: Problem, family: str, dtype: str) -> Any:
        """The worker's schedule, waiting for it if needed; None where it has none."""
        index = self._index.get(problem)
        if index is None or dtype != self._dtype:
            return None
        with self._arrived:
            self._arrived.wait_for(lambda: index in self._done or self._ended)
        return self._done.get(index, {}).get(family)

    def _drain(self) -> None:
        """The reader thread: take every message as it comes (a full pipe stalls the worker)."""
        assert self._conn is not None
        try:
            while True:
                index, results = self._conn.recv()
                with self._arrived:
                    self._done[index] = results
                    self._arrived.notify_all()
        except (EOFError, OSError, pickle.UnpicklingError):  # finished, died or closed
            pass
        finally:
            with self._arrived:
                self._ended = True
                self._arrived.notify_all()

    def close(self) -> None:
        """Stop the worker (at once: an interrupted run does not wait for it)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._remove_job()

    def _remove_job(self) -> None:
        """Delete the job file (the worker deletes it once read; not when killed before)."""
        if self._job is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._job)


def _main(job: str, fd: int) -> None:
    """The worker: send `(index, {family: Schedule | str | None})` per problem, in order.

    `None` marks a schedule whose computation raised (the parent computes it again and
    reports its own error there).
    """
    from verify.harness._trajectory import compute_schedule

    with open(job, "rb") as f:
        problems, families, dtype = pickle.load(f)
    with contextlib.suppress(FileNotFoundError):  # the parent may have closed already
        os.unlink(job)
    conn = Connection(fd, readable=False)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, problem in enumerate(problems):
            out: dict[str, Any] = {}
            for family in families:
                try:
                    out[family] = compute_schedule(problem, family, dtype)
                except Exception:  # noqa: BLE001 -- the parent recomputes and contains it
                    out[family] = None
            conn.send((index, out))
    conn.close()


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
