"""Each strengthened identity kills a mutant that its old form let through (issue 18).

A mutant is a wrong dense reference (a monkeypatched routine of `ngd_ref`, or a wrong
cached matrix) or a wrong reference method. Each test shows both halves: the old check (the
part of the identity that existed before) still passes on the mutant, and the strengthened
identity fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import ngd_ref.curvature._dense as curvature_dense
import ngd_ref.hf._dense as hf_dense
from ngd_ref import dense as ref_module
from ngd_ref import layer_slices, zoo
from ngd_ref.dense import dense
from verify._policy import tolerance_policy
from verify._report import Status
from verify.identities import (
    IDENTITIES,
    convergence,
    damping,
    descent,
    exponential_family,
    fisher,
    hessian,
    kronecker,
    products,
    quadratic_model,
    rank,
    seed_code,
    steepest,
    table,
)

SCE = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
NLL = zoo.get("mlp-3x4x3-tanh-nll_probs-b3-out_softmax")
MSE = zoo.get("mlp-3x4x3-tanh-mse-b3")


@pytest.fixture
def fresh_reference():
    """Clear the reference and policy caches before and after a mutant."""
    curvature_dense._cached.cache_clear()
    tolerance_policy.cache_clear()
    yield
    curvature_dense._cached.cache_clear()
    tolerance_policy.cache_clear()


def _by_name(name: str):
    return next(ident for ident in IDENTITIES if ident.name == name)


def _statuses(results) -> list[Status]:
    return [r.status for r in (results if isinstance(results, list) else [results])]


def test_doubled_network_curvature_passes_the_decomposition_not_the_differences(
        monkeypatch, fresh_reference):
    """Mutant: `second_order_backward` weighs the network-curvature term twice.

    H and `output_hessian_term` share the routine, so `G + 2(H - G) = H'` still holds; the
    central difference of the independent first-order gradient sees `H' v != H v`.
    """
    real = curvature_dense.second_order_backward

    def doubled(problem, theta, trace, cotangent, tangent, bk):
        return real(problem, theta, trace, 2 * cotangent, tangent, bk)

    monkeypatch.setattr(curvature_dense, "second_order_backward", doubled)
    assert _statuses(hessian.hessian_decomposition(SCE)) == [Status.PASS]
    assert _statuses(hessian.hessian_matches_gradient_differences(SCE)) == [Status.FAIL]


def test_gradient_difference_of_a_known_hessian():
    """On the zoo's tanh softmax problem the difference matches H v to ~1e-3 tolerances."""
    r = hessian.hessian_matches_gradient_differences(SCE)
    assert r.status is Status.PASS and r.error < 1e-2 * r.tolerance
    v = np.eye(SCE.n_params)[0]
    assert np.allclose(hessian.hessian_gradient_difference(SCE, v), dense(SCE).hessian[:, 0],
                       rtol=0, atol=1e-12 * np.linalg.norm(dense(SCE).hessian))


def test_fisher_wrong_off_the_old_direction_fails_kl(fresh_reference):
    """Mutant: `F' = F + a u u^T` with `u` orthogonal to the old (single) KL direction.

    `d_0^T F' d_0 = d_0^T F d_0`, so the old one-direction check passes; the second
    direction (and both argument orders) sees `a (d_1^T u)^2`.
    """
    ref = dense(NLL)
    d0 = fisher.kl_directions(NLL)[0]
    u = np.random.default_rng(0).standard_normal(NLL.n_params)
    u -= (u @ d0) * d0
    u /= np.linalg.norm(u)
    ref.__dict__["fisher"] = ref.fisher + 1e-6 * np.linalg.norm(ref.fisher) * np.outer(u, u)
    assert fisher._kl_comparison(NLL, ref.fisher, d0).passed
    statuses = _statuses(fisher.kl_second_order(NLL))
    assert statuses[:2] == [Status.PASS, Status.PASS] and Status.FAIL in statuses[2:]


