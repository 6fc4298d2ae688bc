"""Checks of conjugate gradient (PROTOCOL s5 `cg`; Grosse ch. 4 s4, seed 002).

The system is built from the problem: `A = F + mu I` (the true Fisher, PSD for every loss,
unlike G for `gaussian_logvar`) with `mu = ||F||_2 / 50` (so
`kappa(A) <= 51`: the iterates are well determined in float32 too) and `b = -grad h` (a probe
vector when the gradient vanishes). CG is checked *iterate by iterate* against its defining
property -- the k-th iterate is the A-norm-optimal point of `x0 + K_k(M A, M r0)` -- computed
directly by `ngd_ref.dense.krylov_optimal_iterates` (Krylov basis + Galerkin solve, no CG
recurrence), for k = 1..min(n, 6):

* `cg_iterates`: no preconditioner, `x0 = None` (zero start);
* `cg_iterates_preconditioned`: Jacobi preconditioner `M = diag(A)^{-1}` passed as `precond`;
* `cg_iterates_x0`: a nonzero starting point;
* `cg_maxiter_zero`: `maxiter=0` returns `x0` unchanged;
* `cg_converges`: with `tol` (1e-10 in float64, 1e-4 in float32) the true residual
  `||b - A x||` is at most `tol ||b||` plus the rounding floor `rtol ||A|| ||x||`.

Iterate tolerance: `solve_rtol(dtype, length=n, depth=k, condition=c_k)` relative to
`||x_k||` (see `iterate_condition`), with

    c_k = max(kappa(A_hat) ||r_0|| / ||r_{k-1}||,  kappa(K_hat_k)),

`A_hat = M^{1/2} A M^{1/2}` the operator CG actually iterates on (`A` itself without a
preconditioner), `r_j` the residuals of the exact iterates and `K_hat_k` the column-normalized
Krylov basis `[w, A_hat w, ..., A_hat^{k-1} w]` of that operator. The first term: iteration k
builds its new direction from `r_{k-1}`, so rounding errors of size `u ||r_0||` are amplified
by `||r_0||/||r_{k-1}||` (finite-precision CG is exact CG on a nearby problem, Greenbaum
1989). The second: the k-th iterate is the minimizer over `span K_k`, and a relative
perturbation `u` of the Krylov vectors moves that span by up to `u kappa(K_hat_k)`
(`||dK|| ||K^+||`, Stewart & Sun 1990 thm II.4.11 on the sensitivity of a subspace spanned by
a basis). Issue 13's seed 11 (Jacobi-preconditioned CG on
`gen-4x3x1-relu-identity-poisson-b1-sum`) is where the first term alone is wrong: a correct
float64 port's error grows ~20x per iterate (5.6e-15 ... 9.3e-10 at k = 2..6), tracking
`u kappa(K_hat_k)` (at 0.1-0.75 of it: `kappa(K_hat_k)` = 57 ... 7.7e7) while the residual ratio
grows only 22 ... 190, and the old model used `kappa(A) = 51` for an operator of condition 100.
Once `||r_{k-1}|| <= sqrt(u) ||r_0||` or `kappa(K_hat_k) > 1/sqrt(u)` the remaining iterates
are not determined by the data in precision u (to at most half the digits) and are not
compared (the convergence check covers them). The exact iterates
are computed beyond float64, because the oracle's Krylov construction loses digits near
convergence as CG does: in numpy's x87 `longdouble` (u_x = 2^-64) where the platform has
it, else in 40-digit mpmath (`EXTENDED`). By the same error model, the oracle's error is at
most `u_x / u = 2^-11` of the rounding error a float64 port is allowed *before* the
tolerance's factors (`SAFETY sqrt(n) (k + 1)` >= 16 * 3), i.e. below 1e-5 of the tolerance;
tests/test_cg_oracle.py checks that the two oracles agree to 1e-5 of it on zoo problems
(measured: <= 3e-7; a float64 oracle: ~3e-4). mpmath costs ~0.5 s per problem, `longdouble`
~5 ms: the difference between a 30 s `ngd-verify run` and a 60 s one.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import krylov_optimal_iterates, mp_backend
from verify._report import Status
from verify._tolerance import solve_rtol, unit_roundoff
from verify.harness._context import CheckContext
from verify.harness._faults import readonly

__all__ = ["MAX_ITERATES", "check_cg", "cg_system"]

MAX_ITERATES = 6
_CONVERGE_TOL = {"float64": 1e-10, "float32": 1e-4}
#: iterate k is compared only while ||r_{k-1}|| > this x ||r_0|| (square root of u)
_INFORMATIVE = {dtype: unit_roundoff(dtype) ** 0.5 for dtype in ("float64", "float32")}


def cg_system(ctx: CheckContext) -> tuple[np.ndarray, np.ndarray]:
    """`(A, b)` for the problem (see module docstring)."""
    fisher = ctx.policy.matrix("fisher")
    norm = float(np.linalg.norm(fisher, 2))
    a = fisher + (norm / 50.0 if norm > 0 else 1.0) * np.eye(fisher.shape[0])
    g = -ctx.policy.ref.gradient
    b = g if np.any(g) else ctx.probe(g.shape[0])[0]
    return a, b


def iterate_condition(
    a: np.ndarray, r0: np.ndarray, diag_inv: np.ndarray | None, residuals: tuple[float, ...],
    k: int,
) -> tuple[float, float]:
    """The two terms of `c_k` (module docstring) for iterate k (`diag_inv`: Jacobi `M`, or None).

    `kappa(K_hat_k)` is computed from the Krylov vectors of `A_hat` built in float64 with
    each column normalized before the next product (each is then accurate to `u` relative,
    so condition numbers up to ~1/u are resolved; beyond that the iterate is undetermined).
    """
    root = np.ones_like(r0) if diag_inv is None else np.sqrt(diag_inv)
    a_hat = root[:, None] * a * root[None, :]
    w = r0 / root * (root**2)  # M^{-1/2} (M r0) = M^{1/2} r0: the start vector for A_hat
    columns = []
    for _ in range(k):
        norm = float(np.linalg.norm(w))
        if not norm > 0:
            break
        columns.append(w / norm)
        w = a_hat @ columns[-1]
    singular = np.linalg.svd(np.stack(columns, axis=1), compute_uv=False)
    basis = float(singular[0] / singular[-1]) if singular[-1] > 0 else np.inf
    growth = residuals[0] / residuals[k - 1]
    return float(np.linalg.cond(a_hat)) * growth, basis


#: The oracle's precision: numpy's extended `longdouble` where it is the x87 80-bit format
#: (u = 2^-64, 2^11 times float64's), else 40-digit mpmath (see the module docstring).
EXTENDED = bool(np.finfo(np.longdouble).eps <= 2.0**-63)


@functools.lru_cache(maxsize=1024)
def _optimal_iterates(
    problem: Problem, variant: str, x0_bytes: bytes | None, extended: bool = EXTENDED
) -> tuple[tuple[np.ndarray, ...], tuple[float, ...]]:
    """Krylov-optimal iterates 1..K and residual norms 0..K beyond float64, as float64 (cached).

    The Gram-Schmidt Krylov basis of `krylov_optimal_iterates` loses digits as the space nears
    invariance, like CG itself, so the oracle is evaluated in more than float64 precision (the
    same code on `longdouble` or mpmath object arrays, `extended` choosing) and only its result
    is rounded. `M` is the float64 `diag(A)^{-1}` the port is given, exactly.
    """
    a, b = _SYSTEMS[problem]
    x0 = None if x0_bytes is None else np.frombuffer(x0_bytes, dtype=np.float64)
    bk = mp_backend(40)
    cast = functools.partial(np.asarray, dtype=np.longdouble) if extended else bk.asarray
    with contextlib.nullcontext() if extended else bk.precision():
        a_x, b_x = cast(a), cast(b)
        m = None
        if variant == "preconditioned":  # M = diag(A)^{-1}, applied entrywise
            m = functools.partial(np.multiply, cast(1.0 / np.diag(a)))
        iterates = krylov_optimal_iterates(a_x, b_x, None if x0 is None else cast(x0),
                                           min(b.shape[0], MAX_ITERATES), precond=m)
        residuals = tuple(float(np.sum((b_x - a_x @ x) ** 2) ** 0.5) for x in iterates)
        return tuple(bk.to_float64(x) for x in iterates[1:]), residuals


_SYSTEMS: dict[Problem, tuple[np.ndarray, np.ndarray]] = {}


def _matvec(a: np.ndarray):
    def matvec(v):
        return a @ np.asarray(v, dtype=np.float64)

    return matvec


def check_cg(ctx: CheckContext) -> None:
    """CG iterate by iterate, with and without preconditioner, from a nonzero x0; convergence."""
    a, b = cg_system(ctx)
    _SYSTEMS.setdefault(ctx.problem, (a, b))
    n = b.shape[0]
    diag_inv = 1.0 / np.diag(a)
    (x0,) = ctx.probe(n)
    b_ro = readonly(b)
    variants = (
        ("cg_iterates", None, "plain", "no preconditioner, x0 = 0"),
        ("cg_iterates_preconditioned", None, "preconditioned", "Jacobi preconditioner"),
        ("cg_iterates_x0", x0, "x0", "nonzero x0"),
    )
    for check, start, variant, what in variants:
        precond = (
            None
            if variant != "preconditioned"
            else (lambda r, d=diag_inv: d * np.asarray(r, dtype=np.float64))
        )
        optimal, residuals = _optimal_iterates(
            ctx.problem, variant, None if start is None else start.tobytes()
        )
        for k in range(1, min(n, MAX_ITERATES) + 1):
            if residuals[k - 1] <= _INFORMATIVE[ctx.dtype] * residuals[0]:
                break  # CG has (nearly) converged: later iterates are not determined by the data
            ctx.begin(check)
            value = ctx.port("cg", _matvec(a), b_ro, x0=start, tol=0.0, maxiter=k, precond=precond)
            r0 = b if start is None else b - a @ start
            amplified, basis = iterate_condition(
                a, r0, diag_inv if variant == "preconditioned" else None, residuals, k
            )
            if basis > 1.0 / _INFORMATIVE[ctx.dtype]:
                break  # span K_k known to fewer than half the digits: x_k is not determined
            tolerance = solve_rtol(ctx.dtype, length=n, depth=k, condition=max(amplified, basis))
            comparison = ctx.compare(
                f"{check}",
                value,
                optimal[k - 1],
                tolerance=tolerance,
                what=f"iterate {k} = A-optimal point of x0 + K_{k} (Grosse s4; {what})",
            )
            if not comparison.passed:
                break  # one failing iterate per variant is enough evidence
    ctx.begin("cg_maxiter_zero")
    value = ctx.port("cg", _matvec(a), b_ro, x0=x0, tol=0.0, maxiter=0)
    ctx.compare("cg_maxiter_zero", value, x0, tolerance=0.0, what="maxiter=0 returns x0")
    tol = _CONVERGE_TOL[ctx.dtype]
    ctx.begin("cg_converges")
    value = ctx.port("cg", _matvec(a), b_ro, tol=tol)
    x = ctx.require_shape("cg_converges", value, (n,))
    if x is None:
        return
    residual = float(np.linalg.norm(b - a @ x))
    floor = solve_rtol(ctx.dtype, length=n, depth=1, condition=1.0) * float(
        np.linalg.norm(a, 2) * np.linalg.norm(x)
    )
    bound = tol * float(np.linalg.norm(b)) + floor
    ok = bool(np.isfinite(residual)) and residual <= bound
    ctx.record(
        "cg_converges",
        Status.PASS if ok else Status.FAIL,
        f"||b - A x|| = {residual:.2e} {'<=' if ok else '>'} tol ||b|| + rounding floor "
        f"= {bound:.2e} (PROTOCOL s5 stopping rule, tol={tol:g})",
        residual / max(float(np.linalg.norm(b)), 1e-300),
        bound / max(float(np.linalg.norm(b)), 1e-300),
    )
