"""BFGS, the dense inverse-BFGS matrix and the L-BFGS two-loop recursion (PROTOCOL s9).

Secant pairs `s_k = theta_{k+1} - theta_k`, `y_k = grad h(theta_{k+1}) - grad h(theta_k)`
(seed 004 "BFGS": the finite-difference relation `H~ s = y`).

BFGS update of the Hessian approximation `B` (seed 004's rank-2 formula; Nocedal & Wright
eq. (6.19)):

    B+ = B + y y^T / (y^T s) - B s s^T B / (s^T B s).

Properties (each a check in `verify.identities.methods`): `B+` is symmetric when `B` is; it
satisfies the secant condition `B+ s = y`; it is positive definite when `B` is and
`y^T s > 0` (the curvature condition); with `y^T s < 0` it cannot be (`s^T B+ s = y^T s < 0`).

Inverse update of `H = B^{-1}` (Nocedal & Wright eq. (6.17)), `rho = 1 / (y^T s)`:

    H+ = (I - rho s y^T) H (I - rho y s^T) + rho s s^T,

so `H+ = (B+)^{-1}` (Sherman-Morrison-Woodbury) and `H+ y = s`. Starting from `H_0 = gamma I`
and applying the pairs oldest first gives the dense `H_k` (`inverse_bfgs_matrix`); the L-BFGS
two-loop recursion (Nocedal & Wright Algorithm 7.4; seed 004 "L-BFGS") computes `H_k g` in
`O(m n)` without forming it:

    q = g;  for i = newest..oldest:  alpha_i = rho_i s_i^T q;  q -= alpha_i y_i
    r = gamma q;  for i = oldest..newest:  beta = rho_i y_i^T r;  r += (alpha_i - beta) s_i.

Every update enforces its newest secant equation `H+ y = s`. On a quadratic
`h = 1/2 theta^T A theta` with exact pairs `y_i = A s_i` whose steps are `A`-conjugate
(`s_i^T A s_j = 0` for `i != j`, as exact line searches produce), the secant equations are
*hereditary*: `H_k y_i = s_i` for every stored pair, i.e. `H_k = A^{-1}` on `span{y_i}` and
`H_k A v = v` for every `v` in `span{s_i}` (quadratic termination of BFGS with exact line
searches, Nocedal & Wright s6.1; checked numerically in tests/test_methods_dense.py).
Without conjugacy only the newest equation is guaranteed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._problem import Problem
from ngd_ref.curvature._dense import DenseCurvature, dense

__all__ = [
    "bfgs_update",
    "broyden_rank1_update",
    "inverse_bfgs_matrix",
    "inverse_bfgs_update",
    "lbfgs_direction",
    "lbfgs_step",
]


def _vectors(s, y) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(s), np.asarray(y)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            f"s, y: expected two vectors of the same shape (n,), got {s.shape} and {y.shape}"
        )
    return s, y


def _curvature(s: np.ndarray, y: np.ndarray):
    ys = y @ s
    if float(ys) == 0.0:
        raise ValueError(
            "y: the pair has y^T s = 0, for which the BFGS update is undefined; "
            "skip the pair (a practical BFGS also skips pairs with y^T s <= 0)"
        )
    return ys


def bfgs_update(B, s, y) -> np.ndarray:
    """`B + y y^T/(y^T s) - B s s^T B/(s^T B s)` (PROTOCOL s9; seed 004; N&W eq. (6.19)).

    Args:
        B: the current Hessian approximation, symmetric `(n, n)` (float64 or mpmath arrays).
        s: the step `theta_{k+1} - theta_k`, `(n,)`.
        y: the gradient change `grad h(theta_{k+1}) - grad h(theta_k)`, `(n,)`.

    Raises:
        ValueError: for mismatched shapes, `y^T s = 0` or `s^T B s = 0`.
    """
    s, y = _vectors(s, y)
    B = np.asarray(B)
    if B.shape != (s.shape[0], s.shape[0]):
        raise ValueError(f"B: expected shape {(s.shape[0],) * 2} to match s, got {B.shape}")
    ys = _curvature(s, y)
    Bs = B @ s
    sBs = s @ Bs
    if float(sBs) == 0.0:
        raise ValueError(
            "B: s^T B s = 0, the BFGS update is undefined; B must be positive definite"
        )
    return B + np.outer(y, y) / ys - np.outer(Bs, Bs) / sBs


def inverse_bfgs_update(H, s, y, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`(I - rho s y^T) H (I - rho y s^T) + rho s s^T`, `rho = 1/(y^T s)` (N&W eq. (6.17)).

    The inverse of `bfgs_update(H^{-1}, s, y)` (Sherman-Morrison-Woodbury).
    """
    s, y = _vectors(s, y)
    H = np.asarray(H)
    with backend.precision():
        rho = 1 / _curvature(s, y)
        v = backend.eye(s.shape[0]) - rho * np.outer(y, s)
        return v.T @ H @ v + rho * np.outer(s, s)


