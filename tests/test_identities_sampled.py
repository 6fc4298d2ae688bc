"""Sampled-estimator identities with power (issue 18): they hold, report power, and can fail."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from ngd_ref import dense as ref_module
from ngd_ref import zoo
from ngd_ref._losses import get_loss
from verify._report import Status
from verify._tolerance import hoeffding_bound
from verify.battery import run_identity
from verify.identities import IDENTITIES, sampled

BY_NAME = {i.name: i for i in IDENTITIES}
QUICK = zoo.problems(quick=True)
MSE = zoo.get("mlp-3x4x3-tanh-mse-b3")


def _run(name, problem):
    return run_identity(BY_NAME[name], problem)


@pytest.mark.parametrize("problem", QUICK, ids=[p.name for p in QUICK])
def test_identities_hold_with_power_on_several_problems(problem):
    for name in ("mc_fisher_unbiased", "hutchinson_unbiased"):
        results = _run(name, problem)
        assert [r.status for r in results] == [Status.PASS, Status.PASS], results
        mean, variance = results
        assert 0 < mean.power < 1, mean.message  # a bias below 100% is detected w.p. 0.99
        assert variance.power > 1 and np.isfinite(variance.power)
        assert mean.statistics["false_positive_rate"] == 1e-6


@pytest.mark.parametrize("problem", QUICK, ids=[p.name for p in QUICK])
def test_controls_reject_the_deterministic_biased_estimators(problem):
    for name in ("mc_fisher_observed_targets_rejected", "hutchinson_rejects_ones_probe"):
        results = _run(name, problem)
        assert all(r.status is Status.PASS for r in results), results


def test_the_controls_apply_on_most_of_the_quick_zoo():
    for name in ("mc_fisher_observed_targets_rejected", "hutchinson_rejects_ones_probe"):
        assert sum(bool(_run(name, p)) for p in QUICK) >= len(QUICK) - 2


def _old_hutchinson_passes(problem, estimator) -> bool:
    """The replaced check: Hoeffding bound per entry at 1000 probes (FPR 1e-6, no power)."""
    a = ref_module.dense(problem).hessian
    n = problem.n_params
    estimate = estimator(lambda v: a @ v, n, 1000, zlib.crc32(problem.name.encode()))
    bound = np.array([hoeffding_bound(w, 1000, tests=2 * n)
                      for w in ref_module.hutchinson_range(a)])
    return bool(np.all(np.abs(estimate - np.diagonal(a)) <= bound))


def test_a_biased_hutchinson_is_killed_now_not_before(monkeypatch):
    """Mutant: `hutchinson_diag` returns 1.25 times the estimate (a 25% bias).

    The Hoeffding bound (range of `z_i (A z)_i`, 1000 probes) let it through; the
    median-of-means test with exact moments (power ~0.1 here) rejects it.
    """
    real = ref_module.hutchinson_diag

    def biased(matvec, n, num_samples, seed):
        return 1.25 * real(matvec, n, num_samples, seed)

    assert _old_hutchinson_passes(MSE, biased)
    monkeypatch.setattr(ref_module, "hutchinson_diag", biased)
    assert Status.FAIL in [r.status for r in _run("hutchinson_unbiased", MSE)]


def test_a_hutchinson_reusing_one_probe_fails_the_variance_test(monkeypatch):
    """Mutant: one probe repeated S times (unbiased, variance S times too large)."""
    real = ref_module.hutchinson_diag

    def one_probe(matvec, n, num_samples, seed):
        return real(matvec, n, 1, seed)

    monkeypatch.setattr(ref_module, "hutchinson_diag", one_probe)
    mean, variance = _run("hutchinson_unbiased", MSE)
    assert variance.status is Status.FAIL


def test_a_wrong_target_sampler_is_killed(monkeypatch):
    """Mutant: mse targets drawn with variance 2 (E[u u^T] = 2 I, so the estimate is 2 F v)."""
    loss = get_loss("mse")
    monkeypatch.setattr(loss, "sample", lambda rng, z, size: np.asarray(z, dtype=float)
                        + np.sqrt(2.0) * rng.standard_normal((size, z.shape[0])))
    statuses = [r.status for r in _run("mc_fisher_unbiased", MSE)]
    assert statuses[0] is Status.FAIL


def test_a_draw_shared_by_the_batch_fails_the_variance_test(monkeypatch):
    """Mutant: every example gets the same standard-normal draw (mse, B = 3)."""
    loss = get_loss("mse")
    state = {}

    def shared(rng, z, size):
        key = size
        if key not in state:
            state[key] = rng.standard_normal((size, z.shape[0]))
        return np.asarray(z, dtype=float) + state[key]

    monkeypatch.setattr(loss, "sample", shared)
    mean, variance = _run("mc_fisher_unbiased", MSE)
    assert mean.status is Status.PASS and variance.status is Status.FAIL


def test_the_draws_are_the_monte_carlo_fisher_in_the_mean():
    """Many draws average to F v (a sanity check of the module's own sampler)."""
    v = np.ones(MSE.n_params) / np.sqrt(MSE.n_params)
    rows = sampled.mc_fisher_vp_draws(MSE, v, 2000, 8, 3)
    exact = ref_module.dense(MSE).fisher @ v
    assert np.linalg.norm(rows.mean(axis=0) - exact) < 0.1 * np.linalg.norm(exact)
