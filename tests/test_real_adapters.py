"""Verdicts on real libraries (docs/findings.md), pinned; skipped where a library is absent."""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import zoo
from verify import Status
from verify.harness import load_adapter, run_checks

ONE_EXAMPLE = zoo.get("mlp-3x4x3-tanh-mse-b1")
BATCHED = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
BATCHED_MSE = zoo.get("deep-linear-2x3x3x2-mse-b4")


def _statuses(target, problems, capabilities):
    report = run_checks(load_adapter(target), problems, capabilities=capabilities)
    return {(r.capability, r.problem): Status(r.status) for r in report.results
            if r.problem != "*" and r.check.endswith("matches_reference")}


# -- optax.second_order -----------------------------------------------------------------------
def test_optax_hvp_and_hessian_diag_are_exact():
    pytest.importorskip("optax", reason="optax not installed (pip install 'ngd-verify[optax]')")
    statuses = _statuses("optax", [ONE_EXAMPLE, BATCHED], ["hvp", "hessian_diag"])
    assert set(statuses.values()) == {Status.PASS}


def test_optax_fisher_diag_is_square_of_batch_gradient():
    """Finding: `fisher_diag` = (grad h)^2, equal to diag(EF) only for one example."""
    pytest.importorskip("optax", reason="optax not installed (pip install 'ngd-verify[optax]')")
    statuses = _statuses("optax", [ONE_EXAMPLE, BATCHED], ["empirical_fisher_diag"])
    assert statuses[("empirical_fisher_diag", ONE_EXAMPLE.name)] is Status.PASS
    assert statuses[("empirical_fisher_diag", BATCHED.name)] is Status.FAIL
    from ngd_ref.dense import dense
    from verify._tolerance import compare, rounding_rtol
    from verify.adapters.optax_adapter import Optax

    ref = dense(BATCHED)
    tol = rounding_rtol("float64", length=BATCHED.n_params, depth=len(BATCHED.layers) + 2)
    assert compare(Optax().empirical_fisher_diag(BATCHED), ref.gradient**2, tolerance=tol).passed


# -- curvlinops -------------------------------------------------------------------------------
CURVLINOPS_CAPABILITIES = ["hessian", "ggn", "empirical_fisher", "hvp", "ggn_vp",
                           "empirical_fisher_vp", "kfac_factors", "kfac_solve"]


def test_curvlinops_agrees_with_the_documented_constant_factors():
    pytest.importorskip("curvlinops", reason="curvlinops not installed (tox -e curvlinops)")
    report = run_checks(load_adapter("curvlinops"), [ONE_EXAMPLE, BATCHED, BATCHED_MSE],
                        capabilities=CURVLINOPS_CAPABILITIES)
    bad = [r for r in report.results if Status(r.status) in (Status.FAIL, Status.ERROR)]
    assert not bad, [f"{r.check} {r.problem}: {r.message}" for r in bad[:3]]


def test_curvlinops_declines_losses_it_does_not_have():
    pytest.importorskip("curvlinops", reason="curvlinops not installed (tox -e curvlinops)")
    poisson = next(p for p in zoo.problems(quick=True) if p.loss == "poisson")
    statuses = _statuses("curvlinops", [poisson], ["ggn"])
    assert set(statuses.values()) == {Status.SKIP}


def test_curvlinops_maps_a_softmax_output_layer_under_mse():
    """Issue 13: this raised `KeyError: 'softmax'`; the activation is now mapped."""
    pytest.importorskip("curvlinops", reason="curvlinops not installed (tox -e curvlinops)")
    problem = next(p for p in zoo.problems() if p.loss == "mse"
                   and p.layers[-1].activation == "softmax")
    report = run_checks(load_adapter("curvlinops"), [problem], capabilities=["ggn", "hvp"])
    bad = [r for r in report.results if Status(r.status) in (Status.FAIL, Status.ERROR)]
    assert not bad, [f"{r.check}: {r.message}" for r in bad[:3]]


