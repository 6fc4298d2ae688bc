"""The tolerance policy of one problem at one precision: every check's tolerance comes from here.

`TolerancePolicy(problem, dtype)` (cached: `tolerance_policy(problem, dtype)`) applies the
rules of `verify._tolerance` (Higham's rounding model) to a problem, with one magnitude model
and one method per kind of check:

* sizes: `length = max(n, B*C)` (the longest sum), `depth = L + 2` (L layers, then the loss
  and the second derivative); `rtol = rounding_rtol(dtype, length, depth)` for an exact
  quantity, relative to `max(||desired||, MAG)`;
* the magnitude model, `MAG` = the same formula on absolute values:
  - per example, the output-space middle matrices: `|H_L,b|` (GGN), `|F_R,b|` (Fisher),
    each at least the magnitude of its closed form where the loss's probabilities saturate
    (`LossSpec.probabilities`): `diag(p) + p p^T` for softmax outputs (the formula
    `diag(p) - p p^T` cancels to `p (1 - p)` when `p -> 1`, so a correct port's value
    carries an absolute error `u (p + p^2)`, not `u p (1 - p)`) and `p + p^2` per sigmoid
    output;
  - per example, the output gradient: `MAG(dL/dz_b)` is the loss's closed form on absolute
    values (`OutputLoss.grad_magnitude`: `p + e_y` for `p - e_y`, `p + y` for a sigmoid's
    `p - y`, `rate + y`, `|z| + |y|` for a residual), since the difference cancels where the
    loss saturates or fits (a saturated sigmoid at `y = 1`);
  - per example, the Jacobian: `MAG(J_b)` is the chain rule on absolute values
    (`DenseCurvature.jacobian_magnitudes`: `|W_l|`, `|abar|` and each activation's
    `MAG(J_phi)`, `1 + a^2` for tanh's `1 - a^2`, `diag(p) + p p^T` for softmax's
    `diag(p) - p p^T`), not `|J_b|`: the chain cancels (two equal rows of `W_L` under a
    softmax give `dz/ds_l = 0` exactly below the last layer, which a port computes as a
    rounding-level residue) and so do saturated activations;
  - `MAG(grad) = c sum_b MAG(J_b)^T MAG(dL/dz_b)`,
    `MAG(G) = c sum_b MAG(J_b)^T MAG(H_L,b) MAG(J_b)`, `MAG(F)` likewise with `MAG(F_R,b)`,
    `MAG(EF) = c sum_b m_b m_b^T` with `m_b = MAG(J_b)^T MAG(dL/dz_b)` (Martens s3, s5, s7
    on absolute values), K-FAC factors the
    same way (`kfac_magnitudes`), and
    `MAG(H) = MAG(G) + |H - G|` (the second-order term of Martens s3's decomposition);
  - products use `MAG(C) |v|`, diagonals `diag(MAG(C))`;
  - scalar magnitudes of a sum of terms (the identities' two-sided comparisons) are the
    Frobenius-norm bound `c sum_b ||MAG(J_b)||_F^2 ||MAG(M_b)||_F` of the same model;
* `solve_rtol(condition)`: the tolerance, relative to `||x||`, of a solve (or a matrix
  function such as an inverse root) whose inputs are known to the policy's rounding:
  Higham (2002) Thm 7.2, `||dx|| / ||x|| <= kappa (||dA|| / ||A|| + ||db|| / ||b||) /
  (1 - kappa ||dA|| / ||A||)` with `||dA|| <= rtol MAG(A)`, `||db|| <= rtol MAG(b)`, is
  `rtol * condition` to first order, where `condition = kappa * max(MAG(A) / ||A||,
  MAG(b) / ||b||, 1)` is the perturbation in units of the matrix and right side amplified
  by `kappa` (`verify._tolerance.solve_rtol`; the policy's `length` and `depth` by default,
  the system's own where it is not the problem's, e.g. a K-FAC block). A tolerance >= 1
  means the result is not determined at this precision (`determined`): the matrix is
  singular to working precision and no comparison can fail a wrong port without failing a
  correct one, so such a check is reported as not checked;
* `solve_tolerance`: `solve_rtol` with `condition = kappa(C + lambda I) * max(MAG(C)/||C +
  lambda I||, MAG(g)/||g||)`;
* optimizer trajectories (PROTOCOL s10) apply the same `solve_rtol` per step through
  `verify._tolerance.trajectory_tolerances`, the step's condition including the cancellation
  of its inputs: the gradient's (a softmax output's `diag(p) + p p^T`), eq. 27's scaled basis
  and L-BFGS's pairs (`pair_scale / y^T s`); see docs/trajectories.md, "Tolerances".
"""