def test_kl_orders_share_the_coefficient():
    """Both argument orders give `1/2 d^T F d`; their t^3 terms differ (opposite signs)."""
    d = fisher.kl_directions(SCE)[1]
    coeffs = fisher.kl_coefficients(SCE, d)
    half = 0.5 * float(d @ dense(SCE).fisher @ d)
    tol = fisher.exact_rtol(SCE)
    assert all(abs(c2 - half) <= tol * abs(half) for c2, _ in coeffs.values())


def test_bound_loose_by_two_passes_the_inequality_not_the_equality(monkeypatch):
    """Mutant: Martens' bound with factor 1 instead of 1/2 (`-c sum r^T H_L^+ r`)."""
    real = quadratic_model.martens_bound_value
    monkeypatch.setattr(quadratic_model, "martens_bound_value", lambda p: 2.0 * real(p))
    assert quadratic_model._stacked_full_row_rank(SCE)
    assert _statuses(quadratic_model.martens_bound(SCE)) == [Status.PASS]
    assert _statuses(quadratic_model.martens_bound_tight(SCE)) == [Status.FAIL]


def test_symmetrized_cross_term_bfgs_fails_only_on_generic_pairs(monkeypatch):
    """Mutant: `y y^T / (y^T s)` written as `(y s^T + s y^T) / (2 s^T s)`.

    Equal for `y = lambda s` (the old eigen pair), so the old check passes; the oblique pair
    has `(y^T s - ||y|| ||s||) / (2 s^T s) < 0` in the new term and B+ goes indefinite.
    """
    def mutant(B, s, y):
        Bs = B @ s
        return B + (np.outer(y, s) + np.outer(s, y)) / (2 * (s @ s)) - np.outer(Bs, Bs) / (s @ Bs)

    monkeypatch.setattr(ref_module, "bfgs_update", mutant)
    statuses = _statuses(_by_name("bfgs_preserves_positive_definiteness").run(SCE))
    assert statuses[0] is Status.PASS and Status.FAIL in statuses[1:]


def test_slightly_wrong_damping_term_passes_the_limit_not_the_exact_ratio(monkeypatch):
    """Mutant: the model's damping term `lambda |d|^2 / 2` off by a relative `2^-12`.

    At `lambda = 1024 (||H|| + ||G||)` rho moves from 2 by ~`2^-11`, inside the limit's own
    bound `2 ||H|| / lambda`; at lambda = 0 the term vanishes. The exact damped-quadratic
    ratio sees it.
    """
    real = hf_dense.hf_quadratic_model

    def mutant(problem, step, *, damping=0.0, **kwargs):
        step = np.asarray(step, dtype=np.float64)
        extra = 2.0**-12 * 0.5 * damping * float(step @ step)
        return real(problem, step, damping=damping, **kwargs) + extra

    monkeypatch.setattr(hf_dense, "hf_quadratic_model", mutant)
    assert set(_statuses(damping.reduction_ratio_quadratic(SCE))) == {Status.PASS}
    assert set(_statuses(damping.reduction_ratio_large_damping(SCE))) == {Status.PASS}
    assert Status.FAIL in _statuses(damping.reduction_ratio_damped_quadratic(SCE))


def test_levenberg_marquardt_that_never_increases_is_caught(monkeypatch):
    """Mutant: the LM rule without its increase branch (old checks saw only rho > 3/4)."""
    def mutant(lam, rho, **kwargs):
        return lam * (damping.LM_DECREASE if rho > damping.LM_HIGH else 1.0)

    monkeypatch.setattr(damping, "levenberg_marquardt", mutant)
    assert set(_statuses(damping.reduction_ratio_quadratic(SCE))) == {Status.PASS}
    assert set(_statuses(damping.reduction_ratio_large_damping(SCE))) == {Status.PASS}
    assert Status.FAIL in _statuses(damping.reduction_ratio_damped_quadratic(SCE))


