"""Reference (preconditioned) conjugate gradient and the Krylov-optimality oracle.

CG minimizes the quadratic `q(x) = 0.5 x^T A x - b^T x` for symmetric positive definite `A`
(Grosse ch. 4 s4, seed 002, applied to eq. 12 with `A = G + lambda I`, `b = -grad J`). With a
preconditioner `M ~ A^{-1}` (SPD), iteration k (Hestenes-Stiefel form) is

    z_k = M r_k,   rho_k = r_k^T z_k,   p_k = z_k + (rho_k / rho_{k-1}) p_{k-1}   (p_0 = z_0)
    alpha_k = rho_k / (p_k^T A p_k),    x_{k+1} = x_k + alpha_k p_k,   r_{k+1} = r_k - alpha_k A p_k

with `r_0 = b - A x_0`. The k-th iterate `x_k` is the minimizer of the A-norm error
`||x - A^{-1} b||_A` (equivalently of `q`) over the affine Krylov space

    x_0 + K_k(M A, M r_0) = x_0 + span{M r_0, (M A) M r_0, ..., (M A)^{k-1} M r_0},

which `krylov_optimal_iterate` computes directly -- a Krylov basis by Gram-Schmidt and a
Galerkin solve, no CG recurrence -- so CG is checked iterate by iterate against its defining
property rather than against another CG.

Stopping rule (PROTOCOL section 5): `||b - A x|| <= max(tol ||b||, atol)`, or exactly
`maxiter` iterations. The recurrence residual `r_k` drifts from the true residual
`b - A x_k` in floating point, so when `r_k` meets the rule, the true residual is
recomputed (one extra product, not counted as an iteration); if it does not meet the rule,
CG restarts from `x_k` with the true residual ("residual replacement") and continues. So a
returned `converged=True` is a statement about the true residual. (With `tol = atol = 0`
only an exactly zero residual stops early, so `maxiter=k` gives the k-th iterate.)

Only `+ - * / @`, comparisons and `np.sum` touch the numbers: the code runs unchanged on
float64 arrays and on numpy object arrays of `mpmath.mpf` (use it inside
`backend.precision()`), so the mpmath backend can certify the float64 iterates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["CGResult", "cg", "cg_iterates", "cg_solve", "iterate_condition",
           "iterate_conditions", "krylov_optimal_iterate", "krylov_optimal_iterates"]

Matvec = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class CGResult:
    """Outcome of a CG solve.

    Attributes:
        x: the last iterate `x_k`.
        iterations: k, the number of CG iterations (products with A inside the loop).
        converged: whether the *true* residual `||b - A x||` met `max(tol ||b||, atol)`.
        residual_norms: `||r_j||` of the recurrence residual for j = 0..k (after a residual
            replacement the recomputed true residual), as backend scalars.
        residual_norm: `||b - A x||`, recomputed from `x` at the end.
        iterates: `(x_0, ..., x_k)` for `cg_iterates`, else `None`.
    """

    x: np.ndarray
    iterations: int
    converged: bool
    residual_norms: tuple[Any, ...]
    residual_norm: Any
    iterates: tuple[np.ndarray, ...] | None = None


def _as_callable(operator: Any, name: str) -> Matvec:
    """Turn a matrix (anything with `@`) or a callable into a callable."""
    if callable(operator):
        return operator
    matrix = np.asarray(operator)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"{name}: expected a callable or a square matrix, got shape {matrix.shape}"
        )
    return lambda v: matrix @ v


def _dot(u: np.ndarray, v: np.ndarray) -> Any:
    return (u * v).sum()  # the method: np.sum's reduction without its Python dispatch


def _exponent(u: np.ndarray) -> int:
    """`e` with `2^e` near `max |u_i|` (0 where that is 0 or not a positive float64)."""
    largest = float(np.abs(u).max()) if u.size else 0.0
    return math.frexp(largest)[1] if largest > 0 and math.isfinite(largest) else 0


def _scaled_dot(u: np.ndarray, v: np.ndarray) -> tuple[Any, int]:
    """`(u 2^-e) . (v 2^-f)` and `e + f`: `u . v` without underflow.

    A residual far below the right-hand side (CG run past convergence with `tol = 0`) has
    `r . r` or `p . A p` below the smallest float64 (about 1e-308 once `|r| < 1e-154`); the
    scaled products stay normal, and since scaling by `2^e` is exact, `alpha` and `beta`
    computed from them are bit-identical to the unscaled ones wherever those did not underflow.
    """
    e, f = _exponent(u), _exponent(v)
    return _dot(u * 2.0**-e, v * 2.0**-f), e + f


def _ratio(numerator: tuple[Any, int], denominator: tuple[Any, int]) -> Any:
    """`(a 2^e) / (b 2^f)` for `numerator = (a, e)`, `denominator = (b, f)` (`_scaled_dot`)."""
    return (numerator[0] / denominator[0]) * 2.0 ** (numerator[1] - denominator[1])


def _sqrt(value: Any) -> Any:
    """Square root of a non-negative float or mpmath scalar (mpf ** 0.5 is mpf's sqrt)."""
    return value**0.5


def _check(
    b: Any, x0: Any, tol: float, atol: float, maxiter: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    b = np.asarray(b)
    if b.ndim != 1:
        raise ValueError(f"b: expected a vector (1-d array), got shape {b.shape}")
    x = b * 0 if x0 is None else np.asarray(x0)
    if x.shape != b.shape:
        raise ValueError(f"x0: expected shape {b.shape} (like b), got {x.shape}")
    if not tol >= 0 or not atol >= 0:
        raise ValueError(f"tol/atol: expected non-negative numbers, got tol={tol!r}, atol={atol!r}")
    if maxiter is None:
        maxiter = 10 * b.shape[0]
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 0:
        raise ValueError(f"maxiter: expected a non-negative int or None, got {maxiter!r}")
    return b, x, int(maxiter)


def cg_solve(
    matvec: Matvec | np.ndarray,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    tol: float = 1e-10,
    atol: float = 0.0,
    maxiter: int | None = None,
    precond: Matvec | np.ndarray | None = None,
) -> CGResult:
    """Preconditioned CG on SPD `A` (Grosse ch. 4 s4), with a true-residual convergence test.

    Args:
        matvec: `v -> A v` for symmetric positive definite A, or the matrix A.
        b: right-hand side `(n,)`.
        x0: starting point (default 0).
        tol: relative tolerance on the true residual, `||b - A x|| <= tol ||b||`.
        atol: absolute tolerance; the test is against `max(tol ||b||, atol)`.
        maxiter: most iterations (default `10 n`); with `tol = atol = 0` exactly this many
            are taken unless the residual becomes exactly zero.
        precond: `r -> M r` with `M ~ A^{-1}` SPD, or the matrix M (default identity).

    Returns:
        A `CGResult`.

    Raises:
        ValueError: for malformed arguments, or when `p^T A p <= 0` or `r^T M r < 0` shows
            that A or M is not positive definite (naming which, with the value).
    """
    return _run_cg(matvec, b, x0, tol=tol, atol=atol, maxiter=maxiter, precond=precond,
                   keep_iterates=False)


def _run_cg(matvec: Matvec | np.ndarray, b: np.ndarray, x0: np.ndarray | None, *, tol: float,
            atol: float, maxiter: int | None, precond: Matvec | np.ndarray | None,
            keep_iterates: bool) -> CGResult:
    """The recurrence of `cg_solve`, also recording every iterate with `keep_iterates`."""
    b, x, maxiter = _check(b, x0, tol, atol, maxiter)
    apply_a = _as_callable(matvec, "matvec")
    apply_m = (lambda r: r) if precond is None else _as_callable(precond, "precond")
    threshold_sq = max(tol * tol * _dot(b, b), atol * atol)
    r = b - apply_a(x)
    rr = _dot(r, r)  # of the current r, computed once
    iterates = [x] if keep_iterates else None
    norms = [_sqrt(rr)]
    restart = True
    converged = False
    iterations = 0
    p: np.ndarray | None = None
    rho: tuple[Any, int] | None = None  # the scaled r^T z of `_scaled_dot`
    while True:
        if rr <= threshold_sq:
            true_r = b - apply_a(x)
            true_rr = _dot(true_r, true_r)
            if true_rr <= threshold_sq:
                converged = True
                break
            r, rr, restart = true_r, true_rr, True  # residual replacement: it had drifted
            norms[-1] = _sqrt(rr)
        if iterations >= maxiter:
            break
        z = apply_m(r)
        rho_new = _scaled_dot(r, z)
        if rho_new[0] < 0:
            raise ValueError(f"precond: not positive definite (r^T M r = {_dot(r, z)})")
        if restart or p is None or rho is None:  # the first step, or after a restart
            p = z
        else:
            p = z + _ratio(rho_new, rho) * p
        rho, restart = rho_new, False
        ap = apply_a(p)
        curvature = _scaled_dot(p, ap)
        if not curvature[0] > 0:
            raise ValueError(f"matvec: not positive definite (p^T A p = {_dot(p, ap)})")
        alpha = _ratio(rho, curvature)
        x = x + alpha * p
        r = r - alpha * ap
        rr = _dot(r, r)
        iterations += 1
        norms.append(_sqrt(rr))
        if iterates is not None:
            iterates.append(x)
    final = b - apply_a(x)
    return CGResult(x, iterations, converged, tuple(norms), _sqrt(_dot(final, final)),
                    None if iterates is None else tuple(iterates))


def cg(
    matvec: Matvec | np.ndarray,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
    precond: Matvec | np.ndarray | None = None,
) -> np.ndarray:
    """`x` from (preconditioned) CG, with the signature of PROTOCOL section 5's `cg`.

    Stops at `||b - A x|| <= tol ||b||` or after exactly `maxiter` iterations; with
    `tol=0, maxiter=k` it returns the k-th iterate. See `cg_solve` for the details.
    """
    return cg_solve(matvec, b, x0, tol=tol, maxiter=maxiter, precond=precond).x


def cg_iterates(
    matvec: Matvec | np.ndarray,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    maxiter: int,
    precond: Matvec | np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Every CG iterate `(x_0, x_1, ..., x_maxiter)` (`tol = 0`), as the JAX twin's `cg_iterates`.

    Stops early only where the residual becomes exactly zero (then fewer are returned; the
    JAX twin repeats the last one to keep its static shape).
    """
    iterates = _run_cg(matvec, b, x0, tol=0.0, atol=0.0, maxiter=maxiter, precond=precond,
                       keep_iterates=True).iterates
    assert iterates is not None  # keep_iterates=True records them
    return iterates


def iterate_condition(
    a: np.ndarray, r0: np.ndarray, diag_inv: np.ndarray | None, residuals: tuple[float, ...],
    k: int,
) -> tuple[float, float]:
    """The condition of CG's k-th iterate: `(kappa(A_hat) ||r_0|| / ||r_{k-1}||, kappa(K_hat_k))`.

    `A_hat = M^{1/2} A M^{1/2}` (`diag_inv`: a Jacobi `M`, or None for `A`), `r_j` the
    residuals, `K_hat_k` the column-normalized Krylov basis of `A_hat` from `M^{1/2} r_0`.
    The first term: iteration k builds its direction from `r_{k-1}`, so rounding of size
    `u ||r_0||` is amplified by `||r_0|| / ||r_{k-1}||` (finite-precision CG is exact CG on a
    nearby problem, Greenbaum 1989); the second: the k-th iterate minimizes over `span K_k`,
    which a relative perturbation `u` of the Krylov vectors moves by up to `u kappa(K_hat_k)`
    (Stewart & Sun 1990 thm II.4.11). The harness's CG check (`verify.harness._cg`) and
    Hessian-free trajectory steps take the larger as the iterate's condition number.

    `kappa(K_hat_k)` is computed from the Krylov vectors of `A_hat` built in float64 with
    each column normalized before the next product (each is then accurate to `u` relative,
    so condition numbers up to ~1/u are resolved; beyond that the iterate is undetermined).
    """
    return next(iterate_conditions(a, r0, diag_inv, residuals, first=k))


def iterate_conditions(
    a: np.ndarray, r0: np.ndarray, diag_inv: np.ndarray | None, residuals: tuple[float, ...],
    first: int = 1,
) -> Iterator[tuple[float, float]]:
    """`iterate_condition` for k = `first`, `first + 1`, ..., `len(residuals)`, in turn.

    One `kappa(A_hat)` and one Krylov basis, extended by a column per k: the same operations
    as `iterate_condition` for each k (bit for bit), for the cost of the largest k.
    """
    root = np.ones_like(r0) if diag_inv is None else np.sqrt(diag_inv)
    a_hat = root[:, None] * a * root[None, :]
    condition = float(np.linalg.cond(a_hat))
    w = r0 / root * (root**2)  # M^{-1/2} (M r0) = M^{1/2} r0: the start vector for A_hat
    columns: list[np.ndarray] = []
    for k in range(1, len(residuals) + 1):
        norm = float(np.linalg.norm(w)) if len(columns) == k - 1 else 0.0
        if norm > 0:
            columns.append(w / norm)
            w = a_hat @ columns[-1]
        if k < first:
            continue
        singular = np.linalg.svd(np.stack(columns, axis=1), compute_uv=False)
        basis = float(singular[0] / singular[-1]) if singular[-1] > 0 else np.inf
        yield condition * (residuals[0] / residuals[k - 1]), basis


def _nested_spd_solves(k: np.ndarray, f: np.ndarray) -> list[np.ndarray]:
    """Solve `K[:j, :j] y = f[:j]` for every `j = 1..m`, `K` small SPD, by LDL^T elimination.

    No square roots, no pivoting. Elimination without pivoting is nested: the factor of a
    leading block is the leading block of the factor, entry for entry the same operations,
    so one elimination serves every j, in O(m^2) operations on rows instead of O(m^3). The
    back substitutions of all j then run together, one vector-matrix product per row (m
    steps instead of m^2 / 2).

    Raises:
        ValueError: when a pivot is not positive, i.e. `K` is not positive definite in the
            working precision (instead of dividing by zero).
    """
    m = k.shape[0]
    a = k * 1  # copy (object arrays included)
    y = f * 1
    for j in range(m):  # forward elimination; SPD guarantees positive pivots
        if not a[j, j] > 0:
            raise ValueError(f"K: not positive definite (pivot {j} is {a[j, j]})")
        # every row below at once: entry for entry the operations of a row-by-row loop
        factors = a[j + 1:, j] / a[j, j]
        a[j + 1:, j:] = a[j + 1:, j:] - factors[:, None] * a[j, j:]
        y[j + 1:] = y[j + 1:] - factors * y[j]
    # back substitution for every size at once: column j of `x` solves the leading
    # (j+1) x (j+1) system, with exact zeros below its last row, so each row's sum runs over
    # that system's entries (and zeros) only
    x = a * 0
    for j in reversed(range(m)):
        x[j, j:] = (y[j] - a[j, j + 1:] @ x[j + 1:, j:]) / a[j, j]
    return [x[:size, size - 1] for size in range(1, m + 1)]


def _unit_roundoff_of(sample: Any) -> Any:
    """The unit roundoff of `sample`'s number type (float64 or an mpmath precision).

    The largest power of two `e` with `1 + e == 1` in that arithmetic, found by halving, so the
    same code serves every backend without knowing its type.
    """
    one = sample * 0 + 1
    eps = one
    while one + eps / 2 != one:
        eps = eps / 2
    return eps / 2


def krylov_optimal_iterate(
    a: np.ndarray,
    b: np.ndarray,
    x0: np.ndarray | None,
    k: int,
    precond: Matvec | np.ndarray | None = None,
) -> np.ndarray:
    """Compute the A-norm-optimal point of `x0 + K_k(M A, M r0)`: CG's k-th iterate.

    Computed directly, independently of the CG recurrences: the Krylov vectors
    `w_1 = M r0, w_{j+1} = M A v_j` are orthogonalized by classical Gram-Schmidt (twice, for
    stability), giving a basis V of the space, and the Galerkin condition
    `V^T (b - A (x0 + V y)) = 0` -- the normal equations of `min_y ||x0 + V y - A^{-1}b||_A` --
    is solved, `y = (V^T A V)^{-1} V^T r0` (seed 002, Grosse ch. 4 s4: CG's k-th iterate is
    the optimal point of the k-dimensional Krylov subspace).

    Args:
        a: the SPD matrix `(n, n)` (float64 or object array of mpmath numbers).
        b: right-hand side `(n,)`.
        x0: starting point (None for 0).
        k: the Krylov dimension (iteration number), `0 <= k`. If the space stops growing
            (`r0` lies in an invariant subspace of `M A` of dimension `j < k`, so
            `K_{j+1} = K_j` and `A^{-1} b` has been reached within it), the minimizer over
            the space actually reached is returned, as CG would have stopped there too.
            "Stops growing" is decided in the working precision: after two Gram-Schmidt
            passes a direction already in the span leaves a remainder of a few `u ||w||`
            per basis vector ("twice is enough", Giraud et al. 2005), so a remainder
            `||w_perp|| <= (j + 1) u ||w||` is rounding noise, not a new direction (without
            this test the noise was normalized into a basis vector and `V^T A V` became
            singular: a ZeroDivisionError in mpmath).
        precond: M as a matrix or a callable (default identity).

    Returns:
        `x_k`, shape `(n,)`.
    """
    return krylov_optimal_iterates(a, b, x0, k, precond=precond)[-1]


def krylov_optimal_iterates(
    a: np.ndarray,
    b: np.ndarray,
    x0: np.ndarray | None,
    k: int,
    precond: Matvec | np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Compute `(x_0, x_1, ..., x_k)`, each `x_j` as `krylov_optimal_iterate(..., j)` does.

    One Krylov basis serves every j: the basis of `K_j` is the first j vectors of that of
    `K_k`, and the Galerkin matrix of `K_j` the leading `j x j` block of `V^T A V`, so every
    `x_j` is the same computation as `krylov_optimal_iterate(a, b, x0, j)` (for `k` iterates
    at the cost of one). Arguments as for `krylov_optimal_iterate`.
    """
    a = np.asarray(a)
    b, x0, _ = _check(b, x0, 0.0, 0.0, None)
    if a.shape != (b.shape[0], b.shape[0]):
        raise ValueError(f"a: expected shape {(b.shape[0], b.shape[0])}, got {a.shape}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k: expected a non-negative int, got {k!r}")
    apply_m = (lambda r: r) if precond is None else _as_callable(precond, "precond")
    r0 = b - a @ x0
    basis: list[np.ndarray] = []
    u = _unit_roundoff_of(r0.flat[0]) if r0.size else 0.0
    squares: list[Any] = []  # _dot(v, v) of each basis vector, computed once
    images: list[np.ndarray] = []  # a @ basis[j]
    w = apply_m(r0)
    for _ in range(int(k)):
        before = _dot(w, w)
        if basis:  # classical Gram-Schmidt, twice: one product with the basis per pass
            v, square = np.stack(basis, axis=1), np.array(squares)
            for _ in range(2):
                w = w - v @ ((v.T @ w) / square)
        noise = (len(basis) + 1) * u
        if not _dot(w, w) > noise * noise * before:
            break
        basis.append(w / np.max(np.abs(w)))  # rescaled: powers of M A neither overflow nor vanish
        squares.append(_dot(basis[-1], basis[-1]))
        images.append(a @ basis[-1])
        w = apply_m(images[-1])
    iterates = [x0]
    if basis:
        v = np.stack(basis, axis=1)
        galerkin, projected = v.T @ np.stack(images, axis=1), v.T @ r0
        iterates += [x0 + v[:, :j] @ y
                     for j, y in enumerate(_nested_spd_solves(galerkin, projected), start=1)]
    return tuple(iterates + iterates[-1:] * (int(k) + 1 - len(iterates)))
