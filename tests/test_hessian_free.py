"""Hessian-free in JAX: damped steps by CG equal dense solves; eq. (14) and LM damping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import jax as nj
from ngd_ref import zoo
from ngd_ref.hf import _dense as hf_dense
from verify._policy import tolerance_policy
from verify._tolerance import compare

pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest


PROBLEM = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_damped_update_matches_dense_solve(curvature):
    objective, params, batch = nj.from_problem(PROBLEM)
    b = tolerance_policy(PROBLEM, "float64")
    damping = 0.05
    step, result = nj.damped_update(objective, params, batch, damping, curvature, tol=1e-13)
    assert bool(result.converged)
    tolerance, _ = b.solve_tolerance(b.ref.matrix(curvature), b.matrix_magnitude(curvature),
                                     damping, b.ref.gradient, b.gradient_magnitude)
    comparison = compare(nj.canonical_vector(step), b.ref.damped_update(curvature, damping),
                         tolerance=tolerance)
    assert comparison.passed, comparison.describe()


def test_reduction_ratio_matches_dense_reference():
    objective, params, batch = nj.from_problem(PROBLEM)
    damping = 0.1
    step, _ = nj.damped_update(objective, params, batch, damping, tol=1e-13)
    rho = nj.reduction_ratio(objective, params, batch, step, damping=damping)
    dense_step = np.asarray(nj.canonical_vector(step))
    expected = hf_dense.reduction_ratio(PROBLEM, dense_step, damping=damping)
    np.testing.assert_allclose(float(rho), float(expected), rtol=1e-8)
    model = nj.hf_quadratic_model(objective, params, batch, step, damping=damping)
    np.testing.assert_allclose(float(model),
                               float(hf_dense.hf_quadratic_model(PROBLEM, dense_step,
                                                                 damping=damping)), rtol=1e-8)


def test_reduction_ratio_is_nan_without_predicted_change_in_both_twins():
    objective, params, batch = nj.from_problem(PROBLEM)
    zero = jax.tree.map(jnp.zeros_like, params)
    assert np.isnan(float(nj.reduction_ratio(objective, params, batch, zero)))
    assert np.isnan(float(hf_dense.reduction_ratio(PROBLEM, np.zeros(PROBLEM.n_params))))


@pytest.mark.parametrize("rho, expected", [(0.1, 1.5), (0.5, 1.0), (0.9, 2 / 3), (np.nan, 1.5)],
                         ids=["shrink-trust", "keep", "grow-trust", "nan-is-failure"])
def test_levenberg_marquardt_rule(rho, expected):
    assert float(nj.levenberg_marquardt(1.0, rho)) == pytest.approx(expected)
    assert hf_dense.levenberg_marquardt(1.0, rho) == pytest.approx(expected)


def test_hessian_free_decreases_the_loss():
    objective, params, batch = nj.from_problem(PROBLEM)
    hf = nj.hessian_free(objective, damping=1.0, maxiter=20)
    state = hf.init(params)
    losses = []
    for _ in range(5):
        params, state, info = hf.update(params, state, batch)
        losses.append(float(info.loss))
        assert bool(info.accepted) == bool(info.new_loss < info.loss)
    assert losses[-1] < losses[0]
    assert int(state.step) == 5


def test_hessian_free_rejects_bad_arguments():
    objective, _, _ = nj.from_problem(PROBLEM)
    with pytest.raises(ValueError, match="curvature"):
        nj.hessian_free(objective, curvature="hessian")
    with pytest.raises(ValueError, match="damping"):
        nj.hessian_free(objective, damping=0.0)
