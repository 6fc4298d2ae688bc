"""The identity battery on its own terms: every identity passes on the zoo, every negative
control breaks where the theory says it must, and perturbed inputs are caught (mutations)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ngd_ref import zoo
from ngd_ref.dense import Curvature, KfacKind, dense, levenberg_marquardt, mp_backend
from verify._report import Status
from verify.battery import run_identity
from verify.identities import (
    IDENTITIES,
    _common,
    convergence,
    definiteness,
    descent,
    exponential_family,
    fisher,
    hessian,
    invariance,
    kfac,
    kronecker,
    methods,
    products,
    quadratic_model,
    rank,
    seed_code,
    split,
    steepest,
)
from verify.identities import damping as damping_mod
from verify.identities._registry import detectable
from verify.strategies import build, generate

OWN_MODULES = {m.__name__ for m in (fisher, split, hessian, definiteness, kronecker, invariance,
                                    descent, damping_mod, quadratic_model, rank, steepest,
                                    convergence, seed_code, exponential_family, products)}


def _module(ident) -> str:
    fn = ident.run.__closure__[0].cell_contents
    return fn.__module__


OWN = [ident for ident in IDENTITIES if _module(ident) in OWN_MODULES]
BY_NAME = {ident.name: ident for ident in OWN}


#: One-layer (affine) networks: the zoo has none, so `hessian_equals_ggn_affine_network`
#: and the exactly-quadratic cases are exercised on these.
AFFINE = [build("mse", (3, 2), (), 3, "mean", 0, 1), build("poisson", (2, 3), (), 2, "sum", -1, 2),
          build("softmax_cross_entropy", (3, 3), (), 1, "mean", 1, 3)]


@pytest.mark.parametrize("ident", OWN, ids=lambda i: i.name)
def test_identity_passes_on_the_zoo(ident):
    results = [r for p in (*zoo.problems(), *AFFINE) for r in run_identity(ident, p)]
    assert results, f"{ident.name} applies to no zoo problem"
    bad = [f"{r.problem}: {r.message}" for r in results if r.status is not Status.PASS]
    assert not bad, "\n".join(bad)


def test_every_module_has_a_negative_control():
    modules = {_module(i) for i in OWN if i.negative_control}
    assert modules == OWN_MODULES


# -- negative controls fail where the identity holds -------------------------------------------
MSE = zoo.get("mlp-3x4x3-tanh-mse-b3")
SCE = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
NLL = zoo.get("mlp-3x4x3-tanh-nll_probs-b3-out_softmax")
LOGVAR = zoo.get("mlp-3x4x4-tanh-gaussian_logvar-b3")

BREAKS = [
    ("fisher_differs_from_ggn", MSE, "F = G for mse"),
    ("kl_not_ggn", SCE, "G = F is the KL's Hessian for natural parameters"),
    ("hessian_differs_from_ggn", hessian.zero_residual_twin(MSE), "zero residual"),
    ("ggn_indefinite_gaussian_logvar", MSE, "G is PSD for a convex loss"),
    ("natural_gradient_not_model_minimizer", SCE, "F = G"),
    ("reduction_ratio_not_one", damping_mod.quadratic_twin(SCE), "exactly quadratic h"),
    ("ggn_rank_exceeds_batch_size", build("softmax_cross_entropy", (3, 2), (), 3, "mean", 0, 1),
     "softmax with C = 2: rank G <= B (C - 1) = B"),
    ("gaussian_logvar_not_natural", MSE, "no (mean, log-variance) outputs"),
    ("sampled_label_adam_not_fisher_diagonal",
     zoo.get("mlp-3x4x3-sigmoid-softmax_cross_entropy-b4-sum"), "sum reduction: c = 1"),
    ("tridiagonal_blocks_not_invertible_independently", damping_mod.quadratic_twin(SCE),
     "one layer: nothing couples"),
]


@pytest.mark.parametrize("name, problem, why", BREAKS, ids=[b[0] for b in BREAKS])
def test_negative_control_fails_where_the_identity_holds(name, problem, why):
    results = BY_NAME[name].run(problem)
    assert any(r.status is Status.FAIL for r in results), why


HOLDS = [
    ("fisher_equals_ggn", NLL, "F != G for nll_probs"),
    ("fisher_equals_ggn", LOGVAR, "F != G for gaussian_logvar"),
    ("ggn_psd", LOGVAR, "G indefinite for gaussian_logvar"),
    ("hessian_equals_ggn_affine_network", MSE, "a hidden layer curves z"),
    ("natural_gradient_minimizes_model", NLL, "F != G"),
]


@pytest.mark.parametrize("name, problem, why", HOLDS, ids=[f"{h[0]}-{h[1].loss}" for h in HOLDS])
def test_identity_fails_outside_its_hypotheses(name, problem, why):
    results = BY_NAME[name].run(problem)
    assert any(r.status is Status.FAIL for r in results), why


# -- mutations: perturb one input of an identity and it must notice ----------------------------
class _Perturbed(types.SimpleNamespace):
    """A DenseCurvature with some attributes replaced."""

    def __init__(self, ref, **over):
        super().__init__(**over)
        self._ref = ref

    def __getattr__(self, name):
        return getattr(self._ref, name)

    def matrix(self, curvature):
        return getattr(self, Curvature(curvature).value)


def _perturb(matrix, rel, seed=0):
    noise = np.random.default_rng(seed).standard_normal(matrix.shape)
    noise = (noise + noise.T) / 2
    return matrix + rel * np.linalg.norm(matrix) * noise / np.linalg.norm(noise)


MUTATIONS = [
    (fisher, "fisher_equals_ggn", SCE, "fisher", 1e-7),
    (fisher, "fisher_forms_agree", SCE, "fisher", 1e-7),
    (hessian, "hessian_decomposition", SCE, "hessian", 1e-7),
    (invariance, "affine_invariance", SCE, "ggn", 1e-7),
    (split, "split_invariance", SCE, "fisher", 1e-7),
    (fisher, "kl_second_order", NLL, "fisher", 1e-7),
]


@pytest.mark.parametrize("module, name, problem, attr, rel", MUTATIONS,
                         ids=[f"{m[1]}-{m[3]}-{m[4]:g}" for m in MUTATIONS])
def test_perturbed_reference_is_caught(monkeypatch, module, name, problem, attr, rel):
    real = dense(problem)
    fake = _Perturbed(real, **{attr: _perturb(getattr(real, attr), rel)})
    monkeypatch.setattr(module, "reference", lambda p: fake if p is problem else dense(p))
    assert any(r.status is Status.FAIL for r in BY_NAME[name].run(problem))


def test_row_major_vec_breaks_kron_vec(monkeypatch):
    monkeypatch.setattr(kronecker, "vec", lambda m: np.asarray(m).reshape(-1))
    assert BY_NAME["kron_vec"].run(SCE)[0].status is Status.FAIL


def test_reversed_levenberg_marquardt_is_caught(monkeypatch):
    monkeypatch.setattr(damping_mod, "levenberg_marquardt", lambda lam, rho: lam * 1.5)
    assert any(r.status is Status.FAIL for r in BY_NAME["reduction_ratio_large_damping"].run(SCE))


@pytest.mark.parametrize("rho, factor", [(0.1, 1.5), (0.5, 1.0), (0.9, 2 / 3), (float("nan"), 1.5)],
                         ids=["overshoot", "keep", "conservative", "nan"])
def test_levenberg_marquardt_table(rho, factor):
    assert levenberg_marquardt(2.0, rho) == pytest.approx(2.0 * factor)


def test_split_twin_round_trip():
    twin = split.split_twin(SCE)
    assert twin.loss == "nll_probs" and twin.layers[-1].activation == "softmax"
    assert split.split_twin(twin).loss == SCE.loss
    with pytest.raises(ValueError, match="problem"):
        split.split_twin(MSE)


def test_descent_negative_control_uses_a_small_damping():
    problem = zoo.get("mlp-3x4x3-tanh-mse-b3")
    lam = descent.ascent_damping(problem)
    nu_min = np.linalg.eigvalsh(dense(problem).hessian)[0]
    assert 0 < lam < -nu_min


# -- generated problems that once broke an identity (issue 3): the hypotheses now decide ------
def _generated(seed: int, index: int, quick: bool = False):
    return generate(index + 1, seed, quick=quick)[index]


#: (seed, index, quick, identity that failed or raised there, why)
GENERATED_REGRESSIONS = [
    (2, 0, True, "kfac_inexact_nonlinear", "width-1 layers: the factors' batch covariance is 0"),
    (3, 138, False, "bfgs_preserves_positive_definiteness",
     "secant pair with y^T s ~ 0: B+ PD in exact arithmetic, singular to rounding"),
    (2, 0, True, "shampoo_one_step_is_polar_factor", "a layer with a zero gradient (rank 0)"),
    (2, 64, True, "shampoo_inverse_square_root_is_not_polar", "dead ReLU layer: G = 0"),
    (2, 64, True, "vjp_with_ones_is_not_the_diagonal", "H is diagonal (dead ReLUs)"),
    (2, 97, True, "lbfgs_seed_pair_uses_overwritten_gradient", "the L-BFGS step overflows poisson"),
    (2, 297, True, "kfac_solve_matches_explicit", "gaussian_logvar: tr S < 0, no trace-norm pi"),
    (1, 98, False, "lbfgs_inverts_quadratic_on_span", "n = 2 < memory: no third conjugate pair"),
    (1, 154, False, "lbfgs_inverts_quadratic_on_span", "||A|| = 1e10 with gamma = 1"),
    (1, 154, False, "kfac_factored_damping_conservative",
     "absolute lambda = 1e-4 vs ||A (x) S|| = 1e16"),
    (1, 112, False, "kfac_solve_matches_explicit", "gaussian_logvar GGN: indefinite S"),
    (1, 172, False, "natural_gradient_not_model_minimizer", "(G - F) delta_ng below the margin"),
    (0, 19, False, "seed_step_formula_literal", "g^T r ~ 1e-15: r orthogonal to g"),
    (2, 132, True, "kl_second_order", "K3 ~ 0: a slope test saw rounding and t^4 mixed (2.33)"),
    (0, 251, False, "affine_invariance", "G loses rank by cancellation: g not solvable in float64"),
    (2, 269, False, "kfac_factored_damping_conservative", "S = 0 computed as -8.5e-18"),
    (2, 269, False, "kfac_solve_matches_explicit", "rounding-negative tr S: pi was NaN"),
    (1, 202, True, "damped_steps_descend", "gaussian_logvar: tr G < 0 floored lambda to 1e-299"),
    (5, 101, True, "fisher_forms_agree", "saturated softmax: p_i - p_i^2 cancelled"),
    (5, 101, True, "pullback_curvatures", "saturated softmax: -1/p_y + 1 cancelled in the VJP"),
    (5, 101, True, "kfac_exact_one_example", "saturated softmax: dL/ds lost 3 digits"),
    (5, 101, True, "kron_vec_outer", "saturated softmax: dL/ds lost 3 digits"),
    (5, 101, True, "split_invariance", "softmax_cross_entropy: p_y - 1 cancelled"),
    (5, 101, True, "small_damping_newton_ascends", "H's rounding made nu_1 = -5e-16 look real"),
    (5, 197, True, "small_damping_newton_ascends", "q_1^T g = 4e-12 under q_1's uncertainty 8e-7"),
    (8, 71, False, "kfac_factored_damping_conservative",
     "||S|| = 4e-37, ||A|| = 1.6: absolute pi made A + pi sqrt(l) I singular"),
    (9, 143, False, "kl_second_order", "a ReLU pre-activation exactly 0: h is not smooth"),
    (9, 143, False, "pullback_curvatures", "a ReLU pre-activation exactly 0: h is not smooth"),
    (9, 143, False, "hessian_not_pullback", "a ReLU pre-activation exactly 0: h is not smooth"),
]


def test_smooth_along_sees_a_relu_kink():
    """Seed 9 #143 has a ReLU pre-activation exactly 0; moving it off 0 makes h smooth nearby."""
    kinked = _generated(9, 143)
    d = np.ones(kinked.n_params)
    assert not _common.smooth_along(kinked, d, 0.0)
    shifted = kinked.replace(params=kinked.params + 2.0**-8)
    assert all(np.all(t.s[0] != 0) for t in dense(shifted).traces)
    assert _common.smooth_along(shifted, d, 0.0)
    assert not _common.smooth_along(shifted, d, 1e6)


