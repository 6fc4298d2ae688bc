"""Checks of conjugate gradient (PROTOCOL s5 `cg`; Grosse ch. 4 s4, seed 002).

The system is built from the problem: `A = F + mu I` (the true Fisher, PSD for every loss,
unlike G for `gaussian_logvar`) with `mu = ||F||_2 / 50` (so
`kappa(A) <= 51`: the iterates are well determined in float32 too) and `b = -grad h` (a probe
vector when the gradient vanishes). CG is checked *iterate by iterate* over the input matrix
{plain, Jacobi-preconditioned `M = diag(A)^{-1}`} x {zero, nonzero, exact `x0`} x {`b = 0`}
(`VARIANTS`; issue 14), for k = 1..n until the reference's own accuracy ends (below),
against CG's defining property -- the k-th iterate is the A-norm-optimal point of
`x0 + K_k(M A, M r0)` -- computed directly by `ngd_ref.dense.krylov_optimal_iterates`
(Krylov basis + Galerkin solve, no CG recurrence):

* `cg_iterates`: `x0` and `precond` omitted (their defaults: zero start, no preconditioner);
* `cg_iterates_preconditioned`: Jacobi preconditioner, an explicit zero `x0`;
* `cg_iterates_x0`, `cg_iterates_preconditioned_x0`: a nonzero `x0` (`precond=None` passed
  explicitly in the first), with and without the preconditioner;
* `cg_iterates_exact_x0`, `..._preconditioned_exact_x0`: `b = A x0` formed with the
  harness's own `matvec`, so a float64 port's first residual `b - matvec(x0)` is exactly 0:
  CG stops before its first iteration and every iterate (k = 1, 2, n) is `x0` (a NaN from
  `0/0` fails);
* `cg_iterates_zero_b`: `b = 0`, `x0 = 0`: the result is exactly 0 for k = 1, 2, n;
* `cg_iterates_zero_b_x0`: `b = 0` from a nonzero `x0` with the *default* `tol`: the rule
  `||r|| <= tol ||b|| = 0` never stops early, so `maxiter=k` gives the k-th iterate (a rule
  relative to `||r_0||` stops early and fails);
* `cg_iterates_spread`: `x0` omitted, on `spread_system(A)` (n distinct eigenvalues, so
  iterates past 10 are informative: a restart every 10 iterations fails);
* `cg_maxiter_zero`: `maxiter=0` returns `x0` unchanged;
* `cg_converges`: with `tol` (1e-10 in float64, 1e-4 in float32) from `x0 = 0` the true
  residual `||b - A x||` is at most `tol ||b||` plus the rounding floor
  `rtol ||A|| max(||x||, ||x0||)` (the recurrence residual drifts from the true one by the
  rounding of every iterate passed through);
* `cg_converges_x0`: the same from an `x0` with `||b - A x0|| ~ 100 ||b||`, preconditioned:
  the PROTOCOL rule is relative to `||b||`, so a port stopping at `tol ||r_0||` fails by ~100;
* `cg_converges_defaults`: `cg(matvec, b)` with every optional argument omitted meets
  PROTOCOL's default `tol = 1e-10` (scipy's default `1e-5` fails in float64).

Iterate tolerance: `solve_rtol(dtype, length=n, depth=k, condition=c_k)` relative to
`max(||x_k||, ||x_0||)` (the iterate is `x_0` plus accumulated corrections, so its rounding
scales with both: with `b = 0` the iterates tend to 0 from a nonzero `x_0`; see
`iterate_condition`), with

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
compared (the convergence check covers them): this is where the reference's own accuracy
ends (issue 14's rule for comparing "up to n"; every variant is compared up to n or there).
The exact iterates are computed beyond float64, because the oracle's Krylov construction loses
digits near convergence as CG does: in numpy's x87 `longdouble` (u_x = 2^-64) where the
platform has it, else in 40-digit mpmath (`EXTENDED`). By the same error model, the oracle's
error is at most `u_x / u = 2^-11` of the rounding error a float64 port is allowed *before* the
tolerance's factors (`SAFETY sqrt(n) (k + 1)` >= 16 * 3), i.e. below 1e-5 of the tolerance;
tests/test_cg_oracle.py checks that the two oracles agree to 1e-5 of it on zoo problems
(measured: <= 3e-7; a float64 oracle: ~3e-4). mpmath costs ~0.5 s per problem, `longdouble` ~5
ms: the difference between a 30 s `ngd-verify run` and a 60 s one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import iterate_conditions, krylov_optimal_iterates, mp_backend
from verify._report import Status
from verify._tolerance import unit_roundoff
from verify.harness._context import CheckContext
from verify.harness._faults import readonly

__all__ = ["MAX_ITERATES", "VARIANTS", "Variant", "check_cg", "cg_system", "spread_system"]

MAX_ITERATES = 6
_CONVERGE_TOL = {"float64": 1e-10, "float32": 1e-4}
#: largest eigenvalue of `spread_system`, in units of mu
_SPREAD = 16.0
#: PROTOCOL s5's default `tol`
_DEFAULT_TOL = 1e-10
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


#: The oracle's precision: numpy's extended `longdouble` where it is the x87 80-bit format
#: (u = 2^-64, 2^11 times float64's), else 40-digit mpmath (see the module docstring).
EXTENDED = bool(np.finfo(np.longdouble).eps <= 2.0**-63)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One cell of the CG input matrix (module docstring).

    Attributes:
        check: the check name.
        preconditioned: pass the Jacobi preconditioner (else `precond` is omitted or None).
        start: `"omitted"` (no `x0` argument), `"zero"` (an explicit zero vector), `"probe"`
            (a probe vector) or `"exact"` (a probe vector `x0` with `b = A x0` computed by
            the harness's own `matvec`, so the port's first residual is exactly zero in
            float64).
        zero_rhs: `b = 0` instead of the problem's right side.
        what: a description for messages.
        spread: use `spread_system(A)`, whose n distinct eigenvalues keep CG informative for
            up to n iterations (A's spectrum has at most `rank(F) + 1` distinct values). Its
            iterates are held to the residual-ratio term of `c_k` alone (see
            `spread_system`).
    """

    check: str
    preconditioned: bool
    start: str
    zero_rhs: bool
    what: str
    spread: bool = False


