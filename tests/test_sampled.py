"""Sampled estimators (PROTOCOL s11) and the s13 capabilities: reference, checks, controls.

Exact moments are checked against closed forms derived independently of the score rules;
the harness checks against correct ports (float64, float32), against ports with a harmless
factor split (must pass) and against buggy ports (must fail). Problems are the quick zoo's.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ngd_ref import zoo
from ngd_ref.dense import FLOAT64, dense, get_loss, kfac_factors
from ngd_ref.sampled import Estimator, estimator_entries, estimator_moments
from verify._report import Status
from verify.harness._run import run_capability
from verify.mutants import MUTANTS, NumpyPort, NumpyPort32, load_corpus

QUICK = {p.name: p for p in zoo.problems(quick=True)}
MSE_B1 = QUICK["mlp-3x4x3-tanh-mse-b1"]
SOFTMAX_SUM = QUICK["mlp-3x4x3-sigmoid-softmax_cross_entropy-b3-sum"]
LOGVAR = QUICK["mlp-3x4x4-sigmoid-gaussian_logvar-b3-sum"]


@pytest.mark.parametrize("problem", list(QUICK.values()), ids=list(QUICK))
def test_exact_means_are_the_dense_reference(problem):
    ref = dense(problem)
    fisher = ref.fisher
    iu = np.triu_indices(problem.n_params)
    v = np.linspace(-1, 1, problem.n_params)
    means = {
        Estimator.MC_FISHER: fisher[iu],
        Estimator.MC_FISHER_DIAG: np.diag(fisher),
        Estimator.MC_FISHER_VP: fisher @ v,
    }
    if problem.dense_only:  # sampled conv K-FAC has no exact moments (not checked there)
        factors = [s for _, s in kfac_factors(problem, "fisher")]
        means[Estimator.KFAC_TARGETS] = means[Estimator.KFAC_SKETCH] = estimator_entries(
            Estimator.KFAC_TARGETS, problem, factors)
    for estimator, expected in means.items():
        moments, projection = estimator_moments(estimator, problem, v=v)
        np.testing.assert_allclose(moments.mean, expected, atol=1e-13 * np.abs(expected).max())
        assert np.all(moments.k2 >= 0)
        if projection is not None:
            assert projection.mean[0] == pytest.approx(1.0)


def test_gaussian_diagonal_moments_have_the_closed_form():
    # mse, B = 1: g = J^T u with u ~ N(0, I), so X = g_i^2 = Sigma_ii xi^2 and
    # Var = 2 Sigma_ii^2, E[(X - Sigma_ii)^4] = 60 Sigma_ii^4 (E xi^8 = 105, E xi^6 = 15).
    ref = dense(MSE_B1)
    sigma = np.einsum("ci,ci->i", ref.jacobians[0], ref.jacobians[0])
    moments, _ = estimator_moments(Estimator.MC_FISHER_DIAG, MSE_B1)
    np.testing.assert_allclose(moments.k2, 2 * sigma**2, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(moments.fourth_central(1), 60 * sigma**4, rtol=1e-11,
                               atol=1e-300)


@pytest.mark.parametrize("rate", [0.3, 2.5, 40.0])
def test_poisson_score_rule_reproduces_the_cumulants(rate):
    # u = rate - y: E u^2 = rate, E u^3 = -rate, E u^4 = rate + 3 rate^2 (all cumulants = rate)
    rule = get_loss("poisson").score_rule(FLOAT64, np.array([np.log(rate)]), 8)
    u = rule.scores[:, 0]
    for power, expected in ((1, 0.0), (2, rate), (3, -rate), (4, rate + 3 * rate**2)):
        assert rule.weights @ u**power == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_logvar_score_rule_reproduces_its_moments():
    # u = (-xi/sigma, (1 - xi^2)/2): E a^2 b^2 = 2.5/sigma^2, E b^4 = 3.75, E a^4 = 3/sigma^4
    s = 0.7
    rule = get_loss("gaussian_logvar").score_rule(FLOAT64, np.array([0.2, s]), 8)
    a, b = rule.scores[:, 0], rule.scores[:, 1]
    var = np.exp(s)
    assert rule.weights @ (a * a * b * b) == pytest.approx(2.5 / var)
    assert rule.weights @ b**4 == pytest.approx(3.75)
    assert rule.weights @ a**4 == pytest.approx(3 / var**2)


def test_sketch_variance_bound_dominates_the_targets_variance_for_gaussians():
    targets, _ = estimator_moments(Estimator.KFAC_TARGETS, MSE_B1)
    sketch, _ = estimator_moments(Estimator.KFAC_SKETCH, MSE_B1)
    np.testing.assert_allclose(sketch.k2, targets.k2, rtol=1e-10, atol=1e-300)
    assert sketch.k4 is None


def _statuses(port, capability, problem):
    return run_capability(port, capability, problem, dtype=port.dtype, seed=0)


SAMPLED = ["mc_fisher", "mc_fisher_vp", "mc_fisher_diag", "mc_kfac_factors",
           "hutchinson_trace", "hutchinson_diag"]


@pytest.mark.parametrize("port", [NumpyPort(), NumpyPort32()], ids=["float64", "float32"])
@pytest.mark.parametrize("capability", SAMPLED)
def test_correct_ports_pass_the_sampled_checks(port, capability):
    results = _statuses(port, capability, SOFTMAX_SUM)
    assert results and all(r.status in (Status.PASS, Status.SKIP) for r in results), [
        (r.check, r.message) for r in results if r.status not in (Status.PASS, Status.SKIP)]
    means = [r for r in results if r.check.endswith("_mean")]
    assert means and all(r.power is not None and r.to_json()["power"] == r.power
                         for r in means)
    assert all("draws_per_call" in r.to_json()["statistics"] for r in means)


def test_the_goal_power_is_reached_for_the_mc_fisher():
    means = [r for r in _statuses(NumpyPort(), "mc_fisher", LOGVAR)
             if r.check == "mc_fisher_mean"]
    assert means[0].status is Status.PASS and means[0].power <= 0.0201


class SplitPort(NumpyPort):
    """A harmless convention: `(2 A_l, S_l / 2)` (PROTOCOL s12 last point)."""

    def kfac_factors(self, problem, kind):
        return [(2 * a, s / 2) for a, s in super().kfac_factors(problem, kind)]

    def mc_kfac_factors(self, problem, num_samples, seed, estimator="targets"):
        return [(2 * a, s / 2) for a, s in
                super().mc_kfac_factors(problem, num_samples, seed, estimator)]


class UnbalancedPort(NumpyPort):
    """Not a split: `(2 A_l, S_l)` doubles the product."""

    def kfac_factors(self, problem, kind):
        return [(2 * a, s) for a, s in super().kfac_factors(problem, kind)]


def test_kfac_factor_checks_compare_products_and_report_the_split():
    results = _statuses(SplitPort(), "kfac_factors", SOFTMAX_SUM)
    assert all(r.status is Status.PASS for r in results)
    assert any("k = 2" in r.message for r in results)
    sampled = _statuses(SplitPort(), "mc_kfac_factors", SOFTMAX_SUM)
    assert all(r.status in (Status.PASS, Status.SKIP) for r in sampled)
    assert any("split k = 2" in r.message for r in sampled)
    assert any(r.status is Status.FAIL for r in _statuses(UnbalancedPort(), "kfac_factors",
                                                          SOFTMAX_SUM))


class BadS13(NumpyPort):
    """Each s13 method off in one way."""

    def per_example_gradients(self, problem):
        return super().per_example_gradients(problem) * self._scale(problem)

    def kfac_factors_separate(self, problem, kind, approx="expand"):
        return [((aw, sw), (0 * ab, sb)) for (aw, sw), (ab, sb) in
                super().kfac_factors_separate(problem, kind)]

    def top_eigenpairs(self, problem, curvature, k):
        values, vectors = super().top_eigenpairs(problem, curvature, k + 1)
        return values[1:], vectors[:, 1:]

    def trace(self, problem, curvature):
        return np.trace(self.ggn(problem))

    def fisher_diag(self, problem):
        return np.diag(self.empirical_fisher(problem))


S13 = ["fisher_diag", "per_example_gradients", "kfac_factors_separate", "top_eigenpairs",
       "trace"]


@pytest.mark.parametrize("capability", S13)
def test_s13_checks_pass_correct_ports_and_fail_wrong_ones(capability):
    for port in (NumpyPort(), NumpyPort32()):
        results = _statuses(port, capability, SOFTMAX_SUM)
        assert results and all(r.status is Status.PASS for r in results)
    # the bugs show where c != 1 (per-example gradients) and where G != H (trace)
    problem = {"per_example_gradients": QUICK["mlp-3x4x3-relu-sigmoid_cross_entropy-b3"],
               "trace": LOGVAR}.get(capability, SOFTMAX_SUM)
    bad = _statuses(BadS13(), capability, problem)
    assert any(r.status is Status.FAIL for r in bad)


KILLS = [
    ("mc-targets-from-data", "mc_fisher", MSE_B1, "mc_fisher_mean"),
    ("mc-draw-shared-by-batch", "mc_fisher", SOFTMAX_SUM, "mc_fisher_variance"),
    ("mc-seed-ignored", "hutchinson_trace", SOFTMAX_SUM, "hutchinson_trace"),
    ("mc-reduction-dropped", "mc_fisher_diag", QUICK["mlp-3x4x3-relu-sigmoid_cross_entropy-b3"],
     "mc_fisher_diag_mean"),
    ("hutchinson-single-probe", "hutchinson_trace", MSE_B1, "hutchinson_trace"),
]


@pytest.mark.parametrize(("name", "capability", "problem", "check"), KILLS,
                         ids=[k[0] for k in KILLS])
def test_sampling_mutants_are_killed_by_the_expected_test(name, capability, problem, check):
    load_corpus()
    results = _statuses(MUTANTS[name].adapter_class(), capability, problem)
    failed = [r.check for r in results if r.status is Status.FAIL]
    assert any(c.startswith(check) for c in failed), failed


def test_the_jax_adapter_passes_a_sampled_and_the_s13_checks():
    from verify.adapters.ngd_ref_jax import NgdRefJaxFloat32

    port = NgdRefJaxFloat32()
    for capability in ("mc_fisher_diag", "per_example_gradients", "fisher_diag",
                       "kfac_factors_separate", "hutchinson_trace"):
        results = _statuses(port, capability, SOFTMAX_SUM)
        assert results and all(r.status in (Status.PASS, Status.SKIP) for r in results), [
            (r.check, r.message) for r in results if r.status not in (Status.PASS, Status.SKIP)]


JAX_ALL = SAMPLED + S13


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NGD_VERIFY_SLOW"),
                    reason="compiles every s11/s13 method per problem (minutes): tox -e sampled")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("problem", list(QUICK.values()), ids=list(QUICK))
def test_the_jax_adapter_passes_every_sampled_and_s13_check(dtype, problem):
    from verify.adapters.ngd_ref_jax import NgdRefJax, NgdRefJaxFloat32

    port = NgdRefJax() if dtype == "float64" else NgdRefJaxFloat32()
    for capability in JAX_ALL:
        results = _statuses(port, capability, problem)
        assert results and all(r.status in (Status.PASS, Status.SKIP) for r in results), [
            (r.check, r.message) for r in results if r.status not in (Status.PASS, Status.SKIP)]


#: generate(25, 0): a saturated softmax (p_0 ~ 1e-12) whose float32 sketch was a false alarm
SATURATED = "gen-4x4x1x2-identity-relu-identity-softmax_cross_entropy-b4-sum-k1-s63434"


def test_float32_sketch_allowance_is_normwise_in_the_root_of_the_output_fisher():
    """Regression (campaign seed 0): a correct float32 sketch is 17% off on a near-zero entry.

    Its float32 `F_R = diag(p) - p p^T` has `p_1 (1 - p_1) = 0` (an error of `u MAG(F_R)`),
    so it is indefinite, and the eigen root's clipped eigenvalue makes `(Q Q^T)_00 =
    1.17 p_0`. That error is normwise (backward stability of the factorization), which the
    policy's `sketch_middle_magnitudes` allows and the entrywise `MAG(F_R)` does not.
    """
    from verify._policy import tolerance_policy
    from verify.strategies import build

    # the campaign's seed-0 draw, by its build arguments (the fuzz draws now include conv nets)
    problem = build("softmax_cross_entropy", [4, 4, 1, 2], ["identity", "relu"], 4, "sum", 1,
                    63434)
    assert problem.name == SATURATED
    ref, policy, port = dense(problem), tolerance_policy(problem, "float32"), NumpyPort32()
    b = 2
    fisher = np.asarray(ref.output_fishers[b])
    root = port._output_root(problem, np.asarray(ref.outputs[b], dtype=np.float32))
    error = np.abs(root.astype(float) @ root.T.astype(float) - fisher)
    assert error[0, 0] > 0.1 * abs(fisher[0, 0])
    middle = policy.middle_magnitudes("fisher")[b]
    assert np.max(error) <= policy.rtol * np.linalg.norm(middle)  # normwise: within rounding
    assert not np.all(error <= policy.rtol * middle)  # entrywise: the former false alarm
    assert np.all(np.diagonal(policy.sketch_middle_magnitudes[b]) >= np.linalg.norm(middle))
    results = _statuses(port, "mc_kfac_factors", problem)
    assert results and all(r.status in (Status.PASS, Status.SKIP) for r in results), [
        (r.check, r.message) for r in results if r.status not in (Status.PASS, Status.SKIP)]
    # the float32 test can still fail: the sketch without the root of F_R
    load_corpus()
    mutant = MUTANTS["mc-sketch-no-root-float32"].adapter_class()
    bad = _statuses(mutant, "mc_kfac_factors", SOFTMAX_SUM)
    assert any(r.status is Status.FAIL and r.check == "mc_kfac_factors_sketch_mean" for r in bad)


def _pairwise_atom(weights: np.ndarray, features: np.ndarray) -> float:
    """The definition: the heaviest set of points within 1e-12 max|features| of one point."""
    scale = max(float(np.max(np.abs(features))), np.finfo(float).tiny)
    return min(max(float(np.sum(weights[np.all(np.abs(features - row) <= 1e-12 * scale,
                                                axis=1)])) for row in features), 1.0)


def test_support_atom_bounds_the_pairwise_definition():
    # campaign seed 11: a conv net with 16 Bernoulli outputs (2^16 support points, 528
    # entries) spent over half an hour in the former O(N^2 E) pairwise loop
    from ngd_ref.sampled._dense import _support_atom

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, e = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        features = rng.integers(-2, 3, size=(n, e)) * float(rng.choice([1.0, 1e-13, 1e3]))
        features = features + 1e-14 * rng.standard_normal((n, e)) * float(rng.random() < 0.5)
        weights = rng.random(n)
        weights /= weights.sum()
        assert _support_atom(weights, features) >= _pairwise_atom(weights, features) - 1e-15
    # equal points are one atom; distinct ones are not merged
    features = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [0.0, 0.0]])
    weights = np.array([0.25, 0.25, 0.3, 0.2])
    assert _support_atom(weights, features) == pytest.approx(0.5)
