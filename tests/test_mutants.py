"""Mutation testing of the oracle: every buggy port is caught, every correct port passes."""

from __future__ import annotations

import re

import pytest

from verify._report import Status
from verify.harness import check_adapter
from verify.mutants import CONTROLS, BugClass, load_corpus
from verify.mutants._run import run_control, run_mutant

MUTANTS = load_corpus()


def test_corpus_is_large_and_covers_every_bug_class():
    float64 = [m for m in MUTANTS.values() if m.dtype == "float64"]
    assert len(float64) >= 25
    assert {m.bug_class for m in MUTANTS.values()} == set(BugClass)
    assert {m.dtype for m in MUTANTS.values()} == {"float64", "float32"}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_killed(name):
    outcome = run_mutant(MUTANTS[name])
    assert outcome.killed, f"{name} survived: {MUTANTS[name].description}"
    assert outcome.evidence.capability in MUTANTS[name].capabilities
    if outcome.evidence.capability == "optimizer_trajectory":  # names the step and its events
        assert re.search(r"theta_\d+ (leaves the tolerance first|is not finite).* at step \d+: "
                         r"(?!no event)", outcome.evidence.message), outcome.evidence.message


#: capabilities whose checks must pass on the quick source (besides no failure anywhere)
QUICK_COVERAGE = {"hessian", "kfac_factors", "kfac_solve", "cg", "damped_update", "hvp",
                  "lbfgs_direction", "lbfgs_step"}


@pytest.mark.parametrize("control", CONTROLS, ids=lambda cls: cls.name)
def test_control_passes(control):
    # `check_adapter(source="quick")` runs the same checks as `run_control` (the quick zoo,
    # seed 0); one run serves both claims: the control passes, and the quick source covers
    # every capability path (formerly a second run in test_harness.py)
    report = check_adapter(control, source="quick", show_progress=False)
    failures = [r for r in report.results if Status(r.status) in (Status.FAIL, Status.ERROR)]
    assert not failures, "\n".join(f"{f.check} {f.problem}: {f.message}" for f in failures[:5])
    assert report.passed
    passed = {r.capability for r in report.results if Status(r.status) is Status.PASS}
    assert passed >= QUICK_COVERAGE


def test_run_control_reports_no_failure_of_a_correct_port():
    # `run_control` itself, on the smallest slice that exercises it (one capability)
    assert run_control(CONTROLS[0], capabilities=("gradient",)) == []


# The two renderings of seed 004's L-BFGS loop: rebinding (the seed's code, a wrong `y` caught
# by value) and the in-place numpy version (an aliasing bug caught by read-only inputs).
LBFGS_KILLS = [
    ("seed-lbfgs-overwritten-gradient", "lbfgs_step_y", "error"),
    ("lbfgs-direction-in-place", "lbfgs_direction", "wrote to a read-only input"),
]


@pytest.mark.parametrize("suffix", ["", "-float32"], ids=["float64", "float32"])
@pytest.mark.parametrize(("name", "check", "text"), LBFGS_KILLS, ids=[k[0] for k in LBFGS_KILLS])
def test_seed_lbfgs_bugs_are_killed_where_expected(name, check, text, suffix):
    outcome = run_mutant(MUTANTS[name + suffix])
    assert outcome.killed
    assert outcome.evidence.check == check
    assert outcome.evidence.status == "fail"
    assert text in outcome.evidence.message
