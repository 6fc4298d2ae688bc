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
    from verify.adapters.optax_adapter import Optax
    from ngd_ref.dense import dense

    ref = dense(BATCHED)
    np.testing.assert_allclose(Optax().empirical_fisher_diag(BATCHED), ref.gradient**2, rtol=1e-12, atol=1e-15)


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
