"""The damped GGN step solved in the `B*C`-dimensional output space (PROTOCOL s9).

Stack the per-example Jacobians into `J = [J_1; ...; J_B]` (`BC x n`), the output Hessians into
the *block-diagonal* `H_L = blockdiag(H_L,1, ..., H_L,B)` (`BC x BC`) and the output gradients
into `r = [dL/dz_1; ...; dL/dz_B]` (`BC`). Then `G = c J^T H_L J` and `grad h = c J^T r`
(PROTOCOL s3), and the push-through identity `(lambda I + J^T M J)^{-1} J^T = J^T (lambda I +
M J J^T)^{-1}` (both sides times `lambda I + J^T M J` on the left agree) gives

    -(G + lambda I)^{-1} grad h = -J^T (c H_L K + lambda I)^{-1} c r,     K = J J^T  (BC x BC),

for every `lambda > 0` (Grosse eq. (13); seed 004 "Generalized Gauss-Newton", whose update
`J^T (H_l J J^T + 0.8 I)^{-1} residuals` is this formula). Cost `O((BC)^2 n + (BC)^3)` instead
of `O(n^3)`; no `n x n` matrix is formed.

Seed 004's cell builds `H_l = diag(p) - p p^T` from the *flattened* probabilities of the whole
batch: one softmax Hessian over `B*C` entries whose off-diagonal blocks `-p_b p_b'^T` couple
different examples. The GGN has no such terms (each example's loss depends on its own output
only), so the seed's step differs from the dense damped GGN step whenever `B > 1`.
"""

from __future__ import annotations

import numpy as np

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._problem import Problem
from ngd_ref._validation import check_damping
from ngd_ref.curvature._dense import dense

__all__ = ["block_diagonal", "lowrank_ggn_update", "unscaled_damping_ggn_update"]


def block_diagonal(blocks: np.ndarray, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`blockdiag(blocks[0], ..., blocks[B-1])` for `blocks` of shape `(B, C, C)`: `(BC, BC)`."""
    blocks = np.asarray(blocks)
    count, size = blocks.shape[0], blocks.shape[1]
    out = backend.zeros((count * size, count * size))
    for b in range(count):
        out[b * size : (b + 1) * size, b * size : (b + 1) * size] = blocks[b]
    return out


def lowrank_ggn_update(
    problem: Problem, damping: float, *, backend: Backend = FLOAT64
) -> np.ndarray:
    """`-(G + damping I)^{-1} grad h` computed in output space (PROTOCOL s9; push-through).

    Args:
        problem: the problem (`J_b`, `H_L,b`, `dL/dz_b` from the exact dense reference).
        damping: `lambda > 0` (at `lambda = 0` the output-space system is singular whenever
            `n < BC` or `G` is rank deficient, and the identity needs `G + lambda I` invertible).
        backend: `FLOAT64` or `mp_backend(dps)`.

    Raises:
        ValueError: for `damping <= 0` or non-finite.
    """
    check_damping(damping, positive=True)
    ref = dense(problem, backend)
    with backend.precision():
        jac = ref.jacobians.reshape(-1, problem.n_params)  # (BC, n)
        h_out = block_diagonal(ref.loss_hessians, backend=backend)  # (BC, BC)
        r = ref.loss_grads.reshape(-1)  # (BC,)
        system = ref.c * (h_out @ (jac @ jac.T)) + backend.scalar(damping) * backend.eye(
            jac.shape[0]
        )
        return -(jac.T @ backend.solve(system, ref.c * r))


def unscaled_damping_ggn_update(
    problem: Problem, damping: float, *, backend: Backend = FLOAT64
) -> np.ndarray:
    """Seed 004's Gauss-Newton step with its damping unscaled: `-J^T (H_L K + lambda I)^{-1} r`.

    Seed 004's cell solves with the *unscaled* stacked Jacobian and residuals (no `c`), with the
    per-example (block-diagonal) `H_L` here. Push-through with `G = c J^T H_L J`,
    `grad h = c J^T r`: `J^T (H_L K + lambda I)^{-1} r = (J^T H_L J + lambda I)^{-1} J^T r
    = (G + c lambda I)^{-1} grad h`, so for the mean reduction (`c = 1/B`) the damping the seed
    applies is `lambda / B`, not `lambda` (`verify.identities.seed_code`).

    Raises:
        ValueError: for `damping <= 0` or non-finite.
    """
    check_damping(damping, positive=True)
    ref = dense(problem, backend)
    with backend.precision():
        jac = ref.jacobians.reshape(-1, problem.n_params)
        h_out = block_diagonal(ref.loss_hessians, backend=backend)
        r = ref.loss_grads.reshape(-1)
        system = h_out @ (jac @ jac.T) + backend.scalar(damping) * backend.eye(jac.shape[0])
        return -(jac.T @ backend.solve(system, r))
