"""Checks of conjugate gradient (PROTOCOL s5 `cg`; Grosse ch. 4 s4, seed 002).

The system is built from the problem: `A = F + mu I` (the true Fisher, PSD for every loss,
unlike G for `gaussian_logvar`) with `mu = ||F||_2 / 50` (so
`kappa(A) <= 51`: the iterates are well determined in float32 too) and `b = -grad h` (a probe
vector when the gradient vanishes). CG is checked *iterate by iterate* over the input matrix
{plain, Jacobi-preconditioned `M = diag(A)^{-1}`} x {zero, nonzero, exact `x0`} x {`b = 0`}
(`VARIANTS`; issue 14), for k = 1..n (1..6 when preconditioned: `Variant.iterates`) until
the reference's own accuracy ends (below). Iterates 1..`MAX_ITERATES` (6) of the first three
variants are compared with CG's defining property -- the k-th iterate is the A-norm-optimal point of
`x0 + K_k(M A, M r0)`, computed directly by `ngd_ref.dense.krylov_optimal_iterate` (Krylov
basis + Galerkin solve, no CG recurrence) -- and the rest with the reference's CG
recurrence in the same 40-digit arithmetic (so a restart every 10 iterations fails):

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

Iterate tolerance: `solve_rtol(dtype, length=n, depth=k, condition=kappa(A) ||r_0||/||r_{k-1}||)`
relative to `max(||x_k||, ||x_0||)` (the iterate is `x_0` plus accumulated corrections, so
its rounding scales with both: with `b = 0` the iterates tend to 0 from a nonzero `x_0`),
with `r_j` the residuals of the exact iterates. Iteration k builds its new direction from
`r_{k-1}`, so rounding errors of size `u ||r_0||` are amplified by `||r_0||/||r_{k-1}||`
(finite-precision CG is exact CG on a nearby problem, Greenbaum 1989).
Once `||r_{k-1}|| <= sqrt(u) ||r_0||` the remaining iterates are not determined by the data in
precision u and are not compared (the convergence check covers them): this is where the
reference's own accuracy ends, and no exact iterate is built beyond it (for any dtype: the
cutoff of float64 is used). The exact iterates
are computed in 40-digit arithmetic, because the oracle's power-basis Krylov construction
loses digits near convergence in float64.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import cg_solve, krylov_optimal_iterate, mp_backend
from verify._report import Status
from verify._tolerance import solve_rtol, unit_roundoff
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
        krylov: iterates 1..`MAX_ITERATES` from the Krylov oracle (else the recurrence).
        spread: use `spread_system(A)`, whose n distinct eigenvalues keep CG informative for
            up to n iterations (A's spectrum has at most `rank(F) + 1` distinct values).
    """

    check: str
    preconditioned: bool
    start: str
    zero_rhs: bool
    what: str
    krylov: bool = False
    spread: bool = False

    def iterates(self, n: int) -> int:
        """How many iterates are compared at most: n, or `MAX_ITERATES` when preconditioned.

        With the Jacobi preconditioner the residual-ratio model of the module docstring
        holds only for the first few iterates: later the conditioning of the Krylov basis of
        `M^{1/2} A M^{1/2}` governs a correct port's rounding (a correct float64 port is
        off by ~1e-8 at k = 9-11 on the quick zoo, up to 12x the residual-ratio tolerance).
        Preconditioned iterates beyond `MAX_ITERATES` are therefore not compared (not
        checked) until the tolerance policy models that term.
        """
        return min(n, MAX_ITERATES) if self.preconditioned else n


VARIANTS = (
    Variant("cg_iterates", False, "omitted", False, "x0 and precond omitted", krylov=True),
    Variant("cg_iterates_preconditioned", True, "zero", False, "Jacobi preconditioner, x0 = 0",
            krylov=True),
    Variant("cg_iterates_x0", False, "probe", False, "nonzero x0", krylov=True),
    Variant("cg_iterates_preconditioned_x0", True, "probe", False, "Jacobi, nonzero x0"),
    Variant("cg_iterates_exact_x0", False, "exact", False, "x0 = A^-1 b exactly"),
    Variant("cg_iterates_preconditioned_exact_x0", True, "exact", False, "Jacobi, x0 exact"),
    Variant("cg_iterates_zero_b", False, "omitted", True, "b = 0, x0 = 0"),
    Variant("cg_iterates_zero_b_x0", False, "probe", True, "b = 0, nonzero x0, default tol: "
            "tol ||b|| = 0 never stops early"),
    Variant("cg_iterates_spread", False, "omitted", False, "evenly spread spectrum (spread_system)",
            spread=True),
)


def spread_system(a: np.ndarray) -> np.ndarray:
    """`mu diag(1, ..., SPREAD) + F / 50` for `A = F + mu I` (`mu = ||A||_2 / 51`, `cg_system`).

    `A` has at most `rank(F) + 1 <= B C + 1` distinct eigenvalues, so exact CG ends within
    that many iterations and iterates past ~10 are rarely informative. This system has n
    distinct eigenvalues spread evenly over `mu [1, SPREAD]` (plus the problem's `F`, scaled
    to norm `mu`): condition <= `SPREAD + 1`, no isolated extreme eigenvalues (so little loss
    of orthogonality), and CG needs ~16 iterations to reach `sqrt(u_32)` -- a restart or
    drift after iteration 10 is visible in both precisions.
    """
    n = a.shape[0]
    mu = float(np.linalg.norm(a, 2)) / 51.0
    return mu * np.diag(np.linspace(1.0, _SPREAD, n)) + (a - mu * np.eye(n)) / 50.0


