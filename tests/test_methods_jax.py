"""JAX twins of the seed methods vs the dense reference, in float64 and float32."""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import dense as ref
from ngd_ref import zoo
from ngd_ref.curvature._jax import canonical_vector, from_problem
from ngd_ref.lowrank import _jax as lowrank_jax
from ngd_ref.newton import _jax as newton_jax
from ngd_ref.quasi_newton import _jax as qn_jax
from ngd_ref.shampoo import _jax as shampoo_jax
from verify._tolerance import solve_rtol
from verify.adapters.ngd_ref_jax import NgdRefJax, NgdRefJaxFloat32
from verify.harness import TWIN_SUFFIX, run_capability

QUICK = zoo.problems(quick=True)
IDS = [p.name for p in QUICK]
DTYPES = ["float64", "float32"]


pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest


def _rel(actual, desired) -> float:
    return float(np.linalg.norm(np.asarray(actual, np.float64) - desired) / np.linalg.norm(desired))


def _spd(n: int, seed: int, condition: float) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    m = (q * np.geomspace(1.0, 1.0 / condition, n)) @ q.T
    return (m + m.T) / 2


# One compilation per architecture and dtype is the cost here: three problems cover a
# single example, several examples with a sum, and the indefinite heteroscedastic loss.
TRUST = [zoo.get(n) for n in ("mlp-3x4x3-tanh-mse-b1",
                              "mlp-3x4x3-sigmoid-softmax_cross_entropy-b3-sum",
                              "mlp-3x4x4-sigmoid-gaussian_logvar-b3-sum")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", TRUST, ids=[p.name for p in TRUST])
def test_trust_region_twin(problem, dtype):
    d = ref.dense(problem)
    lam = 0.1 * float(np.linalg.norm(d.hessian, 2))
    objective, params, batch = from_problem(problem, dtype)
    got = canonical_vector(newton_jax.trust_region_update(objective, params, batch, lam))
    cond = np.linalg.cond(ref.absolute_hessian(d.hessian) + lam * np.eye(problem.n_params))
    tol = solve_rtol(dtype, length=problem.n_params, depth=len(problem.layers) + 2, condition=cond)
    assert _rel(got, ref.trust_region_update(problem, lam)) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", QUICK, ids=IDS)
def test_lowrank_twin(problem, dtype):
    d = ref.dense(problem)
    lam = 0.1 * max(float(np.linalg.norm(d.ggn, 2)), 1e-3)
    objective, params, batch = from_problem(problem, dtype)
    got = canonical_vector(lowrank_jax.lowrank_ggn_update(objective, params, batch, lam))
    cond = np.linalg.cond(d.ggn + lam * np.eye(problem.n_params))
    tol = solve_rtol(dtype, length=problem.n_params, depth=len(problem.layers) + 2, condition=cond)
    assert _rel(got, ref.lowrank_ggn_update(problem, lam)) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_quasi_newton_twins(dtype):
    n, m = 8, 4
    A = _spd(n, 0, 20.0)
    rng = np.random.default_rng(1)
    s = [rng.standard_normal(n) for _ in range(m)]
    y = [A @ v for v in s]
    g = rng.standard_normal(n)
    stacked = (np.asarray(x, dtype) for x in (g, np.stack(s), np.stack(y)))
    got = qn_jax.lbfgs_direction(*stacked, 0.3)
    tol = solve_rtol(dtype, length=n, depth=2 * m + 1, condition=np.linalg.cond(A))
    assert _rel(got, ref.lbfgs_direction(g, s, y, 0.3)) <= tol
    B = _spd(n, 2, 5.0)
    got_b = qn_jax.bfgs_update(*(np.asarray(x, dtype) for x in (B, s[0], y[0])))
    assert _rel(got_b, ref.bfgs_update(B, s[0], y[0])) <= solve_rtol(dtype, length=n, depth=2,
                                                                     condition=20.0 * 5.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2, 4], ids=lambda p: f"p{p}")
def test_inverse_root_twins(p, dtype):
    M = _spd(6, p, 50.0)
    desired = ref.inverse_root(M, p, 0.01)
    tol = solve_rtol(dtype, length=6, depth=p + 1, condition=50.0)
    assert _rel(shampoo_jax.inverse_root(np.asarray(M, dtype), p, 0.01), desired) <= tol
    newton = shampoo_jax.coupled_newton_inverse_root(np.asarray(M, dtype), p, 0.01)
    rho = float(newton.residual)
    assert rho < 1 and int(newton.iterations) > 0
    assert _rel(newton.root, desired) <= rho / (p * (1 - rho)) + tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_shampoo_direction_twin(dtype):
    G = np.random.default_rng(3).standard_normal((4, 3))
    L, R = ref.shampoo_statistics([G], 0.9)
    desired = ref.shampoo_direction(G, L, R, 1e-2)
    got = shampoo_jax.shampoo_direction(*(np.asarray(x, dtype) for x in (G, L, R)), 1e-2)
    cond = (np.linalg.norm(L, 2) + 1e-2) / 1e-2
    assert _rel(got, desired) <= solve_rtol(dtype, length=4, depth=5, condition=cond ** 0.25)


def test_jitted_twins_do_not_recompile():
    M = np.asarray(_spd(5, 0, 10.0))
    shampoo_jax.inverse_root(M, 2, 0.1)
    before = shampoo_jax.inverse_root._cache_size()
    shampoo_jax.inverse_root(M + 1.0, 2, 0.2)
    assert shampoo_jax.inverse_root._cache_size() == before



@pytest.mark.parametrize("adapter", [NgdRefJax, NgdRefJaxFloat32], ids=DTYPES)
@pytest.mark.parametrize("problem", TRUST, ids=[p.name for p in TRUST])
def test_adapter_lbfgs_step_passes_the_harness(problem, adapter):
    results = run_capability(adapter(), "lbfgs_step", problem, dtype=adapter.dtype)
    checks = ["lbfgs_step_params", "lbfgs_step_s", "lbfgs_step_y"]
    assert [r.check for r in results] == checks + [c + TWIN_SUFFIX for c in checks]
    assert all(r.status == "pass" for r in results), [r.message for r in results]
