"""Inverse p-th roots and the Shampoo direction (PROTOCOL s9), on any `Backend`.

Inverse root by eigendecomposition: for symmetric `M + r I = Q diag(mu) Q^T` with `mu > 0`,

    (M + r I)^{-1/p} = Q diag(mu^{-1/p}) Q^T.

Inverse root by the coupled Newton iteration (Guo & Higham 2006; the
`matrix_inverse_pth_root` of seed 004 "Shampoo"): with `A = M + r I` and
`z = (1 + p)/(2 ||A||_F)`,

    X_0 = z^{1/p} I,  M_0 = z A;
    T_k = ((p + 1) I - M_k)/p,  X_{k+1} = X_k T_k,  M_{k+1} = T_k^p M_k.

All iterates are polynomials in `A` (they commute) and `M_k = X_k^p A` is invariant, so
`X_k = A^{-1/p} M_k^{1/p}`: the residual `rho_k = ||M_k - I||_2 < 1` bounds the error,

    ||X_k - A^{-1/p}||_2 <= ||A^{-1/p}||_2 (1 - (1 - rho_k)^{1/p})
                         <= ||A^{-1/p}||_2 rho_k / (p (1 - rho_k)),

which is the "iteration's tolerance" that eigh and Newton must agree to. `M_0` has eigenvalues
in `(0, (p+1)/2]`, inside the region `(0, p+1)` where the iteration converges quadratically.

Shampoo direction for a weight-shaped gradient `G` (`m x k`) with statistics `L` (`m x m`) and
`R` (`k x k`), PROTOCOL s9 (Gupta et al. 2018, Algorithm 1; seed 004's code uses p = 4):

    D = (L + eps I)^{-1/4} G (R + eps I)^{-1/4}.

One step from zero statistics (bias-corrected EMA, `shampoo_statistics`) has `L = G G^T`,
`R = G^T G`; with the SVD `G = U S V^T` (rank r), `D = U diag(s / sqrt(s^2 + eps)) V^T`, which
tends to the polar factor `U_r V_r^T` as `eps -> 0`, with error at most `eps / (2 s_r^2)` per
singular value. Seed 004's text writes the update with exponent `-1/2`
(`L^{-1/2} G R^{-1/2}`), which for the same statistics gives `U S^{-1} V^T`: not the polar
factor, and the preconditioner of a rank-two Kronecker model squared.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ngd_ref._backend import FLOAT64, Backend

__all__ = [
    "InverseRootResult",
    "coupled_newton_inverse_root",
    "inverse_root",
    "matrix_power",
    "power_iteration",
    "polar_factor",
    "shampoo_direction",
    "shampoo_statistics",
]


def _square(name: str, matrix) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"{name}: expected a square symmetric (n, n) matrix, got shape {matrix.shape}"
        )
    return matrix


def _check_root(p: int, ridge: float) -> None:
    if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 1:
        raise ValueError(f"p: expected a positive integer root, got {p!r}")
    if not (math.isfinite(float(ridge)) and float(ridge) >= 0):
        raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")


def inverse_root(M, p: int, ridge: float = 0.0, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`(M + ridge I)^{-1/p}` by eigendecomposition (PROTOCOL s9).

    Args:
        M: symmetric positive semidefinite `(n, n)` (float64 or `backend` numbers).
        p: a positive integer.
        ridge: `r >= 0`; `M + r I` must be positive definite.
        backend: the arithmetic.

    Raises:
        ValueError: for a non-square `M`, a bad `p` or `ridge`, or `M + ridge I` not positive
            definite (pass a larger ridge).
    """
    M = _square("M", M)
    _check_root(p, ridge)
    with backend.precision():
        values, vectors = backend.eigh(backend.asarray(M))
        shifted = values + backend.scalar(ridge)
        if not float(shifted[0]) > 0:
            raise ValueError(
                f"M: M + ridge I is not positive definite (smallest eigenvalue "
                f"{float(shifted[0]):.3g}); pass ridge > 0"
            )
        exponent = -backend.scalar(1) / p
        return (vectors * shifted**exponent) @ vectors.T