def test_saturated_softmax_reference_is_accurate():
    """Saturated softmax + nll_probs (p_y = 0.9996): the float64 reference keeps float64's
    accuracy against mpmath. `diag(p) - p p^T` applied as `p_i (t_i - p^T t)` lost a factor
    `1 / (1 - p_y) ~ 3e3` (gradient 2.4e-13 relative, 14x this tolerance; now 1.2e-16)."""
    problem = _generated(5, 101, True)
    exact = dense(problem, mp_backend(50))
    for name in ("gradient", "ggn", "fisher", "fisher_expected_hessian", "hessian"):
        want = exact.backend.to_float64(getattr(exact, name))
        got = getattr(dense(problem), name)
        assert np.linalg.norm(got - want) <= fisher.exact_rtol(problem) * np.linalg.norm(want), name


@pytest.mark.parametrize("seed, index, quick, name, why", GENERATED_REGRESSIONS,
                         ids=[f"{c[3]}-s{c[0]}-{c[1]}{'q' if c[2] else ''}"
                              for c in GENERATED_REGRESSIONS])
def test_previously_failing_generated_problem(seed, index, quick, name, why):
    problem = _generated(seed, index, quick)
    ident = next(i for i in IDENTITIES if i.name == name)
    bad = [r.message for r in run_identity(ident, problem) if r.status is not Status.PASS]
    assert not bad, f"{why}: {bad}"


