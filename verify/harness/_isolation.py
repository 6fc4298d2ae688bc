"""Running a port call so that a hang can be abandoned: one worker thread and a timeout.

Every port call (`verify.harness._faults.call_port`) runs on a daemon *worker thread* while
the harness waits at most `timeout` seconds for it. The worker is reused from call to call
(thread-local state a port sets up in one call, such as a framework's default device, is
still there in the next), and replaced by a fresh one when a call is abandoned.

What it contains:
* any `BaseException` of the call -- `SystemExit` (`sys.exit(0)` in a port), a
  `KeyboardInterrupt` the port raises itself, `GeneratorExit`, ... -- is handed back to the
  harness as the call's outcome instead of unwinding the harness;
* a call that has not returned after `timeout` seconds is abandoned (`CallTimedOut`) and the
  run goes on.

Limitation: Python cannot kill a thread. An abandoned call keeps running in the background
until it returns or the process exits (the worker is a daemon thread, so it does not keep the
process alive); a busy loop still takes its share of the CPU, and if it later touches the
adapter instance it may disturb that adapter's later calls. What it cannot reach is the
harness's state: it holds only private copies of the inputs, and its result is discarded. A
port that calls `os._exit` or crashes the interpreter (a segfault in native code) cannot be
contained in-process at all; run such ports under an outer process supervisor.

A real Ctrl-C arrives in the main thread, which is the one waiting here, so it interrupts the
wait (the run then writes a partial report, see `verify.cli`).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DEFAULT_TIMEOUT", "CallTimedOut", "Outcome", "run_isolated"]

#: default per-call timeout in seconds (`ngd-verify check --timeout`)
DEFAULT_TIMEOUT = 60.0


class CallTimedOut(Exception):
    """The call did not return within the timeout and was abandoned."""


@dataclasses.dataclass
class Outcome:
    """What a finished call produced: its value, or the `BaseException` it raised."""

    value: Any = None
    error: BaseException | None = None


class _Worker:
    """A daemon thread executing jobs from a queue, one at a time."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="ngd-verify-port", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.jobs.get()()


_lock = threading.Lock()
_worker: _Worker | None = None


def _current_worker() -> _Worker:
    global _worker  # noqa: PLW0603 -- one worker per process, replaced when abandoned
    with _lock:
        if _worker is None:
            _worker = _Worker()
        return _worker


def _abandon(worker: _Worker) -> None:
    global _worker  # noqa: PLW0603
    with _lock:
        if _worker is worker:
            _worker = None


def run_isolated(fn: Callable[[], Any], timeout: float | None) -> Outcome:
    """Run `fn()` on the worker thread; return its `Outcome` (value or raised exception).

    Args:
        fn: the call (it receives nothing; bind the arguments beforehand).
        timeout: seconds to wait; None waits forever.

    The call runs under numpy's default error handling (`np.errstate`), so neither a port's
    `np.seterr(all="raise")` nor the harness's own settings leak across the boundary.

    Raises:
        CallTimedOut: the call did not finish in time; it is abandoned (see module docstring).
    """
    if timeout is not None and not timeout < float("inf"):
        timeout = None  # inf: no limit (Event.wait cannot take it)
    done = threading.Event()
    outcome = Outcome()

    def job() -> None:
        try:
            # numpy's default floating-point error handling: every port call starts from it
            with np.errstate(divide="warn", over="warn", under="ignore", invalid="warn"):
                outcome.value = fn()
        except BaseException as exc:  # noqa: BLE001 -- containment is the point
            outcome.error = exc
        finally:
            done.set()

    worker = _current_worker()
    worker.jobs.put(job)
    if not done.wait(timeout):
        _abandon(worker)
        raise CallTimedOut(f"did not return within {timeout:g} s")
    return outcome
