"""The harness's CG oracle: `longdouble` and 40-digit mpmath agree far inside the tolerance.

`verify.harness._cg` computes the Krylov-optimal iterates in numpy's extended `longdouble`
where the platform has the x87 format, else in mpmath. On zoo problems (every loss, the
deepest network, the largest n) both are computed and must agree to 1e-5 of the tolerance
a float64 port's iterate is held to; the negative control is a float64 oracle, whose
disagreement with mpmath is ~2^11 times larger (the ratio of unit roundoffs).
"""

import numpy as np
import pytest

from ngd_ref import dense as ref_dense
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


def _iterate_condition_alone(a, r0, diag_inv, residuals, k):
    """The per-k computation as written before `iterate_conditions` (its own basis and kappa)."""
    root = np.ones_like(r0) if diag_inv is None else np.sqrt(diag_inv)
    a_hat = root[:, None] * a * root[None, :]
    w, columns = r0 / root * (root**2), []
    for _ in range(k):
        norm = float(np.linalg.norm(w))
        if not norm > 0:
            break
        columns.append(w / norm)
        w = a_hat @ columns[-1]
    singular = np.linalg.svd(np.stack(columns, axis=1), compute_uv=False)
    basis = float(singular[0] / singular[-1]) if singular[-1] > 0 else np.inf
    return float(np.linalg.cond(a_hat)) * (residuals[0] / residuals[k - 1]), basis


@pytest.mark.parametrize("rank", [7, 3], ids=["full", "invariant-after-3"])
def test_iterate_conditions_equal_the_per_iterate_computation(rank):
    """One basis for every k gives exactly the numbers of one basis per k (also once the
    Krylov space stops growing), with and without a Jacobi preconditioner."""
    rng = np.random.default_rng(3)
    q = np.linalg.qr(rng.standard_normal((7, 7)))[0]
    a = q @ np.diag(np.linspace(1.0, 50.0, 7)) @ q.T
    r0 = q[:, :rank] @ rng.standard_normal(rank)  # in an invariant subspace of dimension rank
    residuals = tuple(float(v) for v in 0.5 ** np.arange(8))
    for diag_inv in (None, 1.0 / np.diag(a)):
        if diag_inv is not None and rank < 7:
            continue  # the subspace is invariant for A, not for M^{1/2} A M^{1/2}
        together = list(ref_dense.iterate_conditions(a, r0, diag_inv, residuals))
        assert together == [_iterate_condition_alone(a, r0, diag_inv, residuals, k)
                            for k in range(1, 9)]
        assert together[4] == ref_dense.iterate_condition(a, r0, diag_inv, residuals, 5)