VARIANTS = (
    Variant("cg_iterates", False, "omitted", False, "x0 and precond omitted"),
    Variant("cg_iterates_preconditioned", True, "zero", False, "Jacobi preconditioner, x0 = 0"),
    Variant("cg_iterates_x0", False, "probe", False, "nonzero x0"),
    Variant("cg_iterates_preconditioned_x0", True, "probe", False, "Jacobi, nonzero x0"),
    Variant("cg_iterates_exact_x0", False, "exact", False, "x0 = A^-1 b exactly"),
    Variant("cg_iterates_preconditioned_exact_x0", True, "exact", False, "Jacobi, x0 exact"),
    Variant("cg_iterates_zero_b", False, "omitted", True, "b = 0, x0 = 0"),
    Variant("cg_iterates_zero_b_x0", False, "probe", True, "b = 0, nonzero x0, default tol: "
            "tol ||b|| = 0 never stops early"),
    Variant("cg_iterates_spread", False, "omitted", False,
            "evenly spread spectrum (spread_system)", spread=True),
)


def spread_system(a: np.ndarray) -> np.ndarray:
    """`mu diag(1, ..., SPREAD) + F / 50` for `A = F + mu I` (`mu = ||A||_2 / 51`, `cg_system`).

    `A` has at most `rank(F) + 1 <= B C + 1` distinct eigenvalues, so exact CG ends within
    that many iterations and iterates past ~10 are rarely informative. This system has n
    distinct eigenvalues spread evenly over `mu [1, SPREAD]` (plus the problem's `F`, scaled
    to norm `mu`): condition <= `SPREAD + 1`, no isolated extreme eigenvalues (so little loss
    of orthogonality), and CG needs ~16 iterations to reach `sqrt(u_32)` -- a restart or
    drift after iteration 10 is visible in both precisions.

    The Krylov-basis term `kappa(K_hat_k)` of `c_k` bounds how far rounding can move
    `span K_k`; for a monomial basis it grows ~5x per iterate on any spread spectrum and
    would end the comparison at k ~ 10, although this system has no isolated extreme
    eigenvalues (the problem's `F / 50` perturbs an even spread of width `15 mu` by at most
    `mu`), so CG keeps its orthogonality and its iterates stay determined: on the quick zoo
    a correct float64 (float32) port's error stays at ~1e-16 (~5e-8) through k = n, below
    1e-3 of the residual-ratio term. So this variant uses that term only and the residual
    cutoff; the other variants use both terms.
    """
    n = a.shape[0]
    mu = float(np.linalg.norm(a, 2)) / 51.0
    return mu * np.diag(np.linspace(1.0, _SPREAD, n)) + (a - mu * np.eye(n)) / 50.0