def test_curvlinops_compute_kronecker_factors_accumulates():
    """Finding: calling the public `compute_kronecker_factors()` again doubles the factors."""
    pytest.importorskip("curvlinops", reason="curvlinops not installed (tox -e curvlinops)")
    import curvlinops

    from verify.adapters.curvlinops_adapter import Curvlinops

    model, loss_func, params, data, _ = Curvlinops()._setup(ONE_EXAMPLE)
    kfac = curvlinops.KFACLinearOperator(model, loss_func, params, data, fisher_type="type-2",
                                         separate_weight_and_bias=False)
    first = {k: v.clone() for k, v in kfac._input_covariances.items()}
    kfac.compute_kronecker_factors()
    for key, value in kfac._input_covariances.items():
        np.testing.assert_allclose(value.numpy(), 2 * first[key].numpy(), rtol=1e-14)


# -- kfac-jax ---------------------------------------------------------------------------------
KFAC_JAX_SKIP = "kfac_jax not installed (tox -e kfac-jax: kfac-jax 0.0.8 needs jax 0.9.0)"
KFAC_JAX_CAPABILITIES = ["loss", "hessian", "ggn", "fisher", "empirical_fisher", "hvp", "ggn_vp",
                         "fisher_vp", "kfac_factors", "kfac_solve"]
SUM_REDUCTION = zoo.get("mlp-3x4x3-sigmoid-softmax_cross_entropy-b3-sum")
SAME_INPUTS = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3-same_inputs")
NLL_PROBS = zoo.get("mlp-3x4x3-tanh-nll_probs-b3-out_softmax")


def _f64_tolerance(problem, depth: int) -> float:
    from verify._tolerance import rounding_rtol

    return rounding_rtol("float64", length=problem.n_params, depth=depth)


KFAC_JAX_AGREEMENT = {
    # mse: `register_squared_error_loss(weight=w/2)`, w = 1; damped solves run on the next row
    "mse-b1": (ONE_EXAMPLE, [c for c in KFAC_JAX_CAPABILITIES if c != "kfac_solve"]),
    # a summed batch: w = B, EF divided by w, empirical S times 1/c, solves at lambda/k
    "softmax_cross_entropy-b3-sum": (SUM_REDUCTION, KFAC_JAX_CAPABILITIES),
}


@pytest.mark.parametrize("case", list(KFAC_JAX_AGREEMENT))
def test_kfac_jax_agrees_with_the_documented_constant_factors(case):
    """Exact matrices, products, K-FAC factors (3 modes) and both damped solves pass."""
    pytest.importorskip("kfac_jax", reason=KFAC_JAX_SKIP)
    problem, capabilities = KFAC_JAX_AGREEMENT[case]
    report = run_checks(load_adapter("kfac-jax"), [problem], capabilities=capabilities)
    bad = [r for r in report.results if Status(r.status) in (Status.FAIL, Status.ERROR)]
    assert not bad, [f"{r.check} {r.problem}: {r.message}" for r in bad[:3]]
    passed = {r.capability for r in report.results if Status(r.status) is Status.PASS}
    assert passed == set(capabilities)


@pytest.mark.parametrize("loss", ["poisson", "gaussian_logvar"])
def test_kfac_jax_declines_losses_it_has_no_registration_for(loss):
    pytest.importorskip("kfac_jax", reason=KFAC_JAX_SKIP)
    problem = next(p for p in zoo.problems(quick=True) if p.loss == loss)
    statuses = _statuses("kfac-jax", [problem], ["fisher_vp", "kfac_factors"])
    assert set(statuses.values()) == {Status.SKIP}


def test_kfac_jax_nll_probs_fisher_passes_and_its_ggn_is_the_logit_ggn():
    """Convention: kfac-jax's GGN is at the registered logits, so nll_probs' G has no map.

    Registering the output layer's logits gives the protocol's F (reparameterization-invariant,
    Martens s9-s10), so `fisher` passes and `ggn` is declined; kfac-jax's own `ggn_exact` there
    equals F (natural parameters), unmistakably not the protocol's G through the probabilities.
    """
    pytest.importorskip("kfac_jax", reason=KFAC_JAX_SKIP)
    from ngd_ref.dense import dense
    from verify._tolerance import compare
    from verify.adapters.kfac_jax_adapter import KfacJax

    statuses = _statuses("kfac-jax", [NLL_PROBS], ["fisher", "ggn"])
    assert statuses[("fisher", NLL_PROBS.name)] is Status.PASS
    assert statuses[("ggn", NLL_PROBS.name)] is Status.SKIP
    logit_ggn = KfacJax()._explicit(NLL_PROBS, "ggn_exact")
    ref = dense(NLL_PROBS)
    tol = _f64_tolerance(NLL_PROBS, depth=len(NLL_PROBS.layers) + 2)
    assert compare(logit_ggn, ref.fisher, tolerance=tol).passed
    assert compare(logit_ggn, ref.ggn, tolerance=tol).error > 100 * tol