def test_step_size_for_unit_directions_fails_along_kfac(monkeypatch):
    """Mutant: `alpha* = -g^T r^ / r^T G r^` for `r^ = r / |r|` (assumes unit directions)."""
    real = quadratic_model.optimal_step_size

    def mutant(problem, direction, **kwargs):
        return real(problem, direction / np.linalg.norm(direction), **kwargs)

    monkeypatch.setattr(quadratic_model, "optimal_step_size", mutant)
    statuses = _statuses(quadratic_model.optimal_step_stationary(SCE))
    assert statuses == [Status.PASS, Status.FAIL]


def test_subspace_step_without_rescaling_fails_along_kfac(monkeypatch):
    """Mutant: eq. (27)'s `(alpha, beta)` of the unit basis, used on the unscaled r and p."""
    real = quadratic_model.momentum_subspace_step

    def mutant(problem, direction, previous, **kwargs):
        r, p = np.linalg.norm(direction), np.linalg.norm(previous)
        unit = real(problem, direction / r, previous / p, **kwargs)
        return unit._replace(step=unit.alpha * direction + unit.beta * previous)

    monkeypatch.setattr(quadratic_model, "momentum_subspace_step", mutant)
    statuses = _statuses(quadratic_model.momentum_subspace_stationary(SCE))
    assert statuses == [Status.PASS, Status.PASS, Status.FAIL]


def test_absolute_damped_newton_fails_only_at_an_indefinite_shift(monkeypatch):
    """Mutant: `-|H + lam I|^{-1} g` (the absolute value taken after damping).

    It equals the Newton step wherever `H + lam I > 0` (the old check's only shift).
    """
    def mutant(problem, lam):
        values, vectors = np.linalg.eigh(dense(problem).hessian)
        return -vectors @ ((vectors.T @ dense(problem).gradient) / np.abs(values + lam))

    monkeypatch.setattr(ref_module, "newton_update", mutant)
    statuses = _statuses(_by_name("newton_step_minimizes_quadratic_model").run(SCE))
    assert statuses[:2] == [Status.PASS, Status.PASS] and statuses[2] is Status.FAIL


def test_swapped_kfac_block_order_passes_the_algebra_rows_not_the_layout(monkeypatch):
    """Mutant: `kfac_matrix` with blocks `S_l (x) A_l` (row-major thinking).

    The old Kronecker rows test `np.kron` on random factors and never call the project's
    K-FAC code; `kron_kfac_layout` does.
    """
    def mutant(problem, kind, backend=None):
        return scipy.linalg.block_diag(*[np.kron(s, a) for a, s in
                                         ref_module.kfac_factors(problem, kind)])

    monkeypatch.setattr(kronecker, "kfac_matrix", mutant)
    assert _statuses(kronecker.kron_vec(SCE)) == [Status.PASS]
    assert Status.FAIL in _statuses(kronecker.kron_kfac_layout(SCE))


# -- new statements: each can fail ------------------------------------------------------------
def test_seed_rank_claim_fails_the_rank_bound(monkeypatch):
    """With seed 004's bound `rank G <= B` the rank identity fails (C = 3 softmax: B(C-1) = 6)."""
    assert _statuses(rank.ggn_rank_bound(SCE)) == [Status.PASS]
    monkeypatch.setattr(rank, "rank_bound", lambda p: p.batch_size)
    assert _statuses(rank.ggn_rank_bound(SCE)) == [Status.FAIL]
    assert _statuses(rank.ggn_rank_exceeds_batch_size(SCE)) == [Status.PASS]


def test_softmax_rank_is_below_the_generic_bound():
    """`rank G <= B (C - 1)` for softmax logits, `<= B C` otherwise (read from the spec)."""
    assert rank.rank_bound(SCE) == 6 and rank.rank_bound(MSE) == 9


