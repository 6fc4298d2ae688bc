"""Dense references of the seeds' other second-order methods vs independent constructions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from ngd_ref import dense as ref
from ngd_ref import zoo
from verify._tolerance import rounding_rtol, solve_rtol

QUICK = zoo.problems(quick=True)
IDS = [p.name for p in QUICK]
MP = ref.mp_backend(40)


def _spd(n: int, seed: int, condition: float = 1e3) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    m = (q * np.geomspace(1.0, 1.0 / condition, n)) @ q.T
    return (m + m.T) / 2     # exactly symmetric (eigh reads one triangle, Newton all of it)


def _rel(actual, desired) -> float:
    return float(np.linalg.norm(np.asarray(actual) - desired) / np.linalg.norm(desired))


# -- Newton / trust region ---------------------------------------------------------------------
@pytest.mark.parametrize("problem", QUICK, ids=IDS)
def test_trust_region_equals_solve_with_absolute_hessian(problem):
    d = ref.dense(problem)
    lam = 0.1 * np.linalg.norm(d.hessian, 2)
    absolute = scipy.linalg.sqrtm(d.hessian @ d.hessian).real      # |H| = (H^2)^{1/2}
    damped = absolute + lam * np.eye(problem.n_params)
    desired = -np.linalg.solve(damped, d.gradient)
    tol = solve_rtol("float64", length=problem.n_params, depth=4, condition=np.linalg.cond(damped))
    assert _rel(ref.trust_region_update(problem, lam), desired) <= tol


@pytest.mark.parametrize("problem", QUICK[:2], ids=IDS[:2])
def test_trust_region_float64_matches_mpmath(problem):
    lam = 0.25
    exact = MP.to_float64(ref.trust_region_update(problem, lam, backend=MP))
    d = ref.dense(problem)
    cond = np.linalg.cond(ref.absolute_hessian(d.hessian) + lam * np.eye(problem.n_params))
    assert _rel(ref.trust_region_update(problem, lam), exact) <= solve_rtol(
        "float64", length=problem.n_params, depth=4, condition=cond)


def test_newton_update_is_damped_hessian_step_and_model_value():
    problem = QUICK[0]
    d = ref.dense(problem)
    lam = 3.0
    step = ref.newton_update(problem, lam)
    np.testing.assert_allclose((d.hessian + lam * np.eye(problem.n_params)) @ step, -d.gradient,
                               atol=1e-12)
    # m(d_N) = g^T d_N / 2 at the stationary point
    model = ref.quadratic_model(problem, step, damping=lam)
    assert model == pytest.approx(d.gradient @ step / 2, rel=1e-12)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "0.1"], ids=["negative", "nan", "string"])
def test_damping_is_validated(bad):
    with pytest.raises(ValueError, match="damping"):
        ref.trust_region_update(QUICK[0], bad)


# -- BFGS / L-BFGS -------------------------------------------------------------------------------
def _pairs(n: int, m: int, seed: int):
    A = _spd(n, seed, 50.0)
    rng = np.random.default_rng(seed + 1)
    s = [rng.standard_normal(n) for _ in range(m)]
    return A, s, [A @ v for v in s]


def test_bfgs_update_is_inverse_of_inverse_update():
    A, s, y = _pairs(6, 1, 0)
    B = _spd(6, 7, 10.0)
    updated = ref.bfgs_update(B, s[0], y[0])
    inverse = ref.inverse_bfgs_update(np.linalg.inv(B), s[0], y[0])
    np.testing.assert_allclose(updated @ inverse, np.eye(6), atol=1e-11)
    np.testing.assert_allclose(updated @ s[0], y[0], atol=1e-12)


@pytest.mark.parametrize("m", [0, 1, 3, 5], ids=lambda m: f"memory{m}")
@pytest.mark.parametrize("gamma", [1.0, 0.37], ids=["gamma1", "gamma037"])
def test_two_loop_equals_dense_matrix_built_independently(m, gamma):
    n = 7
    A, s, y = _pairs(n, m, 3)
    # independent construction: the explicit product form of N&W (7.19)
    H = gamma * np.eye(n)
    for si, yi in zip(s, y, strict=True):
        rho = 1.0 / (yi @ si)
        V = np.eye(n) - rho * np.outer(yi, si)
        H = V.T @ H @ V + rho * np.outer(si, si)
    g = np.random.default_rng(9).standard_normal(n)
    g_before = g.copy()
    got = ref.lbfgs_direction(g, s, y, gamma)
    np.testing.assert_array_equal(g, g_before)          # the input is never overwritten
    np.testing.assert_allclose(got, H @ g, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(ref.inverse_bfgs_matrix(s, y, gamma, n=n), H, rtol=1e-11, atol=1e-12)


def test_lbfgs_in_mpmath_matches_float64():
    A, s, y = _pairs(5, 3, 11)
    g = np.arange(1.0, 6.0)
    exact = MP.to_float64(ref.lbfgs_direction(MP.asarray(g), [MP.asarray(v) for v in s],
                                              [MP.asarray(v) for v in y], 0.5, backend=MP))
    assert _rel(ref.lbfgs_direction(g, s, y, 0.5), exact) <= solve_rtol(
        "float64", length=5, depth=7, condition=np.linalg.cond(A))


def test_lbfgs_step_pair_is_a_secant_pair():
    problem = QUICK[0]
    new_params, s, y = ref.lbfgs_step(problem, [], [], 0.01)
    d = ref.dense(problem)
    np.testing.assert_allclose(s, -0.01 * d.gradient)
    np.testing.assert_array_equal(new_params, d.theta + s)
    moved = ref.DenseCurvature(problem, params=d.theta + s)
    np.testing.assert_allclose(y, moved.gradient - d.gradient, rtol=1e-14)


@pytest.mark.parametrize("call, match", [
    (lambda: ref.bfgs_update(np.eye(2), [1.0, 0.0], [0.0, 1.0]), "y\\^T s = 0"),
    (lambda: ref.bfgs_update(np.eye(3), [1.0, 0.0], [1.0, 1.0]), "B: expected shape"),
    (lambda: ref.lbfgs_direction([1.0, 2.0], [[1.0, 0.0]], []), "equally many"),
    (lambda: ref.lbfgs_direction([1.0, 2.0], [[1.0, 0, 0]], [[1.0, 0, 0]]), "s_list\\[0\\]"),
], ids=["zero-curvature", "shape", "unequal-lists", "pair-shape"])
def test_quasi_newton_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- diagonals --------------------------------------------------------------------------------
@pytest.mark.parametrize("problem", QUICK, ids=IDS)
def test_exact_diagonals_equal_matrix_diagonals(problem):
    d = ref.dense(problem)
    tol = rounding_rtol("float64", length=problem.n_params, depth=4)
    for got, matrix in ((ref.hessian_diag(problem), d.hessian), (ref.ggn_diag(problem), d.ggn),
                        (ref.empirical_fisher_diag(problem), d.empirical_fisher)):
        assert np.linalg.norm(got - np.diag(matrix)) <= tol * np.linalg.norm(np.abs(matrix))


def test_hutchinson_is_exact_on_all_probes_of_a_small_matrix():
    # Averaging z * (A z) over ALL 2^n sign vectors gives diag(A) exactly; the
    # variance over them is sum_{j != i} A_ij^2 (enumeration: an independent construction).
    A = np.random.default_rng(2).standard_normal((5, 5))
    probes = np.array(np.meshgrid(*[[-1.0, 1.0]] * 5)).reshape(5, -1).T
    samples = probes * (probes @ A.T)
    np.testing.assert_allclose(samples.mean(axis=0), np.diag(A), atol=1e-14)
    np.testing.assert_allclose(samples.var(axis=0), ref.hutchinson_variance(A), rtol=1e-13)
    assert np.all(np.abs(samples - np.diag(A)) <= ref.hutchinson_range(A) / 2 + 1e-14)


def test_hutchinson_is_deterministic_given_the_seed_and_exact_for_diagonal_matrices():
    A = np.diag([1.0, -2.0, 3.0])
    estimate = ref.hutchinson_diag(lambda v: A @ v, 3, 5, seed=0)
    np.testing.assert_allclose(estimate, [1.0, -2.0, 3.0])
    B = np.random.default_rng(0).standard_normal((4, 4))
    one = ref.hutchinson_diag(lambda v: B @ v, 4, 10, seed=3)
    np.testing.assert_array_equal(one, ref.hutchinson_diag(lambda v: B @ v, 4, 10, seed=3))
    assert not np.array_equal(one, ref.hutchinson_diag(lambda v: B @ v, 4, 10, seed=4))
    # given the matrix, the same probes in one product: the same estimate up to the order of
    # its sums (10 probes of 4 terms each, relative to the sum of |B|)
    np.testing.assert_allclose(ref.hutchinson_diag(B, 4, 10, seed=3), one, rtol=0,
                               atol=rounding_rtol("float64", length=40) * np.abs(B).sum())
    with pytest.raises(ValueError, match=r"\(4, 4\) matrix"):
        ref.hutchinson_diag(B[:3], 4, 10, seed=3)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0, "num_samples": 1}, "n: expected"), ({"n": 3, "num_samples": 0}, "num_samples"),
], ids=["n", "samples"])
def test_hutchinson_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ref.hutchinson_diag(lambda v: v, seed=0, **kwargs)


def test_ema_second_moment_recursion_and_adam_update():
    d1, d2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    beta = 0.9
    v = (beta * (1 - beta) * d1**2 + (1 - beta) * d2**2) / (1 - beta**2)
    np.testing.assert_allclose(ref.ema_second_moment([d1, d2], beta), v, rtol=1e-15)
    np.testing.assert_allclose(ref.diagonal_update(np.array([2.0, 1.0]), np.array([4.0, 0.25])),
                               [-1.0, -2.0])
    with pytest.raises(ValueError, match="second moment"):
        ref.diagonal_update(np.ones(2), np.array([1.0, -1.0]))


# -- low-rank GGN ---------------------------------------------------------------------------------
@pytest.mark.parametrize("problem", QUICK, ids=IDS)
def test_lowrank_equals_dense_damped_ggn(problem):
    d = ref.dense(problem)
    lam = 0.1 * max(np.linalg.norm(d.ggn, 2), 1e-3)
    damped = d.ggn + lam * np.eye(problem.n_params)
    tol = solve_rtol("float64", length=problem.n_params, depth=4, condition=np.linalg.cond(damped))
    assert _rel(ref.lowrank_ggn_update(problem, lam), d.damped_update("ggn", lam)) <= tol


def test_lowrank_mpmath_agrees_with_float64():
    problem = QUICK[1]
    exact = MP.to_float64(ref.lowrank_ggn_update(problem, 0.5, backend=MP))
    assert _rel(ref.lowrank_ggn_update(problem, 0.5), exact) < 1e-12
    with pytest.raises(ValueError, match="damping"):
        ref.lowrank_ggn_update(problem, 0.0)


# -- Shampoo ------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2, 3, 4, 8], ids=lambda p: f"p{p}")
def test_inverse_root_is_the_inverse_root(p):
    M = _spd(6, p, 100.0)
    X = ref.inverse_root(M, p, ridge=0.01)
    np.testing.assert_allclose(np.linalg.matrix_power(X, p) @ (M + 0.01 * np.eye(6)), np.eye(6),
                               atol=1e-12)
    newton = ref.coupled_newton_inverse_root(M, p, ridge=0.01)
    assert newton.converged and newton.iterations < 50
    assert _rel(newton.root, X) <= newton.residual / p / (1 - newton.residual) + 1e-12


def test_inverse_root_mpmath_and_validation():
    M = _spd(4, 0, 10.0)
    exact_mp = ref.inverse_root(M, 4, backend=MP)
    exact = MP.to_float64(exact_mp)
    assert _rel(ref.inverse_root(M, 4), exact) < 1e-13
    newton = ref.coupled_newton_inverse_root(M, 4, backend=MP)
    with MP.precision():
        assert newton.converged and float(np.max(np.abs(newton.root - exact_mp))) < 1e-30
    with pytest.raises(ValueError, match="not positive definite"):
        ref.inverse_root(np.diag([1.0, 0.0]), 2)
    with pytest.raises(ValueError, match="p: expected"):
        ref.inverse_root(M, 0)
    with pytest.raises(ValueError, match="M: expected a square"):
        ref.inverse_root(np.ones((2, 3)), 2)


def test_shampoo_direction_and_polar_limit_on_full_rank_gradient():
    G = np.random.default_rng(5).standard_normal((4, 3))
    L, R = ref.shampoo_statistics([G], 0.95)
    np.testing.assert_allclose(L, G @ G.T, rtol=1e-14)
    u, s, vt = np.linalg.svd(G, full_matrices=False)
    eps = 1e-3
    # closed form for one step: U diag(s / sqrt(s^2 + eps)) V^T (+ nothing from L's null space)
    closed = (u * (s / np.sqrt(s**2 + eps))) @ vt
    np.testing.assert_allclose(ref.shampoo_direction(G, L, R, eps), closed, atol=1e-12)
    polar, singular = ref.polar_factor(G, rank_tolerance=1e-10)
    np.testing.assert_allclose(polar, u @ vt, atol=1e-13)
    np.testing.assert_allclose(singular, s, rtol=1e-13)
    with pytest.raises(ValueError, match="L, R: expected shapes"):
        ref.shampoo_direction(G, R, L, eps)
