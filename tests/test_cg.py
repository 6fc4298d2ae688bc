"""CG: the dense reference and the JAX twin, iterate by iterate against Krylov optimality."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from ngd_ref import jax as nj
from ngd_ref.dense import cg, cg_iterates, cg_solve, krylov_optimal_iterate, mp_backend
from verify._tolerance import solve_rtol

pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest


def _system(n=8, seed=0, spread=1e2):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(np.geomspace(1, spread, n)) @ q.T
    return a, rng.standard_normal(n), rng.standard_normal(n)


VARIANTS = {
    "plain": dict(x0=False, precond=False),
    "preconditioned": dict(x0=False, precond=True),
    "x0": dict(x0=True, precond=False),
    "x0-preconditioned": dict(x0=True, precond=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_cg_iterates_are_krylov_optimal(variant):
    a, b, x0 = _system()
    opts = VARIANTS[variant]
    start = x0 if opts["x0"] else None
    m = np.diag(1 / np.diag(a)) if opts["precond"] else None
    iterates = cg_iterates(a, b, start, maxiter=5, precond=m)
    kappa = np.linalg.cond(a)
    for k in range(1, 6):
        optimal = krylov_optimal_iterate(a, b, start, k, precond=m)
        tol = solve_rtol("float64", length=8, depth=k, condition=kappa)
        assert np.linalg.norm(iterates[k] - optimal) <= tol * np.linalg.norm(optimal)


def test_dense_cg_runs_in_mpmath():
    a, b, _ = _system(n=5)
    bk = mp_backend(40)
    with bk.precision():
        am, bm = bk.asarray(a), bk.asarray(b)
        x = cg(am, bm, tol=1e-30)
        residual = bm - am @ x
        assert float(mpmath.sqrt(np.sum(residual * residual))) < 1e-28


def test_dense_cg_reports_true_residual_and_not_pd():
    a, b, _ = _system()
    result = cg_solve(a, b, tol=1e-12)
    assert result.converged and result.residual_norm <= 1e-12 * np.linalg.norm(b)
    with pytest.raises(ValueError, match="matvec: not positive definite"):
        cg_solve(-a, b)
    with pytest.raises(ValueError, match="x0"):
        cg_solve(a, b, x0=np.zeros(3))


@jax.jit
def _jax_iterate(a, b, x0, diag_inv, k, use_precond):
    precond = lambda r: jnp.where(use_precond, diag_inv * r, r)  # noqa: E731
    return nj.cg_solve(lambda v: a @ v, b, x0, tol=0.0, maxiter=k, precond=precond, history=9)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_jax_cg_iterates_are_krylov_optimal(variant, dtype):
    a, b, x0 = _system()
    opts = VARIANTS[variant]
    start = x0 if opts["x0"] else np.zeros(8)
    m = np.diag(1 / np.diag(a)) if opts["precond"] else None
    cast = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    kappa = np.linalg.cond(a)
    for k in range(1, 6):
        result = _jax_iterate(cast(a), cast(b), cast(start), cast(1 / np.diag(a)), k,
                              opts["precond"])
        assert int(result.iterations) == k
        optimal = krylov_optimal_iterate(a, b, start, k, precond=m)
        tol = solve_rtol(dtype, length=8, depth=k, condition=kappa)
        error = np.linalg.norm(np.asarray(result.x, np.float64) - optimal)
        assert error <= tol * np.linalg.norm(optimal)


def test_jax_cg_converged_flag_and_history():
    a, b, _ = _system()
    result = nj.cg_solve(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), tol=1e-12, maxiter=100)
    assert bool(result.converged) and int(result.status) == nj.CGStatus.CONVERGED
    assert float(result.residual_norm) <= 1e-12 * np.linalg.norm(b)
    norms = np.asarray(result.residual_norms)
    assert np.isnan(norms[int(result.iterations) + 1:]).all()
    assert np.isfinite(norms[: int(result.iterations) + 1]).all()
    capped = nj.cg_solve(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), tol=1e-12, maxiter=2)
    assert not bool(capped.converged) and int(capped.status) == nj.CGStatus.MAX_ITERATIONS
    indefinite = nj.cg_solve(lambda v: -jnp.asarray(a) @ v, jnp.asarray(b), maxiter=10)
    assert int(indefinite.status) == nj.CGStatus.NOT_POSITIVE_DEFINITE


def test_jax_cg_on_pytrees_and_maxiter_zero():
    a, b, x0 = _system(n=4)
    tree_b = {"u": jnp.asarray(b[:2]), "w": jnp.asarray(b[2:])}
    tree_x0 = {"u": jnp.asarray(x0[:2]), "w": jnp.asarray(x0[2:])}

    def matvec(t):
        y = jnp.asarray(a) @ jnp.concatenate([t["u"], t["w"]])
        return {"u": y[:2], "w": y[2:]}

    x = nj.cg(matvec, tree_b, tree_x0, tol=0.0, maxiter=0)
    assert np.array_equal(np.asarray(x["u"]), x0[:2])
    x = nj.cg(matvec, tree_b, tol=1e-12, maxiter=50)
    np.testing.assert_allclose(np.concatenate([x["u"], x["w"]]), np.linalg.solve(a, b), rtol=1e-9)