@functools.lru_cache(maxsize=1024)
def _optimal_iterates(
    problem: Problem, variant: Variant, x0_bytes: bytes | None, extended: bool = EXTENDED
) -> tuple[tuple[np.ndarray, ...], tuple[float, ...]]:
    """Krylov-optimal iterates 1..n and residual norms 0..n beyond float64, as float64 (cached).

    The Gram-Schmidt Krylov basis of `krylov_optimal_iterates` loses digits as the space nears
    invariance, like CG itself, so the oracle is evaluated in more than float64 precision (the
    same code on `longdouble` or mpmath object arrays, `extended` choosing) and only its result
    is rounded. `M` is the float64 `diag(A)^{-1}` the port is given, exactly. The system is
    the variant's (`_variant_system`); a space that stops growing ends the list early.
    """
    a, b = _variant_system(variant, *_SYSTEMS[problem])
    x0 = None if x0_bytes is None else np.frombuffer(x0_bytes, dtype=np.float64)
    bk = mp_backend(40)
    cast = functools.partial(np.asarray, dtype=np.longdouble) if extended else bk.asarray
    with contextlib.nullcontext() if extended else bk.precision():
        a_x, b_x = cast(a), cast(b)
        m = None
        if variant.preconditioned:  # M = diag(A)^{-1}, applied entrywise
            m = functools.partial(np.multiply, cast(1.0 / np.diag(a)))
        iterates = krylov_optimal_iterates(a_x, b_x, None if x0 is None else cast(x0),
                                           b.shape[0], precond=m)
        residuals = tuple(float(np.sum((b_x - a_x @ x) ** 2) ** 0.5) for x in iterates)
        return tuple(bk.to_float64(x) for x in iterates[1:]), residuals


