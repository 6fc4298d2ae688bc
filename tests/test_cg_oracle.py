"""The harness's CG oracle: `longdouble` and 40-digit mpmath agree far inside the tolerance.

`verify.harness._cg` computes the Krylov-optimal iterates in numpy's extended `longdouble`
where the platform has the x87 format, else in mpmath. On zoo problems (every loss, the
deepest network, the largest n) both are computed and must agree to 1e-5 of the tolerance
a float64 port's iterate is held to; the negative control is a float64 oracle, whose
disagreement with mpmath is ~2^11 times larger (the ratio of unit roundoffs).
"""

import numpy as np
import pytest

from ngd_ref import zoo
from ngd_ref.dense import krylov_optimal_iterates
from verify._tolerance import solve_rtol
from verify.harness import _cg
from verify.harness._context import CheckContext

#: plain (x0 omitted), Jacobi-preconditioned, nonzero x0 (`verify.harness._cg.VARIANTS`)
_VARIANTS = _cg.VARIANTS[:3]
_PROBLEMS = ("mlp-3x4x3-tanh-softmax_cross_entropy-b3", "mlp-3x4x4-sigmoid-gaussian_logvar-b3",
             "mlp-2x4x4x3-relu-softmax_cross_entropy-b3", "heteroscedastic-2x5x6-tanh-b4")


def _tolerances(problem, a, residuals):
    kappa = float(np.linalg.cond(a))
    return [solve_rtol("float64", length=problem.n_params, depth=k,
                       condition=kappa * residuals[0] / residuals[k - 1])
            for k in range(1, len(residuals))]


@pytest.mark.skipif(not _cg.EXTENDED, reason="numpy's longdouble is not the x87 format here")
@pytest.mark.parametrize("name", _PROBLEMS)
@pytest.mark.parametrize("variant", _VARIANTS, ids=lambda v: v.check)
def test_extended_oracle_agrees_with_mpmath(name, variant):
    problem = zoo.get(name)
    ctx = CheckContext(None, "cg", problem, "float64")
    a, b = _cg.cg_system(ctx)
    _cg._SYSTEMS.setdefault(problem, (a, b))
    x0 = ctx.probe(b.shape[0])[0].tobytes() if variant.start == "probe" else None
    extended, residuals = _cg._optimal_iterates(problem, variant, x0, True)
    exact, _ = _cg._optimal_iterates(problem, variant, x0, False)
    informative = [k for k in range(1, len(residuals))
                   if residuals[k - 1] > _cg._INFORMATIVE["float64"] * residuals[0]]
    tolerances = _tolerances(problem, a, residuals)
    for k in informative:
        error = np.linalg.norm(extended[k - 1] - exact[k - 1]) / np.linalg.norm(exact[k - 1])
        assert error <= 1e-5 * tolerances[k - 1], (k, error, tolerances[k - 1])


def test_float64_oracle_is_not_good_enough():
    """Negative control: the oracle in float64 is off by more than 1e-5 of the tolerance."""
    problem = zoo.get(_PROBLEMS[2])
    ctx = CheckContext(None, "cg", problem, "float64")
    a, b = _cg.cg_system(ctx)
    _cg._SYSTEMS.setdefault(problem, (a, b))
    exact, residuals = _cg._optimal_iterates(problem, _VARIANTS[0], None, False)
    plain = krylov_optimal_iterates(a, b, None, len(exact))[1:]
    ratios = [np.linalg.norm(p - e) / np.linalg.norm(e) / tol
              for p, e, tol in zip(plain, exact, _tolerances(problem, a, residuals), strict=True)]
    assert max(ratios) > 1e-5