class InverseRootResult(NamedTuple):
    """Outcome of the coupled Newton iteration.

    Attributes:
        root: the final iterate `X_k ~ (M + ridge I)^{-1/p}`.
        iterations: `k`, the number of Newton steps taken.
        residual: `rho_k = ||M_k - I||_F` (an upper bound of the spectral norm used in the
            error bound of the module docstring).
        converged: whether `residual <= tolerance`.
    """

    root: np.ndarray
    iterations: int
    residual: float
    converged: bool


def coupled_newton_inverse_root(
    M,
    p: int,
    ridge: float = 0.0,
    *,
    tolerance: float | None = None,
    max_iterations: int = 100,
    backend: Backend = FLOAT64,
) -> InverseRootResult:
    """`(M + ridge I)^{-1/p}` by the coupled Newton iteration (Guo & Higham 2006; seed 004).

    Iterates until `||M_k - I||_F <= tolerance`, until the residual stops decreasing (the
    rounding floor; the best iterate is returned), or `max_iterations`.

    Args:
        M: symmetric positive semidefinite `(n, n)`.
        p: a positive integer.
        ridge: `r >= 0`; `M + r I` must be positive definite.
        tolerance: residual target; default `n * 10^-dps` of the backend (float64: `n * 1.1e-15`).
        max_iterations: cap on Newton steps.
        backend: the arithmetic.
    """
    M = _square("M", M)
    _check_root(p, ridge)
    n = M.shape[0]
    if tolerance is None:
        tolerance = n * 10.0 ** (-backend.dps + 1)
    with backend.precision():
        eye = backend.eye(n)
        a = backend.asarray(M) + backend.scalar(ridge) * eye
        norm = backend.sqrt(np.sum(a * a))
        z = (backend.scalar(1) + p) / (2 * norm)
        m_k = z * a
        x_k = eye * z ** (backend.scalar(1) / p)
        residual = float(backend.sqrt(np.sum((m_k - eye) ** 2)))
        iterations = 0
        while residual > tolerance and iterations < max_iterations:
            t = ((p + 1) * eye - m_k) / p
            t_p = t
            for _ in range(p - 1):
                t_p = t_p @ t
            new_m = t_p @ m_k
            new_residual = float(backend.sqrt(np.sum((new_m - eye) ** 2)))
            if new_residual >= residual:
                break
            x_k, m_k, residual = x_k @ t, new_m, new_residual
            iterations += 1
        return InverseRootResult(x_k, iterations, residual, residual <= tolerance)


