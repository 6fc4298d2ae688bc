"""Exact curvature diagonals, Hutchinson's estimator and diagonal second-moment averages.

Exact diagonals (PROTOCOL s5 `hessian_diag`, `ggn_diag`, `empirical_fisher_diag`):

    diag(H)_k                                        (from the exact dense Hessian)
    diag(G)_k  = c sum_b sum_{i,j} [J_b]_{ik} [H_L,b]_{ij} [J_b]_{jk}   (no n x n matrix)
    diag(EF)_k = c sum_b [g_b]_k^2                   (Martens s7, seed 003)

The last one is what Adam's second moment estimates (seed 004 "Adagrad and Adam": "a diagonal
matrix consisting of un-normalized gradient variances"): the *mean of squared per-example
gradients*. The square of the mean gradient, `(grad h)_k^2 = (c sum_b [g_b]_k)^2`, is a
different quantity whenever `B > 1` (a shipped bug class); for a mean reduction Jensen gives
`diag(EF) >= (grad h)^2` entrywise, with equality iff all per-example gradients agree there.

Hutchinson's estimator (PROTOCOL s9 `hutchinson_diag`): for Rademacher `z` (i.i.d. +-1),
`E[z * (A z)] = diag(A)` because `E[z_i z_j] = delta_ij`. One sample's i-th entry is
`A_ii + sum_{j != i} A_ij z_i z_j`, so

    Var[z_i (A z)_i] = sum_{j != i} A_ij^2,     z_i (A z)_i in [A_ii - R_i, A_ii + R_i],
    R_i = sum_{j != i} |A_ij|,

a bounded variable of range `2 R_i`: Hoeffding's inequality turns `num_samples` probes into a
two-sided bound that holds with a stated false-positive rate (`verify._tolerance`).
Seed 004's "diagonal via vjp with ones" (`vgrad(vgrad(f))` seeded with `ones`) is not a
diagonal at all: it computes `H @ 1` (the row sums of `H`).

Running averages (seed 004 "AdaHessian"; Adam's `v`): with decay `beta` and estimates `D_t`,

    v_t = beta v_{t-1} + (1 - beta) D_t^2,   v_0 = 0,   v_hat_t = v_t / (1 - beta^t),

so a constant estimate `D` gives `v_hat_t = D^2` exactly for every `t` (the bias correction
exactly undoes the zero initialization); the update is `g / (v_hat^(1/2) + eps)` (AdaHessian,
Adam) or `g / (v_hat + eps)` for the "no sqrt" natural-gradient variant of seed 004.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._problem import Problem
from ngd_ref.curvature._dense import dense

__all__ = [
    "diagonal_update",
    "sampled_label_second_moment",
    "ema_second_moment",
    "empirical_fisher_diag",
    "ggn_diag",
    "hessian_diag",
    "hutchinson_diag",
    "hutchinson_range",
    "hutchinson_variance",
    "squared_gradient",
]


def hessian_diag(problem: Problem, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`diag(H)`, `(n,)`, from the exact dense Hessian (PROTOCOL s5)."""
    return np.diagonal(dense(problem, backend).hessian).copy()


