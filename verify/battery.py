"""Run the identity battery: every applicable identity on every problem.

An identity that raises (or whose `applies` raises) is recorded as one `error` result
carrying the exception's type and message, and the run goes on: one broken identity or one
degenerate problem never hides the other results. Results are in problem order, then in
registration order of the identities.

BLAS runs single-threaded during the battery (`threadpoolctl`): its matrices are at most
n ~ 100 on a side, where a multithreaded BLAS only adds synchronization, and on a loaded
machine oversubscription made the zoo's battery twice as slow (30 s vs 16 s measured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from threadpoolctl import threadpool_limits

from ngd_ref import Problem
from verify._report import CheckResult, Status
from verify.identities import IDENTITIES, Identity

__all__ = ["run_battery", "run_identity"]


def run_identity(ident: Identity, problem: Problem) -> list[CheckResult]:
    """Results of one identity on one problem (`[]` if its hypotheses do not hold).

    Exceptions become a single `Status.ERROR` result naming the exception.
    """
    capability = "negative_control" if ident.negative_control else "identity"
    try:
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