def shampoo_direction(G, L, R, eps: float, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`(L + eps I)^{-1/4} G (R + eps I)^{-1/4}` (PROTOCOL s9; Gupta et al. 2018).

    Args:
        G: weight-shaped gradient `(m, k)`.
        L: left statistics `(m, m)`, symmetric PSD.
        R: right statistics `(k, k)`, symmetric PSD.
        eps: ridge `>= 0` (both `L + eps I` and `R + eps I` must be positive definite).
        backend: the arithmetic.
    """
    G = np.asarray(G)
    if G.ndim != 2:
        raise ValueError(f"G: expected a weight-shaped (m, k) gradient, got shape {G.shape}")
    L, R = _square("L", L), _square("R", R)
    if L.shape[0] != G.shape[0] or R.shape[0] != G.shape[1]:
        raise ValueError(
            f"L, R: expected shapes {(G.shape[0],) * 2} and {(G.shape[1],) * 2} "
            f"for G of shape {G.shape}, got {L.shape} and {R.shape}"
        )
    with backend.precision():
        return (
            inverse_root(L, 4, eps, backend=backend)
            @ backend.asarray(G)
            @ inverse_root(R, 4, eps, backend=backend)
        )


def shampoo_statistics(
    gradients, beta: float, *, backend: Backend = FLOAT64
) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected EMAs `(L_hat, R_hat)` of `G G^T` and `G^T G` (seed 004 `shampoo_adamlike`).

    `L_T = beta L_{T-1} + (1 - beta) G_T G_T^T`, `L_0 = 0`, `L_hat = L_T / (1 - beta^T)` (same
    for `R`); one gradient gives exactly `(G G^T, G^T G)`.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta: expected 0 <= beta < 1, got {beta!r}")
    if len(gradients) == 0:
        raise ValueError("gradients: expected at least one weight-shaped gradient")
    with backend.precision():
        b = backend.scalar(beta)
        left = right = None
        for g in gradients:
            g = backend.asarray(g)
            gl, gr = g @ g.T, g.T @ g
            left = (1 - b) * gl if left is None else b * left + (1 - b) * gl
            right = (1 - b) * gr if right is None else b * right + (1 - b) * gr
        correction = 1 - b ** len(gradients)
        return left / correction, right / correction


def polar_factor(
    G, *, rank_tolerance: float, backend: Backend = FLOAT64
) -> tuple[np.ndarray, np.ndarray]:
    """`U_r V_r^T` of `G = U S V^T`, keeping singular values `s > rank_tolerance * s_max`.

    Computed as `G V_r diag(1/s_r) V_r^T` from the eigendecomposition of `G^T G`.

    Returns:
        `(polar, singular_values)` with the kept singular values in descending order.
    """
    G = np.asarray(G)
    with backend.precision():
        g = backend.asarray(G)
        values, vectors = backend.eigh(g.T @ g)
        s = backend.sqrt(
            np.maximum(values, 0 * values[0])
            if not backend.is_mp
            else np.array([max(v, 0) for v in values], dtype=object)
        )
        keep = np.array([float(v) > rank_tolerance * float(s[-1]) for v in s])
        v_r, s_r = vectors[:, keep], s[keep]
        return (g @ v_r / s_r) @ v_r.T, s_r[::-1]


def matrix_power(matrix, p: int, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`M^p` for an integer `p >= 1` by binary exponentiation (`O(log p)` products).

    The reference for seed 004's `mat_power`, which unrolls only `p` in {1, 2, 4, 8}: it takes
    `2^round(log2 p)`, so `p = 3` gives `M^4` (`verify.identities.seed_code`).

    Raises:
        ValueError: for a non-square matrix or `p < 1` / not an integer.
    """
    matrix = _square("matrix", matrix)
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"p: expected an integer >= 1, got {p!r}")
    with backend.precision():
        result, base = None, matrix
        while p:
            if p & 1:
                result = base if result is None else result @ base
            p >>= 1
            if p:
                base = base @ base
        assert result is not None  # p >= 1 has a set bit
        return result


def power_iteration(matrix, start, *, iterations: int, rtol: float = 0.0,
                    backend: Backend = FLOAT64) -> tuple[np.ndarray, float, int]:
    """Power iteration for the largest eigenvalue of a symmetric PSD matrix (seed 004 `power_iter`).

    `v <- M v / ||M v||`, Rayleigh quotient `s = v^T M v`; stops after `iterations` steps or
    when `|s_new - s| <= rtol |s_new|` -- a *relative* test, unlike the seed's absolute
    `error_tolerance = 1e-6`, which stops at once on a matrix of norm below 1e-6.

    Returns:
        `(v, s, steps)`: the unit iterate, its Rayleigh quotient and the steps taken.

    Raises:
        ValueError: for a non-square matrix, a start of the wrong shape or zero, or
            `iterations < 1`.
    """
    matrix = _square("matrix", matrix)
    start = np.asarray(start)
    if start.shape != (matrix.shape[0],) or not np.any(start != 0):
        raise ValueError(f"start: expected a nonzero vector of shape ({matrix.shape[0]},)")
    if iterations < 1:
        raise ValueError(f"iterations: expected >= 1, got {iterations!r}")
    with backend.precision():
        v = start / backend.sqrt(start @ start)
        value = v @ (matrix @ v)
        steps, done = 0, False
        while steps < iterations and not done:
            w = matrix @ v
            v = w / backend.sqrt(w @ w)
            new = v @ (matrix @ v)
            done = abs(float(new - value)) <= rtol * abs(float(new))
            value, steps = new, steps + 1
        return v, value, steps
