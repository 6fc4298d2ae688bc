"""The pytest helper: a port's own suite runs the checks, one test per capability x problem."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

from ngd_ref import zoo  # noqa: E402

N_QUICK = len(zoo.problems(quick=True))
# GgnSumNotMean is wrong exactly where c = 1/B differs from 1
N_MEAN_BATCHED = sum(p.reduction == "mean" and p.batch_size > 1 for p in zoo.problems(quick=True))

CASES = [
    ("correct-port", "verify.mutants:NumpyPort", ("ggn", "gradient"), {"passed": 2 * N_QUICK}),
    (
        "buggy-port",
        "verify.mutants._corpus:GgnSumNotMean",
        ("ggn",),
        {"failed": N_MEAN_BATCHED, "passed": N_QUICK - N_MEAN_BATCHED},
    ),
    ("declines-variant", "tests_port:Declines", ("kfac_factors",), {"skipped": N_QUICK}),
]


@pytest.mark.parametrize(
    ("label", "target", "capabilities", "outcome"), CASES, ids=[c[0] for c in CASES]
)
def test_conformance_tests_in_a_port_suite(pytester, label, target, capabilities, outcome):
    pytester.makepyfile(
        tests_port="""
        class Declines:
            def kfac_factors(self, problem, kind):
                raise NotImplementedError("no K-FAC here")
    """
    )
    pytester.makepyfile(
        test_port=f"""
        from verify.pytest_plugin import conformance_tests
        test_conformance = conformance_tests({target!r}, capabilities={capabilities!r})
    """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(**outcome)


def test_test_ids_name_capability_and_problem(pytester):
    pytester.makepyfile(
        test_port="""
        from verify.pytest_plugin import conformance_tests
        test_conformance = conformance_tests("numpy-port", capabilities=["loss"])
    """
    )
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_conformance?loss?mlp-3x4x3-tanh-mse-b1??*"])


def test_usage_error_fails_collection(pytester):
    pytester.makepyfile(
        test_port="""
        from verify.pytest_plugin import conformance_tests
        class Empty:
            pass
        test_conformance = conformance_tests(Empty)
    """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*claims no capability*"])
    assert result.ret != 0