from __future__ import annotations

import functools

import numpy as np

from ngd_ref import Loss, Probabilities, Problem
from ngd_ref.dense import FLOAT64, DenseCurvature, dense, get_loss, kfac_magnitudes
from verify._tolerance import rounding_rtol, solve_rtol

__all__ = ["TolerancePolicy", "tolerance_policy"]

_TINY = np.finfo(np.float64).tiny


class TolerancePolicy:
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
        jac = self.ref.jacobian_magnitudes
        return jac, np.einsum("bcn,bc->bn", jac, self.grad_magnitudes)

    @functools.cached_property
    def grad_magnitudes(self) -> np.ndarray:
        """`MAG(dL/dz_b)` per example, `(B, C)`: the loss's `grad_magnitude` (no cancellation)."""
        loss = get_loss(self.problem.loss)
        return np.stack([loss.grad_magnitude(y, z)
                         for y, z in zip(self.ref.targets, self.ref.outputs, strict=True)])

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

    @functools.lru_cache(maxsize=8)  # noqa: B019 -- one policy per (problem, dtype), cached below
    def matrix_magnitude(self, curvature: str) -> np.ndarray:
        """`MAG(C)` as an `(n, n)` matrix (see module docstring)."""
        jac, m = self._abs_pieces
        c = float(self.ref.c)
        if curvature == "empirical_fisher":
            return c * (m.T @ m)
        middles = self.middle_magnitudes(curvature)
        gauss_newton = c * np.einsum("bcn,bcd,bdm->nm", jac, middles, jac)
        if curvature == "hessian":
            return gauss_newton + np.abs(self.ref.hessian - self.ref.ggn)
        return gauss_newton

    @functools.cached_property
    def saturation_floor(self) -> np.ndarray:
        """Per example, `MAG` of the closed form of a saturating loss's middle, `(B, C, C)`.

        `diag(p) + p p^T` for softmax probabilities, `diag(p + p^2)` for sigmoid ones, zero
        for losses without probabilities (`LossSpec.probabilities`).
        """
        z = np.asarray(self.ref.outputs, dtype=np.float64)
        kind = Loss(self.problem.loss).spec.probabilities
        if kind is Probabilities.NONE:
            return np.zeros(z.shape + z.shape[-1:])
        if kind is Probabilities.SIGMOID:
            p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
            return np.einsum("bc,cd->bcd", p + p * p, np.eye(z.shape[1]))
        if kind is Probabilities.SOFTMAX:
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
        else:
            p = z
        return np.einsum("bc,cd->bcd", p, np.eye(z.shape[1])) + np.einsum("bc,bd->bcd", p, p)

    @functools.lru_cache(maxsize=4)  # noqa: B019 -- one policy per (problem, dtype)
    def middle_magnitudes(self, curvature: str) -> np.ndarray:
        """Entrywise `MAG` of each example's output-space middle, `(B, C, C)`.

        `|F_R,b|` for `"fisher"`, `|H_L,b|` otherwise, at least the `saturation_floor`.
        """
        middles = self.ref.output_fishers if curvature == "fisher" else self.ref.loss_hessians
        return np.maximum(np.abs(np.asarray(middles, dtype=np.float64)), self.saturation_floor)

    @functools.cached_property
    def sketch_middle_magnitudes(self) -> np.ndarray:
        """`MAG(Q_b Q_b^T)` of a port's root of `F_R,b` (s11's sketch), `(B, C, C)`.

        A backward-stable factorization (Cholesky, symmetric eigendecomposition) gives the
        exact root of `F_R,b + E` with `||E||_2 <= c u ||F_R,b||_2` (Higham Thm 10.3, and
        normwise backward stability of eigh): the error is normwise, not entrywise, so an entry
        near zero moves by `u ||MAG(F_R,b)||`. Example: a saturated softmax (`p_0 ~ 1e-12`)
        whose float32 `F_R` has `p_1 (1 - p_1) = 0`, indefinite; clipping its negative
        eigenvalue makes `(Q Q^T)_00` 1.17 `p_0`. `middle_magnitudes("fisher") + ||.||_F I`.
        """
        middles = self.middle_magnitudes("fisher")
        norms = np.linalg.norm(middles, axis=(1, 2))
        return middles + norms[:, None, None] * np.eye(middles.shape[1])

    @functools.cached_property
    def middle_norms(self) -> np.ndarray:
        """`||MAG(M_b)||_F` per example, `(B,)`: the larger of the H_L and F_R magnitudes.

        One number serves every output-space middle (H_L, F_R, E[H_L]): all are computed
        from the same output quantities.
        """
        return np.maximum(np.linalg.norm(self.middle_magnitudes("ggn"), axis=(1, 2)),
                          np.linalg.norm(self.middle_magnitudes("fisher"), axis=(1, 2)))

    def gauss_newton_magnitude(self, middles: np.ndarray | None = None) -> float:
        """Scalar `MAG(c sum_b J_b^T M_b J_b) <= c sum_b ||MAG(J_b)||_F^2 ||MAG(M_b)||_F`.

        `MAG(M_b)` is `middle_norms`, or `||M_b||` for the given `middles` where larger.
        """
        mid = self.middle_norms
        if middles is not None:
            mid = np.maximum(mid, np.linalg.norm(np.asarray(middles, dtype=np.float64),
                                                 axis=(1, 2)))
        jac = np.linalg.norm(self.ref.jacobian_magnitudes, axis=(1, 2)) ** 2
        return float(self.problem.scale * np.sum(jac * mid))

    def kfac_magnitudes(self, kind: str, approx: str = "expand"
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`MAG` of section 4's K-FAC factors of `kind` (s12's `approx` for convolutions).

        `fisher` and `ggn` use `middle_magnitudes` (the saturation floor included), `empirical`
        the outer product of `grad_magnitudes` (its middle is `dL/dz dL/dz^T`).
        """
        if kind == "empirical":
            g = self.grad_magnitudes
            middles = np.einsum("bc,bd->bcd", g, g)
        else:
            middles = self.middle_magnitudes("fisher" if kind == "fisher" else "ggn")
        return kfac_magnitudes(self.problem, kind, approx=approx, middle_magnitudes=middles)

    def matrix(self, curvature: str) -> np.ndarray:
        """The reference matrix."""
        return self.ref.matrix(curvature)

    # -- tolerances ------------------------------------------------------------------------
    def solve_rtol(self, condition: float, *, length: int | None = None,
                   depth: int | None = None) -> float:
        """Tolerance relative to `||x||` of a solve of condition `condition` (module docstring).

        Args:
            condition: `kappa * max(MAG(A) / ||A||, MAG(b) / ||b||)` of the system (or just
                `kappa` where the inputs are exact).
            length: the longest sum of the system (default: the problem's `length`).
            depth: levels of composition (default: the problem's `depth`).
        """
        return solve_rtol(self.dtype, length=self.length if length is None else length,
                          depth=self.depth if depth is None else depth, condition=condition)

    @staticmethod
    def determined(tolerance: float) -> bool:
        """Whether a relative tolerance leaves the result determined (`< 1`, module docstring)."""
        return tolerance < 1.0

    @property
    def overflow(self) -> float:
        """The largest finite value of the policy's dtype (`numpy.finfo(dtype).max`)."""
        return float(np.finfo(self.dtype).max)

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
            float(np.linalg.norm(magnitude)) / max(float(np.linalg.norm(damped)), _TINY),
            float(np.linalg.norm(rhs_magnitude)) / max(float(np.linalg.norm(rhs)), _TINY),
        )
        return self.solve_rtol(kappa * max(units, 1.0)), kappa


# Small on purpose: a policy holds the dense reference and n x n magnitudes; the harness and
# the cross-validation visit one problem at a time (a 512-entry cache exhausted memory on
# generated problems).
@functools.lru_cache(maxsize=16)
def tolerance_policy(problem: Problem, dtype: str) -> TolerancePolicy:
    """The cached `TolerancePolicy` of a problem (problems are immutable)."""
    return TolerancePolicy(problem, dtype)
