"""High-precision certification: how many digits the float64 reference carries.

The dense reference runs the same code on `FLOAT64` and on `mp_backend(dps)` (mpmath). Since
the problem's data are float64 numbers converted exactly, the mpmath result at 50 digits is
the exact answer to ~50 digits, and comparing it with the float64 result says how many
significant digits float64 delivered *for this problem* (conditioning included). Recomputing
at a higher precision certifies the mpmath result itself (`mp_self_agreement`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ngd_ref._backend import FLOAT64, mp_backend
from ngd_ref._problem import Problem
from ngd_ref.curvature._dense import DenseCurvature

__all__ = ["QUANTITIES", "agreement_digits", "certify", "mp_self_agreement"]

QUANTITIES: tuple[str, ...] = (
    "loss", "gradient", "hessian", "ggn", "fisher", "fisher_expected_hessian", "empirical_fisher",
)


def agreement_digits(approx, exact) -> float:
    """Significant decimal digits to which `approx` agrees with `exact`, normwise.

    `-log10(||approx - exact|| / ||exact||)` (Frobenius norms), evaluated in the precision of
    the inputs (mpmath object arrays stay in mpmath). Returns `inf` for exact agreement and,
    when `exact` is zero, the digits of absolute agreement.
    """
    a = np.asarray(approx, dtype=object).reshape(-1)
    e = np.asarray(exact, dtype=object).reshape(-1)
    diff = math.sqrt(float(sum(abs(x) ** 2 for x in a - e)))
    size = math.sqrt(float(sum(abs(x) ** 2 for x in e)))
    if diff == 0.0:
        return math.inf
    return -math.log10(diff / size) if size else -math.log10(diff)


def certify(problem: Problem, *, dps: int = 50,
            quantities: Sequence[str] = QUANTITIES) -> dict[str, float]:
    """Significant digits that the float64 reference carries for each quantity of `problem`.

    Args:
        problem: any valid problem.
        dps: mpmath working precision of the exact recomputation (>= 20).
        quantities: attribute names of `DenseCurvature` to certify.

    Returns:
        `{name: digits}`; float64 can carry at most ~15.9 digits; much less flags an
        ill-conditioned problem (e.g. a saturated softmax) rather than a bug.
    """
    low, high = DenseCurvature(problem, FLOAT64), DenseCurvature(problem, mp_backend(dps))
    with high.backend.precision():
        return {
            name: agreement_digits(getattr(low, name), getattr(high, name)) for name in quantities
        }


def mp_self_agreement(problem: Problem, *, dps: int = 50, check_dps: int = 70,
                      quantities: Sequence[str] = QUANTITIES) -> dict[str, float]:
    """Digits to which the mpmath reference at `dps` agrees with itself at `check_dps`.

    This is how the golden fixtures certify their own digits: a quantity stable under a 20-digit
    increase in working precision is correct to (at least) the reported number of digits.
    """
    low, high = (DenseCurvature(problem, mp_backend(dps)),
                 DenseCurvature(problem, mp_backend(check_dps)))
    with high.backend.precision():
        return {
            name: agreement_digits(getattr(low, name), getattr(high, name)) for name in quantities
        }