def test_gauss_newton_step_is_not_steepest_in_the_fisher_metric(monkeypatch):
    """Mutant: the 'natural gradient' computed with G (nll_probs: F != G) fails the KL check."""
    real = steepest._natural_metric(NLL)
    lam = steepest.default_damping(NLL, "steepest")
    wrong = (real[0], dense(NLL).damped_update("ggn", lam))
    monkeypatch.setattr(steepest, "_natural_metric", lambda p: wrong)
    assert Status.FAIL in _statuses(steepest.natural_gradient_steepest_in_kl(NLL))


@pytest.mark.parametrize("name", ["euclidean_gradient_not_steepest_in_kl",
                                  "absolute_hessian_step_not_sign_preserving",
                                  "ggn_rank_exceeds_batch_size"])
def test_new_negative_controls_apply_on_the_zoo(name):
    ident = _by_name(name)
    assert any(ident.applies(p) for p in zoo.problems())


def test_damping_applied_twice_breaks_the_damped_spectrum(monkeypatch, fresh_reference):
    """Mutant: `damped_update` solving with `C + 2 eta I`."""
    real = curvature_dense.DenseCurvature.damped_update
    monkeypatch.setattr(curvature_dense.DenseCurvature, "damped_update",
                        lambda self, curvature, lam: real(self, curvature, 2 * lam))
    assert Status.FAIL in _statuses(convergence.damped_inverse_spectrum(SCE))


def test_cg_reporting_the_previous_iterate_is_caught(monkeypatch):
    """Mutant: CG's iterates off by one (x_{k-1} reported as x_k)."""
    real = convergence.cg_iterates

    def lagging(a, b, x0, maxiter):
        return (x0, *real(a, b, x0, maxiter=maxiter)[:-1])

    assert set(_statuses(convergence.cg_beats_gradient_descent(SCE))) == {Status.PASS}
    monkeypatch.setattr(convergence, "cg_iterates", lagging)
    assert Status.FAIL in _statuses(convergence.cg_beats_gradient_descent(SCE))


def test_docs_table_is_generated_from_the_registry():
    """docs/identities.md's table is `verify.identities.table.markdown_table()` (regenerate with
    `python -m verify.identities.table`)."""
    assert table.main(["--check"]) == 0
    assert table.markdown_table().count("\n| `") == len(IDENTITIES)


# -- seed 004's code ---------------------------------------------------------------------------
SUM = zoo.get("mlp-3x4x3-sigmoid-softmax_cross_entropy-b4-sum")


def test_matrix_power_and_the_seed_port():
    m = np.array([[2.0, 1.0], [1.0, 3.0]])
    for p in range(1, 9):
        assert np.allclose(ref_module.matrix_power(m, p), np.linalg.matrix_power(m, p))
    assert np.allclose(seed_code.seed_mat_power(m, 3), np.linalg.matrix_power(m, 4))
    assert np.allclose(seed_code.seed_mat_power(m, 6), np.linalg.matrix_power(m, 8))
    with pytest.raises(ValueError, match="p: expected an integer"):
        ref_module.matrix_power(m, 0)


def test_seed_claims_hold_for_the_sum_reduction():
    """With `c = 1` the seed's damping and its 'proper Fisher' statistic are right: the two
    controls do not apply, and the identities still hold."""
    assert not _by_name("seed_gauss_newton_not_lambda_damped").applies(SUM)
    assert not _by_name("sampled_label_adam_not_fisher_diagonal").applies(SUM)
    seed, _, plain, tol = seed_code._unscaled(SUM)
    assert np.linalg.norm(seed - plain) <= tol * np.linalg.norm(plain)
    assert set(_statuses(seed_code.sampled_label_adam(SUM))) == {Status.PASS}


def test_mat_power_identity_fails_with_the_seed_port_at_p3(monkeypatch):
    monkeypatch.setattr(ref_module, "matrix_power", seed_code.seed_mat_power)
    assert Status.FAIL in _statuses(seed_code.matrix_power_by_squaring(SCE))