def test_kfac_jax_empirical_kfac_is_batch_size_times_smaller_than_its_exact_empirical_fisher():
    """Convention (documented, inconsistent): `fisher_empirical` K-FAC divides S by B again.

    For B copies of one example K-FAC is exact (PROTOCOL s4), and kfac-jax's own
    `ExplicitExactCurvature` EF block equals the protocol's; its K-FAC `A (x) S` is 1/B of it.
    """
    pytest.importorskip("kfac_jax", reason=KFAC_JAX_SKIP)
    from ngd_ref import layer_slices
    from verify._tolerance import compare
    from verify.adapters.kfac_jax_adapter import KfacJax

    port, batch = KfacJax(), SAME_INPUTS.batch_size
    setup, factors, _, _ = port._kfac(SAME_INPUTS, "empirical")
    exact = port._explicit(SAME_INPUTS, "fisher_empirical")  # raw: w = 1 for a mean
    tol = _f64_tolerance(SAME_INPUTS, depth=len(SAME_INPUTS.layers) + 2)
    for sl, (a, s) in zip(layer_slices(SAME_INPUTS.layers), factors(setup.args), strict=True):
        block = np.kron(np.asarray(a), np.asarray(s))
        assert compare(batch * block, exact[sl, sl], tolerance=tol).passed
        assert compare(block, exact[sl, sl], tolerance=tol).error > 100 * tol


def test_kfac_jax_cached_pi_adjusted_inverse_ignores_per_block_damping_scale():
    """Bug: `update_cache` drops `norm_to_scale_identity_weight_per_block` (kfac-jax 0.0.8).

    `BlockDiagonalCurvature.update_cache` computes the per-block scaled damping and then
    passes the unscaled one to the blocks, and `Optimizer` does not forward the option to
    `update_cache` at all: cached pi-adjusted inverses (the optimizer's default with
    `inverse_update_period > 1`) equal the unscaled ones exactly, while the uncached inverse
    (period 1) and the exact (eigen) inverses do scale the damping.
    """
    pytest.importorskip("kfac_jax", reason=KFAC_JAX_SKIP)
    import jax
    import kfac_jax

    from verify._tolerance import compare
    from verify.adapters.kfac_jax_adapter import KfacJax

    setup = KfacJax._setup(BATCHED)
    estimator = kfac_jax.BlockDiagonalCurvature(setup.func, default_estimation_mode="fisher_exact",
                                                auto_register_tags=False)
    rng = jax.random.PRNGKey(0)
    state = estimator.init(rng, setup.args, exact_powers_to_cache=-1, approx_powers_to_cache=-1)
    state = estimator.update_curvature_matrix_estimate(state, 0.0, 1.0, 0.0, BATCHED.batch_size,
                                                       rng, setup.args)
    v, damping, norm = setup.model.tree(np.linspace(-1, 1, BATCHED.n_params)), 0.1, "avg_diag"

    def inverse(exact, cached, scale):
        option = {"norm_to_scale_identity_weight_per_block": norm} if scale else {}
        s = state
        if cached:
            s = estimator.update_cache(state, damping, exact_powers=-1 if exact else None,
                                       approx_powers=None if exact else -1, eigenvalues=False,
                                       pmap_axis_name=None, **option)
        out = estimator.multiply_inverse(s, v, damping, exact_power=exact, use_cached=cached,
                                         pmap_axis_name=None, **option)
        return setup.model.canonical(out)

    tol = _f64_tolerance(BATCHED, depth=len(BATCHED.layers) + 2)
    # pi-adjusted: the cached inverse is the unscaled one, not the scaled one
    assert compare(inverse(False, True, True), inverse(False, False, False), tolerance=tol).passed
    assert compare(inverse(False, True, True), inverse(False, False, True),
                   tolerance=tol).error > 100 * tol
    # eigen: cached and uncached agree, and both scale
    assert compare(inverse(True, True, True), inverse(True, False, True), tolerance=tol).passed
    assert compare(inverse(True, True, True), inverse(True, False, False),
                   tolerance=tol).error > 100 * tol
