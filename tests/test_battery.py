"""The battery runner: every identity on every problem, errors contained."""

from __future__ import annotations

from ngd_ref import zoo
from verify._report import Status
from verify._tolerance import compare
from verify.battery import run_battery
from verify.identities import IDENTITIES, Identity
from verify.identities._registry import result


def _boom(problem):
    raise RuntimeError("exploded on purpose")


def _fine(problem):
    return result("fine", problem, compare(1.0, 1.0, tolerance=1e-15), "1 = 1", "test")


BOOM = Identity("boom", "test", "raises", _boom, lambda p: True)
BAD_APPLIES = Identity("bad_applies", "test", "applies raises", _fine, _boom)
FINE = Identity("fine", "test", "passes", lambda p: [_fine(p)], lambda p: True)
NEVER = Identity("never", "test", "never applies", lambda p: [_fine(p)], lambda p: False)


def test_exceptions_become_error_results_and_the_run_goes_on():
    problems = zoo.problems(quick=True)[:2]
    seen = []
    results = run_battery(problems, identities=[BOOM, BAD_APPLIES, FINE, NEVER],
                          progress=seen.append)
    assert [r.check for r in results] == ["boom", "bad_applies", "fine"] * 2
    errors = [r for r in results if r.status is Status.ERROR]
    assert len(errors) == 4 and all("RuntimeError: exploded on purpose" in r.message
                                    for r in errors)
    assert all(r.status is Status.PASS for r in results if r.check == "fine")
    assert seen == [p.name for p in problems]


def test_full_battery_on_quick_zoo_passes(battery):
    """Every identity on the quick zoo (the session's `battery`: computed once, shared)."""
    results = [r for rs in battery.run(zoo.problems(quick=True), IDENTITIES).values() for r in rs]
    assert results and all(r.status is Status.PASS for r in results), [
        (r.check, r.problem, r.message) for r in results if r.status is not Status.PASS]
