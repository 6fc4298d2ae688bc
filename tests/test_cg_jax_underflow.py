"""The JAX CG twin run past convergence with `tol = 0` (regression: underflowed dot products).

On a rank-deficient GGN plus damping, CG from near 0 converges in a few steps; further steps
drive the residual below ~1e-154, where the unscaled `r^T z` and `p^T A p` underflowed and
`cg_solve` stopped early with `NOT_POSITIVE_DEFINITE` on a positive definite matrix (408 of
480 steps here before the fix). Both dot products are now scaled by powers of two, as in the
dense CG (`ngd_ref.cg._dense._scaled_dot`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import zoo
from ngd_ref.cg._jax import CGStatus, cg_solve
from ngd_ref.dense import dense
from verify._policy import tolerance_policy
from verify._tolerance import compare

pytestmark = pytest.mark.usefixtures("x64")

# trajectory_hf_full_cg_is_newton's conv problem (its GGN has rank 2)
PROBLEM = zoo.get("conv-2x3x3-2c-last-sigmoid-bce-b2")


def _system() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = dense(PROBLEM)
    a = ref.matrix("ggn") + 0.0625 * np.eye(PROBLEM.n_params)
    return a, -ref.gradient, 1e-3 * ref.gradient


def test_cg_past_convergence_takes_every_step():
    a, b, x0 = _system()
    steps = 12 * PROBLEM.n_params
    result = cg_solve(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), jnp.asarray(x0), tol=0.0,
                      maxiter=steps)
    assert int(result.status) == CGStatus.MAX_ITERATIONS and int(result.iterations) == steps
    assert np.nanmin(np.asarray(result.residual_norms)) < 1e-150  # where the products underflow
    policy = tolerance_policy(PROBLEM, "float64")
    exact = np.linalg.solve(a, b)
    tolerance = policy.solve_rtol(float(np.linalg.cond(a)))  # the inputs a, b are exact
    assert compare(np.asarray(result.x), exact, tolerance=tolerance).passed
    # negative control: an indefinite operator is still refused
    indefinite = cg_solve(lambda v: jnp.asarray(np.diag([1.0, -1.0])) @ v,
                          jnp.asarray([1.0, 1.0]), tol=0.0, maxiter=2)
    assert int(indefinite.status) == CGStatus.NOT_POSITIVE_DEFINITE
