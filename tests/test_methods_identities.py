"""The seed-method identities: each holds on the zoo, and each sees the bug it is there for."""

from __future__ import annotations

import numpy as np
import pytest

import verify.identities.methods  # noqa: F401  (registers the identities)
from ngd_ref import dense as ref
from ngd_ref import zoo
from verify._report import Status
from verify.identities._registry import IDENTITIES

METHODS = [i for i in IDENTITIES if i.name in {
               "newton_step_minimizes_quadratic_model", "trust_region_step_is_descent",
               "newton_step_climbs_at_indefinite_hessian", "bfgs_secant_and_symmetry",
               "bfgs_preserves_positive_definiteness",
               "bfgs_loses_definiteness_when_curvature_negative",
               "lbfgs_two_loop_equals_dense_inverse_bfgs", "lbfgs_inverts_quadratic_on_span",
               "lbfgs_span_needs_conjugate_pairs", "lbfgs_seed_pair_uses_overwritten_gradient",
               "exact_diagonals", "hutchinson_unbiased", "vjp_with_ones_is_not_the_diagonal",
               "ema_bias_correction_exact", "ema_without_bias_correction_is_biased",
               "adam_second_moment_variance_decomposition",
               "adam_square_of_mean_is_not_empirical_fisher", "lowrank_ggn_push_through",
               "lowrank_seed_coupled_softmax_differs", "inverse_root_eigh_equals_coupled_newton",
               "shampoo_one_step_is_polar_factor", "shampoo_inverse_square_root_is_not_polar"}]
BY_NAME = {i.name: i for i in METHODS}
QUICK = zoo.problems(quick=True)
SOFTMAX_B3 = zoo.get("mlp-3x4x3-sigmoid-softmax_cross_entropy-b3-sum")
NEWTON_ASCENDS = zoo.get("mlp-3x4x3-softplus-mse-b3")   # g^T (H + lam I)^{-1} g < 0 here


def test_all_identities_are_registered_with_a_negative_control_for_each_theme():
    assert len(METHODS) == 22
    controls = {i.name for i in METHODS if i.negative_control}
    assert len(controls) == 9
    for identity in METHODS:
        assert identity.source and identity.statement


CASES = [(i, p) for i in METHODS for p in QUICK if i.applies(p)]


@pytest.mark.parametrize("identity, problem", CASES, ids=[f"{i.name}-{p.name}" for i, p in CASES])
def test_identity_holds_on_quick_zoo(battery, identity, problem):
    results = battery.run([problem], [identity])[(identity.name, problem.name)]
    assert results
    for r in results:
        assert r.status == Status.PASS, r.message
        assert r.capability == ("negative_control" if identity.negative_control else "identity")


def test_every_identity_applies_somewhere_in_the_quick_zoo():
    assert {i.name for i, _ in CASES} == set(BY_NAME)


def _seed_coupled_lowrank(problem, damping, **_):
    d = ref.dense(problem)
    jac = d.jacobians.reshape(-1, problem.n_params)
    loss = ref.get_loss(problem.loss)
    p = np.concatenate([loss.probabilities(ref.FLOAT64, z) for z in d.outputs])
    system = d.c * (np.diag(p) - np.outer(p, p)) @ (jac @ jac.T) + damping * np.eye(len(p))
    return -(jac.T @ np.linalg.solve(system, d.c * d.loss_grads.reshape(-1)))


_real_inverse_root = ref.inverse_root
_real_lbfgs = ref.lbfgs_direction

# (identity, problem, name in ngd_ref.dense to replace, buggy replacement)
BUGS = [
    ("lowrank_ggn_push_through", SOFTMAX_B3, "lowrank_ggn_update", _seed_coupled_lowrank),
    ("exact_diagonals", SOFTMAX_B3, "empirical_fisher_diag",
     lambda problem, **_: ref.squared_gradient(problem)),
    ("shampoo_one_step_is_polar_factor", SOFTMAX_B3, "inverse_root",
     lambda M, p, ridge=0.0, **kw: _real_inverse_root(M, 2 if p == 4 else p, ridge, **kw)),
    ("lbfgs_two_loop_equals_dense_inverse_bfgs", SOFTMAX_B3, "lbfgs_direction",
     lambda g, s, y, gamma=1.0, **kw: _real_lbfgs(g, s, y, 1.0, **kw)),
    ("lbfgs_inverts_quadratic_on_span", SOFTMAX_B3, "lbfgs_direction",
     lambda g, s, y, gamma=1.0, **kw: _real_lbfgs(g, s[1:], y[1:], gamma, **kw)),
    ("hutchinson_unbiased", SOFTMAX_B3, "hutchinson_diag",
     lambda matrix, n, num_samples, seed: np.asarray(matrix) @ np.ones(n)),
    ("trust_region_step_is_descent", NEWTON_ASCENDS, "trust_region_update",
     lambda problem, damping, **kw: ref.newton_update(problem, damping * 1e-3, **kw)),
    ("bfgs_secant_and_symmetry", SOFTMAX_B3, "bfgs_update",
     lambda B, s, y: B + np.outer(y, y) / (y @ s) - np.outer(B @ s, s) / (s @ B @ s)),
    ("inverse_root_eigh_equals_coupled_newton", SOFTMAX_B3, "inverse_root",
     lambda M, p, ridge=0.0, **kw: _real_inverse_root(M, p, ridge + 1e-6, **kw)),
    ("ema_bias_correction_exact", SOFTMAX_B3, "ema_second_moment",
     lambda estimates, beta, **kw: (1 - beta) * sum(d * d * beta**k for k, d in
                                                    enumerate(reversed(estimates)))),
]


@pytest.mark.parametrize("name, problem, target, buggy", BUGS,
                         ids=[f"{b[0]}-{b[2]}" for b in BUGS])
def test_identity_catches_the_bug(name, problem, target, buggy, monkeypatch):
    monkeypatch.setattr(ref, target, buggy)
    statuses = [r.status for r in BY_NAME[name].run(problem)]
    assert Status.FAIL in statuses