@functools.lru_cache(maxsize=1024)
def _reference_iterates(
    problem: Problem, variant: Variant, x0_bytes: bytes | None
) -> tuple[tuple[np.ndarray, ...], tuple[float, ...]]:
    """Exact iterates 1..K and residual norms 0..K, as float64 (cached).

    Computed in 40 digits: for `Variant.krylov` variants iterates 1..`MAX_ITERATES` are the
    Krylov-optimal points (`krylov_optimal_iterate`, the defining property); the others, and
    every later iterate, come from the reference CG recurrence (`ngd_ref.dense.cg_solve`,
    itself tested against the Krylov oracle in tests/test_cg.py) in the same arithmetic, where
    its loss of orthogonality is far below any float64 tolerance. K stops at
    `Variant.iterates(n)`, or as soon as `||r_K|| <= sqrt(u_64) ||r_0||` (no dtype compares
    beyond that point); building no iterate past it also keeps the Krylov oracle off the
    degenerate (already converged) spaces it cannot handle. Residual norms are evaluated in
    float64 from the rounded iterates (accurate far below the `sqrt(u)` cutoff they decide).
    """
    a, b = _SYSTEMS[problem]
    if variant.spread:
        a = spread_system(a)
    if variant.zero_rhs:
        b = np.zeros_like(b)
    bk = mp_backend(40)
    n = b.shape[0]
    x0 = np.zeros(n) if x0_bytes is None else np.frombuffer(x0_bytes, dtype=np.float64)
    cutoff = min(_INFORMATIVE.values())
    residuals = [float(np.linalg.norm(b - a @ x0))]
    iterates: list[np.ndarray] = []
    with bk.precision():
        a_mp, b_mp, x0_mp = bk.asarray(a), bk.asarray(b), bk.asarray(x0)
        m_mp = bk.asarray(np.diag(1.0 / np.diag(a))) if variant.preconditioned else None
        recurrence = None
        for k in range(1, variant.iterates(n) + 1):
            if not residuals[-1] > cutoff * residuals[0]:
                break
            if variant.krylov and k <= MAX_ITERATES:
                x = krylov_optimal_iterate(a_mp, b_mp, x0_mp, k, precond=m_mp)
            else:
                if recurrence is None:  # run only as far as the cutoff (atol), not to n
                    recurrence = cg_solve(
                        a_mp, b_mp, x0_mp, tol=0.0, atol=cutoff * residuals[0],
                        maxiter=variant.iterates(n), precond=m_mp, keep_iterates=True,
                    ).iterates
                if k >= len(recurrence):
                    break  # the recurrence met an exactly zero residual
                x = recurrence[k]
            iterates.append(bk.to_float64(x))
            residuals.append(float(np.linalg.norm(b - a @ iterates[-1])))
    return tuple(iterates), tuple(residuals)


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
    if variant.spread:
        a = spread_system(a)
    matvec = _matvec(a)
    kwargs = _arguments(variant, probe, 1.0 / np.diag(a))
    if variant.zero_rhs:
        b = np.zeros_like(b)
    if variant.start == "exact":
        b = matvec(probe)  # the port's own r0 = b - matvec(x0) is then exactly 0 in float64
    if not variant.zero_rhs:
        kwargs["tol"] = 0.0  # the b = 0 variant keeps the default tol: tol ||b|| = 0
    b_ro = readonly(b)
    kappa = float(np.linalg.cond(a))
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
                tolerance=solve_rtol(ctx.dtype, length=n, depth=1, condition=kappa),
                what=f"iterate {k} = x0: the residual is already zero ({variant.what})",
            )
            if not comparison.passed:
                return
        return
    optimal, residuals = _reference_iterates(
        ctx.problem, variant, None if variant.start in ("omitted", "zero") else probe.tobytes()
    )
    start_norm = float(np.linalg.norm(kwargs["x0"])) if "x0" in kwargs else 0.0
    for k in range(1, len(optimal) + 1):
        if residuals[k - 1] <= _INFORMATIVE[ctx.dtype] * residuals[0]:
            break  # CG has (nearly) converged: later iterates are not determined by the data
        ctx.begin(variant.check)
        value = ctx.port("cg", matvec, b_ro, maxiter=k, **kwargs)
        growth = residuals[0] / residuals[k - 1]
        tolerance = solve_rtol(ctx.dtype, length=n, depth=k, condition=kappa * growth)
        source = (
            "A-optimal point of x0 + K_k (Grosse s4)"
            if variant.krylov and k <= MAX_ITERATES
            else "the exact CG recurrence (40 digits)"
        )
        comparison = ctx.compare(
            variant.check,
            value,
            optimal[k - 1],
            tolerance=tolerance,
            magnitude=start_norm,
            what=f"iterate {k} = {source}; {variant.what}",
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
    floor = solve_rtol(ctx.dtype, length=n, depth=1, condition=1.0) * float(
        np.linalg.norm(a, 2) * max(float(np.linalg.norm(x)), start)
    )
    bound = tol * float(np.linalg.norm(b)) + floor
    ok = bool(np.isfinite(residual)) and residual <= bound
    start = "x0 = 0" if "x0" not in kwargs else "x0 with ||b - A x0|| = 100 ||b||"
    ctx.record(
        check,
        Status.PASS if ok else Status.FAIL,
        f"||b - A x|| = {residual:.2e} {'<=' if ok else '>'} tol ||b|| + rounding floor "
        f"= {bound:.2e} (PROTOCOL s5 stopping rule, relative to ||b||, tol={tol:g}"
        f"{'' if 'tol' in kwargs else ' by default'}; {start})",
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
