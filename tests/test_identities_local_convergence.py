"""Newton's local quadratic convergence as an identity, with its linear-rate control."""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import zoo
from verify._report import Status
from verify.identities import local_convergence as lc

QUICK = [p for p in zoo.problems(quick=True) if not p.layers[-1].is_convolution]
MSE = zoo.get("mlp-3x4x3-tanh-mse-b3")


@pytest.mark.parametrize("problem", QUICK, ids=[p.name for p in QUICK])
def test_newton_is_quadratic_and_the_linear_methods_are_not(problem):
    newton = lc.newton_converges_quadratically(problem)
    assert len(newton) >= 2 and all(r.status is Status.PASS for r in newton), newton
    control = lc.damped_newton_and_gradient_descent_converge_linearly(problem)
    assert [r.status for r in control] == [Status.PASS, Status.PASS], control


def test_the_constant_is_a_lipschitz_constant_of_the_hessian():
    twin = lc.convex_twin(MSE)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = twin.minimum + rng.standard_normal(twin.minimum.shape)
        b = a + 0.1 * rng.standard_normal(a.shape)
        gap = np.linalg.norm(twin.at(a)[1] - twin.at(b)[1], 2)
        assert gap <= twin.lipschitz * np.linalg.norm(a - b)


def test_a_newton_with_a_ten_percent_wrong_hessian_is_killed(monkeypatch):
    """Mutant: the Hessian scaled by 1.1 (converges linearly at rate ~0.09)."""
    monkeypatch.setattr(lc, "newton_update",
                        lambda t, g, h: -np.linalg.solve(1.1 * h, g))
    statuses = [r.status for r in lc.newton_converges_quadratically(MSE)]
    assert Status.FAIL in statuses