def test_bfgs_update_in_place_of_rank1_fails_its_secant_control(monkeypatch):
    """The rank-1 control fails if the 'rank-1' update were BFGS (which stays PD)."""
    monkeypatch.setattr(ref_module, "broyden_rank1_update", ref_module.bfgs_update)
    assert Status.FAIL in _statuses(seed_code.broyden_rank1_loses_definiteness(SCE))


def test_gaussian_natural_parameters_can_fail(monkeypatch):
    """With the log-partition's `1/(2 eta_2^2)` term dropped both natural-parameter rows fail."""
    logvar = zoo.get("mlp-3x4x4-tanh-gaussian_logvar-b3")
    assert set(_statuses(exponential_family.gaussian_natural_parameters(logvar))) == {Status.PASS}
    real = exponential_family.natural_hessian

    def mutant(eta1, eta2):
        return real(eta1, eta2) - np.diag([0.0, 1 / (2 * eta2**2)])

    monkeypatch.setattr(exponential_family, "natural_hessian", mutant)
    assert set(_statuses(exponential_family.gaussian_natural_parameters(logvar))) == {Status.FAIL}


def test_damping_with_the_wrong_sign_fails_only_on_the_grid(monkeypatch, fresh_reference):
    """Mutant: `damped_update` solving with `C - lambda I`.

    At the default lambda (below most of G's spectrum on the mse problem) the step still
    descends; at `2^8` times it the step is `~ +g / lambda`, an ascent.
    """
    def mutant(self, curvature, lam):
        c = self.matrix(curvature)
        return -np.linalg.solve(c - lam * np.eye(c.shape[0]), self.gradient)

    monkeypatch.setattr(curvature_dense.DenseCurvature, "damped_update", mutant)
    results = descent.damped_steps_descend(MSE)
    old = [r.status for r in results if "kappa <=" not in r.message]
    assert set(old) == {Status.PASS} and Status.FAIL in _statuses(results)


def test_jvp_vjp_adjoint_sees_a_row_major_layer_block(monkeypatch):
    """Mutant: the reverse pass returning each layer's block row-major (numpy's default vec)."""
    assert set(_statuses(products.jvp_vjp_adjoint(SCE))) == {Status.PASS}
    real = products.reverse_mode_vjp

    def mutant(problem, theta, bk, cotangents=None):
        out = np.array(real(problem, theta, bk, cotangents))
        for layer, sl in zip(problem.layers, layer_slices(problem.layers), strict=True):
            out[sl] = out[sl].reshape(layer.weight_shape, order="F").reshape(-1)
        return out

    monkeypatch.setattr(products, "reverse_mode_vjp", mutant)
    assert Status.FAIL in _statuses(products.jvp_vjp_adjoint(SCE))
    assert _statuses(products.seed000_swapped_product_shapes(SCE)) == [Status.PASS]


def test_power_iteration_reference_and_the_seed_port():
    m = np.diag([3.0, 1.0, 0.5])
    start = np.ones(3)
    _, s, steps = ref_module.power_iteration(m, start, iterations=60)
    assert abs(s - 3.0) <= 1e-12 and steps <= 60
    assert seed_code.seed_power_iter(1e-9 * m, start)[1] == 1
    assert ref_module.power_iteration(1e-9 * m, start, iterations=100, rtol=1e-6)[2] > 1
    with pytest.raises(ValueError, match="start"):
        ref_module.power_iteration(m, np.zeros(3), iterations=1)


def test_power_iteration_check_fails_with_the_seed_exit(monkeypatch):
    """The convergence identity fails if the reference stopped like the seed (one step)."""
    real = ref_module.power_iteration
    monkeypatch.setattr(ref_module, "power_iteration",
                        lambda m, start, **kw: real(m, start, iterations=1))
    assert Status.FAIL in _statuses(seed_code.power_iteration_converges(SCE))
