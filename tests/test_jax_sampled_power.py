"""The JAX twin's Monte-Carlo Fisher-vp and Hutchinson diagonal, tested with power (issue 18).

They replace two Hoeffding tests on one problem each: the same exact-moment tests as the
battery's `mc_fisher_unbiased` / `hutchinson_unbiased` (`verify.identities.sampled`, FPR
<= 1e-6 for the real distribution), on several problems, each reporting its power, with
deterministic biased estimators (observed targets, the all-ones probe) as negative controls.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

from ngd_ref import jax as nj
from ngd_ref import zoo
from ngd_ref.dense import dense
from verify.identities import sampled

pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest

_SLOW = pytest.mark.skipif(not os.environ.get("NGD_VERIFY_SLOW"),
                           reason="slow (~30 s a problem on 2 loaded cores): tox -e sampled")
#: one problem in the core suite, three more in `tox -e sampled` (NGD_VERIFY_SLOW=1)
PROBLEMS = [zoo.get("mlp-3x4x4-tanh-gaussian_logvar-b1"),
            *(pytest.param(zoo.get(name), marks=_SLOW, id=name) for name in (
                "mlp-3x4x3-tanh-mse-b1", "mlp-3x4x3-sigmoid-softmax_cross_entropy-b4-sum",
                "mlp-3x4x3-tanh-poisson-b1"))]


def _keys(count: int, seed: int):
    return jax.random.split(jax.random.key(seed), count)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: getattr(p, "name", None))
def test_jax_mc_fisher_vp_is_unbiased_with_power(problem):
    v, test = sampled.mc_fisher_test(problem)
    objective, params, batch = nj.from_problem(problem)
    tree = nj.mlp_params(problem.layers, v)

    def one(key):
        return nj.canonical_vector(nj.mc_fisher_vp(objective, params, batch, tree, key,
                                                   test.samples))

    rows = np.asarray(jax.vmap(one)(_keys(test.design.calls, 0)))
    outcome = test.mean(rows)
    assert outcome.passed, outcome
    assert 0 < outcome.power < 1  # a relative bias below 100% is detected w.p. 0.99
    # control: observed targets (EF v, deterministic) are rejected where detectable
    ef = np.asarray(nj.canonical_vector(nj.empirical_fisher_vp(objective, params, batch, tree)))
    if sampled.bias_detectable(test, ef):
        assert not test.mean(np.tile(ef, (test.design.calls, 1))).passed


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: getattr(p, "name", None))
def test_jax_hutchinson_is_unbiased_with_power(problem):
    hessian, test = sampled.hutchinson_test(problem)
    objective, params, batch = nj.from_problem(problem)
    matvec = functools.partial(nj.hvp, objective, params, batch)

    def one(key):
        return nj.canonical_vector(nj.hutchinson_diag(matvec, params, test.samples, key))

    rows = np.asarray(jax.vmap(one)(_keys(test.design.calls, 1)))
    outcome = test.mean(rows)
    assert outcome.passed, outcome
    assert 0 < outcome.power < 1
    ones = dense(problem).hessian @ np.ones(problem.n_params)
    if sampled.bias_detectable(test, ones):
        assert not test.mean(np.tile(ones, (test.design.calls, 1))).passed
