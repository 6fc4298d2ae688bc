"""The tolerance policy: a float64 port off by 1e-7 fails, a float32-rounded result passes."""

import math

import numpy as np
import pytest

from verify._tolerance import compare, hoeffding_bound, rounding_rtol, solve_rtol, unit_roundoff


def test_unit_roundoff_and_bad_dtype():
    assert unit_roundoff("float64") == 2.0**-53 and unit_roundoff("float32") == 2.0**-24
    with pytest.raises(ValueError, match="dtype"):
        unit_roundoff("float16")


def test_float64_port_off_by_1e7_fails_and_float32_rounding_passes():
    rng = np.random.default_rng(0)
    desired = rng.normal(size=(60, 60))
    tol64 = rounding_rtol("float64", length=60, depth=4)
    tol32 = rounding_rtol("float32", length=60, depth=4)
    assert not compare(desired * (1 + 1e-7), desired, tolerance=tol64).passed
    assert compare(desired.astype(np.float32), desired, tolerance=tol32).passed
    assert compare(desired * (1 + 1e-14), desired, tolerance=tol64).passed


def test_magnitude_protects_exact_zeros_but_not_wrong_answers():
    tol = rounding_rtol("float64", length=10)
    tiny = np.full(10, 1e-17)
    assert not compare(tiny, np.zeros(10), tolerance=tol).passed  # relative to 0: fails
    assert compare(tiny, np.zeros(10), tolerance=tol, magnitude=1.0).passed
    assert not compare(np.ones(10), np.zeros(10), tolerance=tol, magnitude=1.0).passed


@pytest.mark.parametrize(
    "actual, reason",
    [(np.zeros(3), "wrong shape"), (np.array([1.0, np.nan]), "non-finite"), ("abc", "not numeric")],
)
def test_structural_failures_have_reasons(actual, reason):
    c = compare(actual, np.ones(2), tolerance=1.0)
    assert not c.passed and reason in c.describe() and math.isinf(c.error)


def test_comparison_is_asymmetric():
    # a huge wrong answer cannot enlarge its own scale
    assert not compare(np.full(3, 1e6), np.ones(3), tolerance=0.1).passed


def test_solve_tolerance_grows_with_condition_and_hoeffding_shrinks_with_samples():
    base = rounding_rtol("float64", length=10, depth=2)
    assert solve_rtol("float64", length=10, depth=2, condition=1e3) == pytest.approx(1e3 * base,
                                                                                     rel=1e-12,
                                                                                     abs=0)
    assert hoeffding_bound(1.0, 400) < hoeffding_bound(1.0, 100)
    # the union bound over more simultaneous tests asks for a larger threshold
    assert hoeffding_bound(1.0, 100, tests=10) > hoeffding_bound(1.0, 100)
    # Hoeffding at FPR 1e-6 with N = 1: t = sqrt(log(2e6) / 2) ~ 2.69 widths
    assert hoeffding_bound(1.0, 1) == pytest.approx(math.sqrt(math.log(2e6) / 2))
