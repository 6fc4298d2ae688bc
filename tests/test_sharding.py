"""Sharded products, diagonals and CG equal the one-device results (8 host CPU devices)."""

import jax
import numpy as np
import pytest

from ngd_ref import jax as nj
from ngd_ref import zoo
from ngd_ref.dense import dense
from verify._tolerance import compare, rounding_rtol, solve_rtol

pytestmark = [
    pytest.mark.usefixtures("x64"),
    pytest.mark.skipif(jax.device_count() < 8,
                       reason="needs 8 devices: XLA_FLAGS set too late (see conftest)"),
]




# B = 3 does not divide 8 devices: exercises the weight-0 padding too
PROBLEM = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")


def _flat(tree):
    return np.asarray(nj.canonical_vector(tree))


def _rtol():
    return rounding_rtol("float64", length=PROBLEM.n_params, depth=len(PROBLEM.layers) + 2)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher", "empirical_fisher"])
def test_sharded_products_equal_unsharded(kind):
    objective, params, batch = nj.from_problem(PROBLEM)
    mesh = nj.batch_mesh(8)
    one = nj.curvature_vp(objective, params, batch, params, kind)
    many = nj.curvature_vp(objective, params, batch, params, kind, mesh=mesh)
    assert compare(_flat(many), _flat(one), tolerance=_rtol()).passed


def test_sharded_damped_update_and_diagonal_equal_unsharded():
    objective, params, batch = nj.from_problem(PROBLEM)
    mesh = nj.batch_mesh(8)
    one, _ = nj.damped_update(objective, params, batch, 0.1, tol=1e-13)
    many, result = nj.damped_update(objective, params, batch, 0.1, tol=1e-13, mesh=mesh)
    assert bool(result.converged)
    ggn = dense(PROBLEM).ggn
    kappa = float(np.linalg.cond(ggn + 0.1 * np.eye(PROBLEM.n_params)))
    tolerance = solve_rtol("float64", length=PROBLEM.n_params, depth=len(PROBLEM.layers) + 2,
                           condition=kappa)
    assert compare(_flat(many), _flat(one), tolerance=tolerance).passed
    d_one = nj.ggn_diag(objective, params, batch)
    d_many = nj.ggn_diag(objective, params, batch, mesh=mesh)
    assert compare(_flat(d_many), _flat(d_one), tolerance=_rtol()).passed


def test_sharded_mc_fisher_uses_the_same_samples():
    objective, params, batch = nj.from_problem(PROBLEM)
    key = jax.random.key(3)
    one = nj.mc_fisher_vp(objective, params, batch, params, key, 2)
    many = nj.mc_fisher_vp(objective, params, batch, params, key, 2, mesh=nj.batch_mesh(8))
    assert compare(_flat(many), _flat(one), tolerance=_rtol()).passed


def test_batch_mesh_names_the_fix():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        nj.batch_mesh(jax.device_count() + 1)
