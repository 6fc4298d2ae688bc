"""A second process that computes the items of a job while this one does other work.

Used where a piece of the oracle's own work runs no port code and holds the GIL for long:
the trajectory schedules of `check` (`verify.harness._prefetch`) and the identity battery of
`ngd-verify run` (`verify.battery`). A `Worker` pickles its job to a temporary file and
starts `python -m MODULE JOB FD` with this process's `sys.path` (no threads, JAX state, port
or `__main__` inherited); the module's `__main__` calls `serve`, which sends `(index,
result)` messages through the pipe FD as it computes them, and a reader thread here drains
the pipe (a full pipe would stall the worker). The worker runs the same code on pickled
copies, so what it computes is what this process would; a worker that cannot start or dies
leaves the missing items to the caller (`get` returns None for them), and `close` kills it,
so an interrupted run does not wait for it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["MIN_ITEMS", "Worker", "serve", "worthwhile"]

#: fewer items than this are computed by the caller (a worker costs ~1 s to start)
MIN_ITEMS = 3


def worthwhile(items: int) -> bool:
    """Whether a worker would run beside the caller: two or more CPUs and `MIN_ITEMS` items."""
    return items >= MIN_ITEMS and _cpus() >= 2


def _cpus() -> int:
    """The CPUs this process may run on (all of the machine's where that is not known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Worker:
    """`python -m module JOB FD` computing the items of `job`.

    Args:
        module: the worker's module; its `__main__` calls `serve(sys.argv, compute)`.
        job: what it computes from (pickled).
        name: the reader thread's name.
    """

    def __init__(self, module: str, job: Any, name: str = "ngd-verify worker") -> None:
        self._done: dict[int, Any] = {}
        self._arrived = threading.Condition()
        self._ended = True  # until a worker runs
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._job: str | None = None
        try:
            with tempfile.NamedTemporaryFile("wb", suffix=".pkl", delete=False) as file:
                self._job = file.name
                pickle.dump(job, file)
        except (OSError, pickle.PicklingError):  # no worker: the caller computes everything
            self._remove_job()
            return
        read, write = os.pipe()
        try:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self._process = subprocess.Popen(
                [sys.executable, "-m", module, file.name, str(write)],
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
        self._reader = threading.Thread(target=self._drain, name=name, daemon=True)
        self._reader.start()

    def get(self, index: int) -> Any:
        """Item `index`'s result, waiting for it; None if the worker ended without it."""
        with self._arrived:
            self._arrived.wait_for(lambda: index in self._done or self._ended)
        return self._done.get(index)

    def received(self) -> dict[int, Any]:
        """The results that have arrived so far (without waiting)."""
        with self._arrived:
            return dict(self._done)

    def _drain(self) -> None:
        """The reader thread: take every message as it comes."""
        assert self._conn is not None
        try:
            while True:
                index, result = self._conn.recv()
                with self._arrived:
                    self._done[index] = result
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


def serve(argv: list[str], compute: Callable[[Any], Iterator[tuple[int, Any]]]) -> None:
    """The worker's side: load the job (`argv[1]`), remove its file, send what `compute` yields.

    Args:
        argv: `[program, JOB, FD]` as `Worker` starts it.
        compute: `job -> (index, result), ...`.
    """
    job_path, fd = argv[1], int(argv[2])
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    with contextlib.suppress(FileNotFoundError):  # the parent may have closed already
        os.unlink(job_path)
    conn = Connection(fd, readable=False)
    for message in compute(job):
        conn.send(message)
    conn.close()