def ggn_diag(problem: Problem, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`diag(G)_k = c sum_b [J_b^T H_L,b J_b]_kk`, `(n,)`, without forming `G` (PROTOCOL s5)."""
    ref = dense(problem, backend)
    with backend.precision():
        jac = ref.jacobians
        return ref.c * np.einsum("bik,bij,bjk->k", jac, ref.loss_hessians, jac)


def empirical_fisher_diag(problem: Problem, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`diag(EF)_k = c sum_b [g_b]_k^2`: the mean of squared per-example gradients (PROTOCOL s5)."""
    ref = dense(problem, backend)
    with backend.precision():
        g = ref.per_example_gradients
        return ref.c * np.sum(g * g, axis=0)


def squared_gradient(problem: Problem, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`(grad h)_k^2`, the square of the mean gradient -- NOT `diag(EF)` unless `B = 1`."""
    ref = dense(problem, backend)
    with backend.precision():
        return ref.gradient * ref.gradient


def hutchinson_diag(
    matvec: Callable[[np.ndarray], np.ndarray] | np.ndarray, n: int, num_samples: int, seed: int
) -> np.ndarray:
    """Mean over `num_samples` Rademacher probes `z` of `z * matvec(z)` (PROTOCOL s9).

    Args:
        matvec: `v -> A v` for a square `A` of size `n` (float64), called once per probe;
            or the matrix `A` itself, then applied to all probes in one product (the same
            estimate up to the order of the sums).
        n: the dimension.
        num_samples: number of probes (>= 1).
        seed: seed of `numpy.random.default_rng`; the probes are its
            `integers(0, 2, size=(num_samples, n)) * 2 - 1`.

    Returns:
        An unbiased estimate of `diag(A)`, `(n,)` float64.
    """
    for label, value, least in (("n", n, 1), ("num_samples", num_samples, 1)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{label}: expected an integer >= {least}, got {value!r}")
    probes = np.random.default_rng(seed).integers(0, 2, size=(num_samples, n)) * 2.0 - 1.0
    if not callable(matvec):
        matrix = np.asarray(matvec, dtype=np.float64)
        if matrix.shape != (n, n):
            raise ValueError(f"matvec: expected a callable or an ({n}, {n}) matrix, got shape "
                             f"{matrix.shape}")
        return np.sum(probes * (probes @ matrix.T), axis=0) / num_samples
    total = np.zeros(n)
    for z in probes:
        az = np.asarray(matvec(z), dtype=np.float64)
        if az.shape != (n,):
            raise ValueError(f"matvec: expected it to return shape ({n},), got {az.shape}")
        total += z * az
    return total / num_samples


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix: expected a square (n, n) array, got shape {matrix.shape}")
    return matrix - np.diag(np.diagonal(matrix))


def hutchinson_variance(matrix: np.ndarray) -> np.ndarray:
    """`Var[z_i (A z)_i] = sum_{j != i} A_ij^2` for one Rademacher probe, `(n,)`."""
    off = _off_diagonal(matrix)
    return np.sum(off * off, axis=1)


def hutchinson_range(matrix: np.ndarray) -> np.ndarray:
    """Width `2 sum_{j != i} |A_ij|` of the interval holding `z_i (A z)_i`, `(n,)` (Hoeffding)."""
    return 2.0 * np.sum(np.abs(_off_diagonal(matrix)), axis=1)


def ema_second_moment(
    estimates: Sequence[np.ndarray], beta: float, *, backend: Backend = FLOAT64
) -> np.ndarray:
    """Bias-corrected running average of squares, `v_hat_T` (AdaHessian; Adam's `v`; seed 004).

    Args:
        estimates: `D_1, ..., D_T` (diagonal estimates or gradients), each `(n,)`; `T >= 1`.
        beta: decay in `[0, 1)`.
        backend: the arithmetic.

    Returns:
        `v_T / (1 - beta^T)` with `v_t = beta v_{t-1} + (1 - beta) D_t^2`, `v_0 = 0`.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta: expected 0 <= beta < 1, got {beta!r}")
    if len(estimates) == 0:
        raise ValueError("estimates: expected at least one estimate")
    with backend.precision():
        b = backend.scalar(beta)
        v = None
        for d in estimates:
            d = backend.asarray(d)
            v = (1 - b) * d * d if v is None else b * v + (1 - b) * d * d
        return v / (1 - b ** len(estimates))


def diagonal_update(
    gradient: np.ndarray, diagonal: np.ndarray, *, power: float = 0.5, eps: float = 0.0
) -> np.ndarray:
    """`-g / (diagonal^power + eps)`: Adam/AdaHessian (`power=0.5`), diagonal NGD (`power=1`).

    Seed 004's `adam_no_momentum` with `exponent`; `diagonal` must be entrywise >= 0 (a second
    moment), and `diagonal^power + eps` nonzero.
    """
    gradient, diagonal = np.asarray(gradient), np.asarray(diagonal)
    if gradient.shape != diagonal.shape:
        raise ValueError(
            f"diagonal: expected shape {gradient.shape} to match gradient, got {diagonal.shape}"
        )
    if np.any(diagonal.astype(float) < 0):
        raise ValueError(
            "diagonal: a second moment must be >= 0 entrywise; take squares or |.| first"
        )
    return -gradient / (diagonal**power + eps)


def sampled_label_second_moment(problem: Problem, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`E_y[ghat^2]` (elementwise) for the gradient `ghat` at model-sampled labels, exactly.

    Seed 004's "Adam (proper Fisher)" squares the batch gradient at labels `y_b ~ r(.|z_b)`
    drawn independently per example. Each example's score has mean zero and covariance
    `J_b^T F_R,b J_b`, so `E[(c sum_b g_b(y_b))^2] = c^2 sum_b diag(J_b^T F_R,b J_b)
    = c diag(F)`: the Fisher's diagonal only for the sum reduction (`c = 1`); for the mean it
    is `diag(F) / B` (`verify.identities.seed_code`).
    """
    ref = dense(problem, backend)
    with backend.precision():
        per_example = np.stack([
            np.sum(t.jacobian * (m.fisher @ t.jacobian), axis=0)
            for t, m in zip(ref.traces, ref.output_moments, strict=True)])
        return ref.c * ref.c * np.sum(per_example, axis=0)