def _variant_system(variant: Variant, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """The variant's `(A, b)` before any exact-start adjustment (spread spectrum, `b = 0`)."""
    if variant.spread:
        a = spread_system(a)
    return a, (np.zeros_like(b) if variant.zero_rhs else b)


_SYSTEMS: dict[Problem, tuple[np.ndarray, np.ndarray]] = {}


def _matvec(a: np.ndarray):
    def matvec(v):
        return a @ np.asarray(v, dtype=np.float64)

    return matvec


def _arguments(variant: Variant, probe: np.ndarray, diag_inv: np.ndarray) -> dict:
    """Keyword arguments of the port call: omitted ones are absent, not None."""
    kwargs: dict = {}
    if variant.start == "zero":
        kwargs["x0"] = readonly(np.zeros_like(probe))
    elif variant.start in ("probe", "exact"):
        kwargs["x0"] = probe
    if variant.preconditioned:
        kwargs["precond"] = lambda r, d=diag_inv: d * np.asarray(r, dtype=np.float64)
    elif variant.start == "probe":
        kwargs["precond"] = None  # passed explicitly, as well as omitted above
    return kwargs


def _check_variant(
    ctx: CheckContext, variant: Variant, a: np.ndarray, b: np.ndarray, probe: np.ndarray
) -> None:
    """Iterates k = 1..n of one variant (until the reference's accuracy ends, see docstring)."""
    n = b.shape[0]
    a, b = _variant_system(variant, a, b)
    matvec = _matvec(a)
    diag_inv = 1.0 / np.diag(a)
    kwargs = _arguments(variant, probe, diag_inv)
    if variant.start == "exact":
        b = matvec(probe)  # the port's own r0 = b - matvec(x0) is then exactly 0 in float64
    if not variant.zero_rhs:
        kwargs["tol"] = 0.0  # the b = 0 variants keep the default tol: tol ||b|| = 0
    b_ro = readonly(b)
    if variant.start == "exact" or (variant.zero_rhs and variant.start == "omitted"):
        # r0 = 0: CG stops before its first iteration; every iterate is x0 (PROTOCOL s5)
        expected = probe if variant.start == "exact" else np.zeros(n)
        for k in sorted({1, 2, n}):
            ctx.begin(variant.check)
            value = ctx.port("cg", matvec, b_ro, maxiter=k, **kwargs)
            comparison = ctx.compare(
                variant.check,
                value,
                expected,
                tolerance=ctx.policy.solve_rtol(float(np.linalg.cond(a)), length=n, depth=1),
                what=f"iterate {k} = x0: the residual is already zero ({variant.what})",
            )
            if not comparison.passed:
                return
        return
    start = kwargs.get("x0")
    optimal, residuals = _optimal_iterates(
        ctx.problem, variant, None if variant.start in ("omitted", "zero") else probe.tobytes()
    )
    start_norm = 0.0 if start is None else float(np.linalg.norm(start))
    r0 = b if start is None else b - a @ start
    conditions = iterate_conditions(a, r0, diag_inv if variant.preconditioned else None,
                                    residuals)
    for k in range(1, len(optimal) + 1):
        if residuals[k - 1] <= _INFORMATIVE[ctx.dtype] * residuals[0]:
            break  # CG has (nearly) converged: later iterates are not determined by the data
        amplified, basis = next(conditions)
        if variant.spread:
            basis = 1.0  # see spread_system: the basis bound is not attained there
        if basis > 1.0 / _INFORMATIVE[ctx.dtype]:
            break  # span K_k known to fewer than half the digits: x_k is not determined
        ctx.begin(variant.check)
        value = ctx.port("cg", matvec, b_ro, maxiter=k, **kwargs)
        comparison = ctx.compare(
            variant.check,
            value,
            optimal[k - 1],
            tolerance=ctx.policy.solve_rtol(max(amplified, basis), length=n, depth=k),
            magnitude=start_norm,
            what=f"iterate {k} = A-optimal point of x0 + K_{k} (Grosse s4; {variant.what})",
        )
        if not comparison.passed:
            return  # one failing iterate per variant is enough evidence


def _check_converges(
    ctx: CheckContext, check: str, a: np.ndarray, b: np.ndarray, tol: float | None, **kwargs
) -> None:
    """`||b - A x|| <= tol ||b||` plus the rounding floor (tol None: the argument is omitted)."""
    n = b.shape[0]
    ctx.begin(check)
    if tol is not None:
        kwargs["tol"] = tol
    value = ctx.port("cg", _matvec(a), readonly(b), **kwargs)
    x = ctx.require_shape(check, value, (n,))
    if x is None:
        return
    tol = _DEFAULT_TOL if tol is None else tol
    residual = float(np.linalg.norm(b - a @ x))
    # the recurrence residual drifts from the true one by rounding of size u ||A|| ||x_j|| for
    # every iterate passed through, so the floor is taken at the larger of ||x|| and ||x0||
    start = float(np.linalg.norm(kwargs["x0"])) if "x0" in kwargs else 0.0
    floor = ctx.policy.solve_rtol(1.0, length=n, depth=1) * float(
        np.linalg.norm(a, 2) * max(float(np.linalg.norm(x)), start)
    )
    bound = tol * float(np.linalg.norm(b)) + floor
    ok = bool(np.isfinite(residual)) and residual <= bound
    start_name = "x0 = 0" if "x0" not in kwargs else "x0 with ||b - A x0|| = 100 ||b||"
    ctx.record(
        check,
        Status.PASS if ok else Status.FAIL,
        f"||b - A x|| = {residual:.2e} {'<=' if ok else '>'} tol ||b|| + rounding floor "
        f"= {bound:.2e} (PROTOCOL s5 stopping rule, relative to ||b||, tol={tol:g}"
        f"{'' if 'tol' in kwargs else ' by default'}; {start_name})",
        residual / max(float(np.linalg.norm(b)), 1e-300),
        bound / max(float(np.linalg.norm(b)), 1e-300),
    )


def check_cg(ctx: CheckContext) -> None:
    """CG over the input matrix (iterate by iterate), `maxiter=0`, and the stopping rule."""
    a, b = cg_system(ctx)
    _SYSTEMS.setdefault(ctx.problem, (a, b))
    n = b.shape[0]
    (x0,) = ctx.probe(n)
    for variant in VARIANTS:
        _check_variant(ctx, variant, a, b, x0)
    ctx.begin("cg_maxiter_zero")
    value = ctx.port("cg", _matvec(a), readonly(b), x0=x0, tol=0.0, maxiter=0)
    ctx.compare("cg_maxiter_zero", value, x0, tolerance=0.0, what="maxiter=0 returns x0")
    tol = _CONVERGE_TOL[ctx.dtype]
    _check_converges(ctx, "cg_converges", a, b, tol)
    # far start: ||r0|| = 100 ||b||, so a rule relative to ||r0|| stops 100x too early
    ax0 = a @ x0
    far = x0 * (100.0 * float(np.linalg.norm(b)) / max(float(np.linalg.norm(ax0)), 1e-300))
    diag_inv = 1.0 / np.diag(a)
    _check_converges(ctx, "cg_converges_x0", a, b, tol, x0=readonly(far),
                     precond=lambda r: diag_inv * np.asarray(r, dtype=np.float64))
    _check_converges(ctx, "cg_converges_defaults", a, b, None)