def _pairs(s_list: Sequence, y_list: Sequence, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(s_list) != len(y_list):
        raise ValueError(
            f"s_list, y_list: expected equally many pairs, got {len(s_list)} and {len(y_list)}"
        )
    pairs = [_vectors(s, y) for s, y in zip(s_list, y_list, strict=True)]
    for i, (s, _) in enumerate(pairs):
        if s.shape != (n,):
            raise ValueError(f"s_list[{i}]: expected shape ({n},), got {s.shape}")
    return pairs


def inverse_bfgs_matrix(
    s_list: Sequence, y_list: Sequence, gamma: float = 1.0, *, n: int, backend: Backend = FLOAT64
) -> np.ndarray:
    """Dense `H_k`: `gamma I` updated by `inverse_bfgs_update` with each pair, oldest first.

    The matrix the L-BFGS two-loop recursion applies (`lbfgs_direction(g, ...) == H_k g`).
    """
    pairs = _pairs(s_list, y_list, n)
    with backend.precision():
        H = backend.scalar(gamma) * backend.eye(n)
        for s, y in pairs:
            H = inverse_bfgs_update(H, s, y, backend=backend)
        return H


def lbfgs_direction(
    g, s_list: Sequence, y_list: Sequence, gamma: float = 1.0, *, backend: Backend = FLOAT64
) -> np.ndarray:
    """`H_k g` by the two-loop recursion (PROTOCOL s9; N&W Algorithm 7.4; seed 004 "L-BFGS").

    Args:
        g: the vector to precondition (usually `grad h`), `(n,)`. Never modified.
        s_list: steps, oldest first.
        y_list: gradient changes, oldest first.
        gamma: the initial inverse Hessian scale, `H_0 = gamma I`.
        backend: the arithmetic (`gamma` is converted exactly).

    Returns:
        `H_k g`, the L-BFGS approximation of `H^{-1} g` (the step is its negative).
    """
    g = np.asarray(g)
    if g.ndim != 1:
        raise ValueError(f"g: expected a vector (n,), got shape {g.shape}")
    pairs = _pairs(s_list, y_list, g.shape[0])
    with backend.precision():
        rhos = [1 / _curvature(s, y) for s, y in pairs]
        q = g.copy()
        alphas = []
        for (s, y), rho in zip(reversed(pairs), reversed(rhos), strict=True):
            alpha = rho * (s @ q)
            q = q - alpha * y
            alphas.append(alpha)
        r = backend.scalar(gamma) * q
        for (s, y), rho, alpha in zip(pairs, rhos, reversed(alphas), strict=True):
            beta = rho * (y @ r)
            r = r + (alpha - beta) * s
        return r


def lbfgs_step(
    problem: Problem,
    s_list: Sequence,
    y_list: Sequence,
    lr: float,
    gamma: float = 1.0,
    *,
    backend: Backend = FLOAT64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One L-BFGS iteration from `problem.params` (the `lbfgs_step` protocol extension).

    With `theta = problem.params`, `g = grad h(theta)` and `H_k` the L-BFGS inverse-Hessian
    approximation of the given pairs (oldest first, `H_0 = gamma I`; `lbfgs_direction`):

        theta' = theta - lr H_k g,   s = theta' - theta,   y = grad h(theta') - grad h(theta)

    (a fixed step size, as in seed 004's `lbfgs`; N&W Algorithm 7.5 without the line
    search). `y` is formed from the *raw* gradient at `theta`, not from the two-loop's
    overwritten `q`: seed 004's `lbfgs` rebinds `grad_z` in the first loop and then forms
    `dg = grad(new_z) - grad_z` from the overwritten value, the bug this function pins down.

    Args:
        problem: the objective `h` and the starting point `theta`.
        s_list: steps, oldest first.
        y_list: gradient changes, oldest first.
        lr: the fixed step size.
        gamma: the initial inverse Hessian scale.
        backend: the arithmetic (float64 or mpmath).

    Returns:
        `(theta', s, y)`, each `(n,)`: the new parameters and the new secant pair.
    """
    ref = dense(problem, backend)
    with backend.precision():
        g = ref.gradient
        s = -backend.scalar(lr) * lbfgs_direction(g, s_list, y_list, gamma, backend=backend)
        new_params = ref.theta + s
        moved = DenseCurvature(problem, backend, params=new_params)
        return new_params, s, moved.gradient - g


def broyden_rank1_update(B, s, y, *, backend: Backend = FLOAT64) -> np.ndarray:
    """Seed 004's symmetric rank-one ("Broyden") update: `B+ = B + v v^T / (v^T s)`, `v = y - B s`.

    The unique symmetric rank-one change with `B+ s = y` (seed 004 "BFGS": "we can add a
    constraint that the change in H~ is rank 1"; Nocedal & Wright eq. (6.24), SR1). As the
    seed says, it need not keep `B+` positive definite even when `y^T s > 0`.

    Raises:
        ValueError: for mismatched shapes or `v^T s = 0` (the update is undefined).
    """
    s, y = _vectors(s, y)
    B = np.asarray(B)
    with backend.precision():
        v = y - B @ s
        denominator = v @ s
        if float(denominator) == 0:
            raise ValueError("s, y: (y - B s)^T s = 0, the rank-one update is undefined")
        return B + np.outer(v, v) / denominator
