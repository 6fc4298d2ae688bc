"""The JAX cross-validation (`verify.crossval`) and the fixed-length CG it relies on.

* `ngd_ref.jax.cg_iterates` returns, bitwise, the iterates of `cg_solve(tol=0, maxiter=k)`.
* `crossvalidate` passes on a small subset of the zoo (two frames: a switched loss and a
  single one), and a wrong product (G v scaled by 1 + 2^-10) makes exactly the `ggn_vp`
  checks fail, in both precisions -- the negative control.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import jax as nj
from ngd_ref import zoo
from verify import crossval

_PROBLEMS = ("mlp-3x4x3-tanh-mse-b1", "mlp-3x4x3-tanh-softmax_cross_entropy-b1",
             "mlp-3x4x4-tanh-gaussian_logvar-b1")


pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest


def _system(n=8, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(np.geomspace(1, 1e2, n)) @ q.T
    return a, rng.standard_normal(n), rng.standard_normal(n)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", ["plain", "preconditioned", "x0"])
def test_cg_iterates_equal_cg_solve_with_maxiter_k(variant, dtype):
    a, b, x0 = _system()
    a, b, x0 = (jnp.asarray(t, dtype) for t in (a, b, x0))
    start = x0 if variant == "x0" else None
    precond = (lambda r: r / jnp.diag(a)) if variant == "preconditioned" else None

    def matvec(v):
        return a @ v

    iterates = jax.jit(lambda b: nj.cg_iterates(matvec, b, start, maxiter=10,
                                                precond=precond))(b)
    solved = jax.jit(jax.vmap(lambda k: nj.cg_solve(
        matvec, b, start, tol=0.0, maxiter=k, precond=precond, history=11).x))(jnp.arange(11))
    assert iterates.shape == (11, 8)
    # k past n = 8 too: converged iterates stay put
    np.testing.assert_array_equal(np.asarray(iterates), np.asarray(solved))


def test_cg_iterates_on_pytrees_and_validation():
    a, b, _ = _system(n=4)

    def matvec(t):
        y = jnp.asarray(a) @ jnp.concatenate([t["u"], t["w"]])
        return {"u": y[:2], "w": y[2:]}

    out = nj.cg_iterates(matvec, {"u": jnp.asarray(b[:2]), "w": jnp.asarray(b[2:])}, maxiter=4)
    np.testing.assert_allclose(np.concatenate([out["u"][4], out["w"][4]]),
                               np.linalg.solve(a, b), rtol=1e-9)
    assert np.array_equal(np.asarray(out["u"][0]), np.zeros(2))
    with pytest.raises(ValueError, match="maxiter"):
        nj.cg_iterates(matvec, {"u": jnp.zeros(2), "w": jnp.zeros(2)}, maxiter=-1)


def _failing(results):
    return sorted({(r.capability, r.check) for r in results if r.status.value != "pass"})


def test_crossvalidate_passes_on_a_subset():
    problems = [zoo.get(name) for name in _PROBLEMS]
    results = crossval.crossvalidate(problems)
    assert not _failing(results)
    checks = {r.check for r in results}
    for dtype in crossval.DTYPES:
        for capability in ("hvp", "ggn_vp", "fisher_vp", "empirical_fisher_vp", "ggn_diag",
                           "fisher_diag", "empirical_fisher_diag", "damped_update",
                           "cg_plain", "cg_preconditioned", "cg_x0"):
            assert f"jax_{capability}_{dtype}" in checks
    assert {r.problem for r in results} == set(_PROBLEMS)


def test_crossvalidate_catches_a_wrong_product(monkeypatch):
    """Negative control: `ggn_vp` off by a relative 2^-10 fails, everything else passes."""
    honest = nj.curvature_vp

    def wrong(objective, params, batch, v, curvature, *, mesh=None):
        out = honest(objective, params, batch, v, curvature, mesh=mesh)
        return jax.tree.map(lambda t: t * (1 + 2.0**-10), out) if curvature == "ggn" else out

    monkeypatch.setattr(nj, "curvature_vp", wrong)
    jax.clear_caches()  # the kernels must be traced again with the wrong product
    try:
        results = crossval.crossvalidate([zoo.get(_PROBLEMS[0])])
    finally:
        jax.clear_caches()
    assert _failing(results) == [("ggn_vp", f"jax_ggn_vp_{dtype}") for dtype in
                                 sorted(crossval.DTYPES)]
