"""Tolerances for one problem at one precision, from `verify._tolerance` and the reference.

The policy is `verify._tolerance`'s: an exact quantity is held to
`rounding_rtol(dtype, length, depth)` relative to `max(||desired||, MAG)`, where `MAG` is the
computation's magnitude (the same formula on absolute values). Here:

* `length = max(n, B*C)` (the longest sum), `depth = L + 2` (L layers, then the loss and the
  second derivative);
* `MAG(grad) = c sum_b |J_b|^T |dL/dz_b|`, `MAG(G) = c sum_b |J_b|^T |H_L,b| |J_b|`,
  `MAG(F)` likewise with `|F_R,b|`, `MAG(EF) = c sum_b m_b m_b^T` with `m_b = |J_b|^T |dL/dz_b|`
  (Martens s3, s5, s7 on absolute values), and `MAG(H) = MAG(G) + |H - G|` (the second-order
  term of Martens s3's decomposition, which has no cheaper absolute form);
* `|H_L,b|` is the magnitude of the loss Hessian except for softmax cross-entropy, where it
  is `diag(p) + p p^T` (`Budget.output_curvature_magnitude`: the cancellation in
  `diag(p) - p p^T`);
* products use `MAG(C) |v|`, diagonals `diag(MAG(C))`;
* solves use `solve_rtol` with `condition = kappa(C + lambda I) * max(MAG(C)/||C + lambda I||,
  MAG(g)/||g||)` (Higham Thm 7.2: the perturbation, in units of the matrix and right side,
  amplified by the condition number).
"""

from __future__ import annotations

import functools

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import FLOAT64, DenseCurvature, dense, get_loss
from verify._tolerance import rounding_rtol, solve_rtol

__all__ = ["Budget", "budget"]

_TINY = np.finfo(np.float64).tiny


class Budget:
    """Reference values, magnitudes and tolerances of one problem at one precision."""

    def __init__(self, problem: Problem, dtype: str) -> None:
        self.problem = problem
        self.dtype = dtype
        self.ref: DenseCurvature = dense(problem)
        self.length = max(problem.n_params, problem.batch_size * problem.output_dim)
        self.depth = len(problem.layers) + 2
        self.rtol = rounding_rtol(dtype, length=self.length, depth=self.depth)

    # -- magnitudes ------------------------------------------------------------------------
    @functools.cached_property
    def _abs_pieces(self) -> tuple[np.ndarray, np.ndarray]:
        jac = np.abs(self.ref.jacobians)
        grads = np.abs(self.ref.loss_grads)
        return jac, np.einsum("bcn,bc->bn", jac, grads)

    @functools.cached_property
    def loss_magnitude(self) -> float:
        """`c sum_b (|L_b| + ||z_b||_1)`: log-sum-exp style cancellation scales with |z|."""
        loss = get_loss(self.problem.loss)
        outputs, targets = self.ref.outputs, self.ref.targets
        total = sum(
            abs(float(loss.value(FLOAT64, y, z))) + float(np.sum(np.abs(z)))
            for y, z in zip(targets, outputs, strict=True)
        )
        return float(self.ref.c) * total

    @functools.cached_property
    def gradient_magnitude(self) -> np.ndarray:
        """`MAG(grad h)` as a vector."""
        return float(self.ref.c) * np.sum(self._abs_pieces[1], axis=0)

    @functools.lru_cache(maxsize=8)  # noqa: B019 -- one Budget per (problem, dtype), cached below
    def matrix_magnitude(self, curvature: str) -> np.ndarray:
        """`MAG(C)` as an `(n, n)` matrix (see module docstring)."""
        jac, m = self._abs_pieces
        c = float(self.ref.c)
        if curvature == "empirical_fisher":
            return c * (m.T @ m)
        middles = self.output_curvature_magnitude(curvature)
        gauss_newton = c * np.einsum("bcn,bcd,bdm->nm", jac, middles, jac)
        if curvature == "hessian":
            return gauss_newton + np.abs(self.ref.hessian - self.ref.ggn)
        return gauss_newton

    @functools.lru_cache(maxsize=4)  # noqa: B019 -- as matrix_magnitude
    def output_curvature_magnitude(self, curvature: str) -> np.ndarray:
        """`MAG` of the per-example output curvature (`H_L,b` or `F_R,b`), `(B, C, C)`.

        The entrywise `|H_L,b|`, except where the textbook formula of `H_L` is a difference:
        for softmax cross-entropy (class labels, logits as natural parameters)
        `H_L = F_R = diag(p) - p p^T`, whose magnitude is `diag(p) + p p^T` -- the formula on
        absolute values, as everywhere in the policy. `|H_L|` has `p_i (1 - p_i)` on the
        diagonal, which leaves no room for the cancellation a correct port computing
        `p_i - p_i^2` makes when the softmax saturates: its error is `~u (p_i + p_i^2)`, up to
        `2 / (1 - p_i)` times more (issue 13: `--fuzz 40 --seed 202`, p = 0.99923, a correct
        float64 port's `hessian_diag` at 1.01 of the old tolerance; 0.6 on other seeds).
        """
        exact = self.ref.output_fishers if curvature == "fisher" else self.ref.loss_hessians
        loss = Loss(self.problem.loss)
        if not (loss.has_class_labels and loss.outputs_are_natural_parameters):
            return np.abs(exact)
        probabilities = get_loss(self.problem.loss).probabilities
        p = np.stack([probabilities(FLOAT64, z) for z in self.ref.outputs])
        return np.einsum("bc,cd->bcd", p, np.eye(p.shape[1])) + np.einsum("bc,bd->bcd", p, p)

    def matrix(self, curvature: str) -> np.ndarray:
        """The reference matrix."""
        return self.ref.matrix(curvature)

    # -- tolerances ------------------------------------------------------------------------
    def solve_tolerance(
        self,
        matrix: np.ndarray,
        magnitude: np.ndarray,
        damping: float,
        rhs: np.ndarray,
        rhs_magnitude: np.ndarray,
    ) -> tuple[float, float]:
        """`(tolerance, kappa)` for `(C + damping I)^{-1} rhs` (relative to `||x||`)."""
        damped = matrix + damping * np.eye(matrix.shape[0])
        kappa = float(np.linalg.cond(damped))
        units = max(
            np.linalg.norm(magnitude) / max(np.linalg.norm(damped), _TINY),
            np.linalg.norm(rhs_magnitude) / max(np.linalg.norm(rhs), _TINY),
        )
        return solve_rtol(
            self.dtype, length=self.length, depth=self.depth, condition=kappa * max(units, 1.0)
        ), kappa


# Small on purpose: a Budget holds the dense reference and n x n magnitudes; the harness and
# the cross-validation visit one problem at a time (a 512-entry cache exhausted memory on
# generated problems).
@functools.lru_cache(maxsize=16)
def budget(problem: Problem, dtype: str) -> Budget:
    """The cached `Budget` of a problem (problems are immutable)."""
    return Budget(problem, dtype)
