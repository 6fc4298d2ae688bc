"""Damped Newton and the |H| trust-region step, exact and dense, on any `Backend`.

Quadratic model (Grosse ch. 4 eq. (1), seed 002) of `h` around `theta`, as a function of the
step `d` and with a Tikhonov (proximity) term of weight `lambda` (Grosse eq. (5)):

    m_lambda(d) = grad h^T d + 1/2 d^T (C + lambda I) d,        C = H (Newton) or |H|.

Damped Newton (Grosse eq. (5); seed 004 "Regularized Newton"):

    d_N = -(H + lambda I)^{-1} grad h,

the unique stationary point of `m_lambda` with `C = H`; it is the model's *minimizer* iff
`H + lambda I` is positive definite, otherwise a saddle (or maximizer) of the model.

Trust-region variant with absolute eigenvalues (seed 004 "Trust Region Newton"; PROTOCOL s9):

    |H| = Q |Lambda| Q^T  from  H = Q Lambda Q^T,        d_TR = -(|H| + lambda I)^{-1} grad h.

`|H| + lambda I` is positive definite for `lambda > 0` (or nonsingular `H`), so
`grad h^T d_TR = -grad h^T (|H| + lambda I)^{-1} grad h < 0` for `grad h != 0`: a descent
direction at every point (Grosse eq. (6) with `A = (|H| + lambda I)^{-1}` positive definite).
In the eigenbasis, `d_N,i = -g_i / (lambda_i + lambda)` and `d_TR,i = -g_i / (|lambda_i| + lambda)`:
the two agree where `lambda_i >= 0`, and where `lambda_i + lambda < 0` the Newton step climbs
(`g_i d_N,i > 0`) while the |H| step descends.
"""

from __future__ import annotations

import numpy as np

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._problem import Problem
from ngd_ref._validation import check_damping
from ngd_ref.curvature._dense import dense

__all__ = ["absolute_hessian", "newton_update", "quadratic_model", "trust_region_update"]


def absolute_hessian(matrix: np.ndarray, *, backend: Backend = FLOAT64) -> np.ndarray:
    """`|M| = Q |Lambda| Q^T` for a symmetric `M = Q Lambda Q^T` (seed 004 "Trust Region Newton").

    Args:
        matrix: a symmetric `(n, n)` array of `backend`'s numbers.
        backend: arithmetic to use (the eigendecomposition is `backend.eigh`).

    Raises:
        ValueError: if `matrix` is not square.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix: expected a square (n, n) array, got shape {matrix.shape}")
    with backend.precision():
        values, vectors = backend.eigh(matrix)
        return (vectors * np.abs(values)) @ vectors.T


def newton_update(problem: Problem, damping: float, *, backend: Backend = FLOAT64) -> np.ndarray:
    """Damped Newton step `-(H + damping I)^{-1} grad h` (Grosse eq. (5); seed 004).

    Args:
        problem: the problem; `H` and `grad h` are the exact dense ones of PROTOCOL s3.
        damping: `lambda >= 0`; with `H + lambda I` singular the solve raises.
        backend: `FLOAT64` or `mp_backend(dps)`.
    """
    check_damping(damping)
    return dense(problem, backend).damped_update("hessian", damping)


def trust_region_update(
    problem: Problem, damping: float, *, backend: Backend = FLOAT64
) -> np.ndarray:
    """Return the |H| step `-(|H| + damping I)^{-1} grad h` (PROTOCOL s9; seed 004).

    Computed in the eigenbasis of `H`: `d = -Q diag(1 / (|lambda_i| + damping)) Q^T grad h`, which
    is the same matrix as forming `|H| + damping I` and solving, without a second factorization.

    Args:
        problem: the problem.
        damping: `lambda >= 0`; `lambda = 0` needs a nonsingular `H`.
        backend: `FLOAT64` or `mp_backend(dps)`.

    Raises:
        ValueError: for a negative or non-finite damping, or when `|H| + damping I` is singular.
    """
    check_damping(damping)
    ref = dense(problem, backend)
    with backend.precision():
        values, vectors = backend.eigh(ref.hessian)
        denominators = np.abs(values) + backend.scalar(damping)
        if not all(float(d) > 0 for d in denominators):
            raise ValueError(
                "damping: |H| + damping I is singular (H has a zero eigenvalue); pass damping > 0"
            )
        return -(vectors @ ((vectors.T @ ref.gradient) / denominators))


def quadratic_model(
    problem: Problem,
    step: np.ndarray,
    *,
    curvature: np.ndarray | None = None,
    damping: float = 0.0,
    backend: Backend = FLOAT64,
):
    """`m(d) = grad h^T d + 1/2 d^T (C + damping I) d` (Grosse eqs. (1) and (5), constant dropped).

    Args:
        problem: the problem (supplies `grad h`, and `C = H` by default).
        step: `d`, shape `(n,)`.
        curvature: `C`, `(n, n)`; defaults to the exact Hessian.
        damping: `lambda >= 0`.
        backend: `FLOAT64` or `mp_backend(dps)`.
    """
    check_damping(damping)
    ref = dense(problem, backend)
    with backend.precision():
        d = backend.asarray(step)
        if d.shape != (problem.n_params,):
            raise ValueError(f"step: expected shape ({problem.n_params},), got {d.shape}")
        c = ref.hessian if curvature is None else curvature
        return ref.gradient @ d + (d @ (c @ d) + backend.scalar(damping) * (d @ d)) / 2