@pytest.mark.parametrize("problem", [SCE, NLL, LOGVAR, _generated(2, 0, True)],
                         ids=lambda p: p.name)
def test_kfac_gap_predicts_the_comparison(problem):
    """The negative control's hypothesis is the size of the break it then measures."""
    tol = kfac._tolerance(problem)
    for kind in KfacKind:
        comparison = kfac._kfac_comparison(problem, kind)
        predicted = kfac.kfac_gap(problem, kind) / comparison.scale
        assert abs(predicted - comparison.error) <= 2 * tol


def test_consistency_hypothesis_of_affine_invariance():
    """A right-hand side along a numerically null direction makes the system unsolvable."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    c = (q * np.array([1.0, 0.5, 1e-3, 1e-17])) @ q.T
    tol = 1e-13
    assert invariance.numerically_consistent(c, q[:, :3] @ np.ones(3), tol, tol)
    assert not invariance.numerically_consistent(c, q @ np.array([1.0, 1, 1, 1e-8]), tol, tol)


def test_kl_curvature_of_a_known_expansion():
    """Along a coordinate direction `c2 = 1/2 F_00`; the extrapolation error is negligible."""
    c2, estimate = fisher.kl_curvature(SCE, np.eye(SCE.n_params)[0])
    tol = fisher.exact_rtol(SCE)
    assert abs(c2 - 0.5 * dense(SCE).fisher[0, 0]) <= tol * abs(c2)
    assert estimate <= 1e-6 * tol * abs(c2)


def test_shampoo_control_needs_singular_values_away_from_one():
    layer = methods._PolarLayer(0, None, np.eye(2), np.array([1.0, 1.0]), 1e-30)
    gap, tol = methods._inverse_sqrt_separation(layer)
    assert not detectable(gap, tol)
    layer = layer._replace(singular=np.array([2.0, 1.0]))
    assert detectable(*methods._inverse_sqrt_separation(layer))
