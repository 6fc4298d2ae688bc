"""Run the identity battery: every applicable identity on every problem.

An identity that raises (or whose `applies` raises) is recorded as one `error` result
carrying the exception's type and message, and the run goes on: one broken identity or one
degenerate problem never hides the other results. Results are in problem order, then in
registration order of the identities.

BLAS runs single-threaded during the battery (`threadpoolctl`): its matrices are at most
n ~ 100 on a side, where a multithreaded BLAS only adds synchronization, and on a loaded
machine oversubscription made the zoo's battery twice as slow (30 s vs 16 s measured).

`BatteryWorker` runs the battery in a second process (`verify._worker`), so that `ngd-verify
run` checks the JAX twin meanwhile: both hold the GIL for most of their time, and in one
process they took turns (the battery alone 50 s, the cross-validation's compilations alone 63 s,
together 130 s). The worker runs the same code on pickled copies of the problems.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence

from threadpoolctl import threadpool_limits

from ngd_ref import Problem
from verify._report import CheckResult, Status
from verify._worker import Worker, serve, worthwhile
from verify.identities import IDENTITIES, Identity

__all__ = ["BatteryWorker", "run_battery", "run_identity"]


def run_identity(ident: Identity, problem: Problem) -> list[CheckResult]:
    """Results of one identity on one problem (`[]` if its hypotheses do not hold).

    A failed named hypothesis (`Identity.hypotheses`, e.g. "gradient not degenerate") is one
    `skip` result saying why: the identity is reported as not applicable, not silently passed.

    Exceptions become a single `Status.ERROR` result naming the exception.
    """
    capability = "negative_control" if ident.negative_control else "identity"
    try:
        skipped = ident.not_applicable(problem)
        if skipped is not None:
            return [skipped]
        if not ident.applies(problem):
            return []
        return ident.run(problem)
    except Exception as exc:  # noqa: BLE001 -- containment is the point
        return [CheckResult(ident.name, capability, problem.name, Status.ERROR, None, None,
                            f"{type(exc).__name__}: {exc} [{ident.source}]")]


def run_battery(problems: Sequence[Problem], *, progress: Callable[[str], None] | None = None,
                identities: Sequence[Identity] | None = None,
                results: list[CheckResult] | None = None) -> list[CheckResult]:
    """Every applicable identity on every problem.

    Args:
        problems: the problems (e.g. the zoo plus generated ones).
        progress: called with the problem's name after each problem (e.g. the `advance` of
            `verify._console.progress`).
        identities: a subset to run; default all of `verify.identities.IDENTITIES`.
        results: the list to append the results to as they come (default: a new one); what
            it holds survives an interrupt (Ctrl-C), for a partial report.

    Returns:
        `results`.
    """
    chosen = list(IDENTITIES if identities is None else identities)
    results = [] if results is None else results
    with threadpool_limits(limits=1, user_api="blas"):
        for problem in problems:
            for ident in chosen:
                results.extend(run_identity(ident, problem))
            if progress is not None:
                progress(problem.name)
    return results


class BatteryWorker:
    """The battery on `problems`, computed by a second process while the caller works.

    Args:
        problems: the problems, in report order.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self._problems = list(problems)
        self._worker = Worker("verify.battery", self._problems, name="ngd-verify battery")

    @staticmethod
    def worthwhile(problems: Sequence[Problem]) -> bool:
        """Whether a worker would run beside the caller (`verify._worker.worthwhile`)."""
        return worthwhile(len(problems))

    def collect(self, progress: Callable[[str], None] | None = None) -> list[CheckResult]:
        """Every problem's results in order, waiting for them.

        A problem the worker did not finish (it died, or could not start) is run here.
        """
        results: list[CheckResult] = []
        for index, problem in enumerate(self._problems):
            got = self._worker.get(index)
            results.extend(run_battery([problem]) if got is None else got)
            if progress is not None:
                progress(problem.name)
        return results

    def arrived(self) -> list[CheckResult]:
        """The results of the leading problems that have arrived (an interrupted run)."""
        done = self._worker.received()
        results: list[CheckResult] = []
        for index in range(len(self._problems)):
            if index not in done:
                break
            results.extend(done[index])
        return results

    def close(self) -> None:
        """Stop the worker."""
        self._worker.close()


def _battery(problems: list[Problem]) -> Iterator[tuple[int, list[CheckResult]]]:
    for index, problem in enumerate(problems):
        yield index, run_battery([problem])


if __name__ == "__main__":
    serve(sys.argv, _battery)
