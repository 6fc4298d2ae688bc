"""Jit-able (preconditioned) conjugate gradient on pytrees, with an honest convergence flag.

The JAX twin of `ngd_ref.cg._dense` (same recurrences, same stopping rule; see there for the
algorithm and seed 002, Grosse ch. 4 s4). Written with `jax.lax.while_loop`, so it runs
inside `jit`, `vmap` (e.g. over `maxiter` to get every iterate) and `shard_map` bodies.

Differences from `jax.scipy.sparse.linalg.cg`, which returns `info=None` and stops on the
*recurrence* residual only:

* the result is a `CGResult` with the iteration count, the residual-norm history, a
  `converged` flag and a `status` (`CGStatus`: converged, maxiter reached, or a
  non-positive curvature `p^T A p <= 0` detected -- A is not positive definite);
* convergence is confirmed on the *true* residual `b - A x` (one extra product when the
  recurrence claims convergence); when the recurrence has drifted, CG restarts from the
  current iterate with the true residual (residual replacement) instead of returning an
  unconverged answer flagged as converged;
* relative and absolute tolerances: stop when `||b - A x|| <= max(tol ||b||, atol)`;
* `maxiter` may be a traced value (the history length `history` is then static), and with
  `tol = atol = 0` exactly `maxiter` iterations are taken: the k-th CG iterate, which
  `ngd_ref.dense.krylov_optimal_iterate` computes independently.

`cg_iterates` returns every iterate `x_0, ..., x_k` of one fixed-length run (`lax.scan`, the
same recurrence and operation order as `cg_solve`), the twin of `ngd_ref.dense.cg_iterates`:
one small program instead of k solves when checking CG iterate by iterate.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["CGResult", "CGStatus", "cg", "cg_iterates", "cg_solve"]

Params = Any
Operator = Callable[[Params], Params]


class CGStatus(enum.IntEnum):
    """Why CG stopped (the `status` field of `CGResult`)."""

    CONVERGED = 0
    MAX_ITERATIONS = 1
    NOT_POSITIVE_DEFINITE = 2

    @property
    def message(self) -> str:
        """A one-line explanation."""
        return {
            CGStatus.CONVERGED: "the true residual met max(tol ||b||, atol)",
            CGStatus.MAX_ITERATIONS: "maxiter iterations taken without meeting the tolerance",
            CGStatus.NOT_POSITIVE_DEFINITE: "p^T A p <= 0: the operator is not positive definite "
                                            "(add damping, or use the GGN instead of the Hessian)",
        }[self]


class CGResult(NamedTuple):
    """Outcome of `cg_solve` (a pytree: it can be returned from jit and vmapped).

    Attributes:
        x: the last iterate (a pytree like `b`).
        iterations: number of CG iterations taken (int32 scalar).
        converged: whether the true residual met the tolerance (bool scalar).
        status: a `CGStatus` value (int32 scalar).
        residual_norms: `(history,)` recurrence-residual norms `||r_0||, ||r_1||, ...`
            (after a residual replacement, the recomputed true one); NaN after the last.
        residual_norm: `||b - A x||`, recomputed at the end.
    """

    x: Params
    iterations: jax.Array
    converged: jax.Array
    status: jax.Array
    residual_norms: jax.Array
    residual_norm: jax.Array


def tree_vdot(a: Params, b: Params) -> jax.Array:
    """`<a, b>` summed over the leaves of two pytrees of the same structure."""
    products = [jnp.vdot(u, v)
                for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    total = products[0]  # a left fold, as `sum` (0 + p is p exactly)
    for product in products[1:]:
        total = total + product
    return total


def _exponent(tree: Params) -> jax.Array:
    """`e` with `2^e` near the largest `|u_i|` over the leaves (0 where that is 0 or not finite).

    The twin of `ngd_ref.cg._dense._exponent` (int32 scalar; empty leaves count as 0).
    """
    largest = jnp.zeros(())
    for leaf in jax.tree.leaves(tree):
        largest = jnp.maximum(largest, jnp.max(jnp.abs(leaf), initial=0))
    usable = (largest > 0) & jnp.isfinite(largest)
    return jnp.where(usable, jnp.frexp(jnp.where(usable, largest, 1))[1], 0).astype(jnp.int32)


def _scaled_vdot(a: Params, b: Params) -> tuple[jax.Array, jax.Array]:
    """`(a 2^-e) . (b 2^-f)` and `e + f`: `<a, b>` without underflow.

    As the dense CG's `_scaled_dot`: run past convergence with `tol = 0`, `r^T z` and
    `p^T A p` fall below the smallest normal float once `|r| < ~1e-154` (float64), and an
    underflowed `p^T A p = 0` read as "not positive definite". Scaling by powers of two is
    exact, so `alpha` and `beta` from the scaled products are bit-identical to the unscaled
    ones wherever those did not underflow.
    """
    e, f = _exponent(a), _exponent(b)
    scaled_a = jax.tree.map(lambda u: jnp.ldexp(u, -e), a)
    scaled_b = jax.tree.map(lambda u: jnp.ldexp(u, -f), b)
    return tree_vdot(scaled_a, scaled_b), e + f


def _ratio(numerator: tuple[jax.Array, jax.Array],
           denominator: tuple[jax.Array, jax.Array]) -> jax.Array:
    """`(a 2^e) / (b 2^f)` for `numerator = (a, e)`, `denominator = (b, f)` (`_scaled_vdot`)."""
    return jnp.ldexp(numerator[0] / denominator[0], numerator[1] - denominator[1])


def _axpy(alpha: jax.Array, x: Params, y: Params) -> Params:
    return jax.tree.map(lambda u, v: v + alpha.astype(v.dtype) * u, x, y)


def _sub(a: Params, b: Params) -> Params:
    return jax.tree.map(jnp.subtract, a, b)


def _select(flag: jax.Array, a: Params, b: Params) -> Params:
    return jax.tree.map(lambda u, v: jnp.where(flag, u, v), a, b)


def _direction(apply_m: Operator, r: Params, p: Params, rho, restart):
    """The next search direction of the PCG recurrence (Grosse ch. 4 s4, seed 002).

    `z = M r`, `rho' = r^T z`, `p' = z` on a (re)start else `z + (rho'/rho) p`. `rho` is
    carried as `_scaled_vdot`'s `(value, exponent)` pair (no underflow after convergence).

    Returns:
        `(p', rho')`.
    """
    z = apply_m(r)
    rho_new = _scaled_vdot(r, z)
    one = (jnp.ones_like(rho_new[0]), jnp.zeros_like(rho_new[1]))
    return _select(restart, z, _axpy(_ratio(rho_new, _select(restart, one, rho)), p, z)), rho_new


def _advance(x: Params, r: Params, p: Params, ap: Params, rho):
    """The step along `p` given `ap = A p`: `alpha = rho / p^T A p` (0 when `p^T A p <= 0`).

    Returns:
        `(x + alpha p, r - alpha A p, p^T A p > 0)` (the curvature's dot product scaled).
    """
    curvature = _scaled_vdot(p, ap)
    positive = curvature[0] > 0
    one = (jnp.ones_like(curvature[0]), jnp.zeros_like(curvature[1]))
    alpha = jnp.where(positive, _ratio(rho, _select(positive, curvature, one)), 0)
    return _axpy(alpha, p, x), _axpy(-alpha, ap, r), positive


def cg_solve(
    matvec: Operator,
    b: Params,
    x0: Params | None = None,
    *,
    tol: float = 1e-10,
    atol: float = 0.0,
    maxiter: int | jax.Array | None = None,
    precond: Operator | None = None,
    history: int | None = None,
) -> CGResult:
    """Preconditioned CG for `A x = b`, `A` symmetric positive definite, on pytrees.

    The loop applies `matvec` in one place: each pass computes either the true residual
    `b - A x` (to confirm the recurrence's claim of convergence, and for the final
    `residual_norm`) or the product with the next search direction. With `x0` omitted the
    first residual is `b` itself (`A 0 = 0`), so the program holds one copy of the operator,
    not four (the start, the step, the confirmation and the end): a quarter of the code to
    trace and compile when the operator is a network's curvature product. The operations,
    and so the iterates, are those of the straight-line recurrence (`ngd_ref.cg._dense`).

    Args:
        matvec: `v -> A v` (e.g. a `curvature_operator` plus damping).
        b: right-hand side, any pytree of float arrays.
        x0: starting point like `b` (default zeros).
        tol: relative tolerance: stop when `||b - A x|| <= max(tol ||b||, atol)` (may be a
            traced scalar).
        atol: absolute tolerance (may be a traced scalar).
        maxiter: most iterations (default `10 n`, n the size of b); may be a traced int.
        precond: `r -> M r` with `M ~ A^{-1}` SPD (default identity).
        history: length of `residual_norms` (static); default `maxiter + 1`, required when
            `maxiter` is traced.

    Returns:
        A `CGResult`.
    """
    flat_b, _ = ravel_pytree(b)
    n = flat_b.shape[0]
    if maxiter is None:
        maxiter = 10 * n
    if history is None:
        if not isinstance(maxiter, int):
            raise ValueError("history: required (a static int) when maxiter is a traced value")
        history = maxiter + 1
    if isinstance(maxiter, int) and maxiter < 0:
        raise ValueError(f"maxiter: expected a non-negative int, got {maxiter}")
    if any(isinstance(t, int | float) and not t >= 0 for t in (tol, atol)):
        raise ValueError(f"tol/atol: expected non-negative numbers, got tol={tol!r}, atol={atol!r}")
    dtype = flat_b.dtype
    apply_m = precond if precond is not None else (lambda r: r)
    r0 = b if x0 is None else _sub(b, matvec(x0))  # b - A 0 is b exactly
    x0 = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
    bb = tree_vdot(b, b)
    threshold_sq = jnp.maximum(jnp.asarray(tol, dtype) ** 2 * bb, jnp.asarray(atol, dtype) ** 2)

    def body(s: _Pass) -> _Pass:
        rr = tree_vdot(s.r, s.r)
        small = rr <= threshold_sq
        norms = jnp.where(s.indefinite, s.norms, s.norms.at[s.k].set(jnp.sqrt(rr)))
        converged = small & s.r_true
        stop = converged | (s.k >= maxiter) | s.indefinite
        # a pass either replaces r by b - A x (a recurrence residual that claims convergence;
        # the end, for `residual_norm` only) or takes one CG step
        replace = ~s.r_true & ~s.indefinite & small
        final = stop & ~replace
        step = ~stop & ~replace
        p, rho = jax.lax.cond(step, lambda: _direction(apply_m, s.r, s.p, s.rho, s.restart),
                              lambda: (s.p, s.rho))
        need = replace | (final & ~s.r_true)
        u = _select(step, p, s.x)
        au = jax.lax.cond(need | step, matvec, lambda u: u, u)
        x, r, positive = jax.lax.cond(step, lambda: _advance(s.x, s.r, p, au, rho),
                                      lambda: (s.x, s.r, jnp.asarray(True)))
        r = _select(replace, _sub(b, au), r)
        end_r = _select(s.r_true, s.r, _sub(b, au))
        status = jnp.where(converged, CGStatus.CONVERGED,
                           jnp.where(s.indefinite, CGStatus.NOT_POSITIVE_DEFINITE,
                                     CGStatus.MAX_ITERATIONS)).astype(jnp.int32)
        return _Pass(k=s.k + step.astype(jnp.int32), x=x, r=r, p=p, rho=rho,
                     restart=jnp.where(step, False, s.restart | replace),
                     r_true=replace | (s.r_true & ~step),
                     indefinite=step & ~positive, done=final, status=status, norms=norms,
                     residual_norm=jnp.where(final, jnp.sqrt(tree_vdot(end_r, end_r)),
                                             s.residual_norm))

    zero = (jnp.zeros((), dtype), jnp.zeros((), jnp.int32))  # rho as (value, exponent)
    false = jnp.asarray(False)
    state = _Pass(k=jnp.asarray(0, jnp.int32), x=x0, r=r0, p=r0, rho=zero,
                  restart=jnp.asarray(True), r_true=jnp.asarray(True), indefinite=false, done=false,
                  status=jnp.asarray(CGStatus.MAX_ITERATIONS, jnp.int32),
                  norms=jnp.full((history,), jnp.nan, dtype),
                  residual_norm=jnp.asarray(jnp.nan, dtype))
    s = jax.lax.while_loop(lambda s: ~s.done, body, state)
    return CGResult(s.x, s.k, s.status == CGStatus.CONVERGED, s.status, s.norms, s.residual_norm)


class _Pass(NamedTuple):
    """The state of `cg_solve`'s loop between passes.

    Attributes:
        r_true: `r` is `b - A x` computed from the product (not the recurrence's update).
        indefinite: the last step found `p^T A p <= 0`.
        done: the loop ends (`status` and `residual_norm` are set).
    """

    k: jax.Array
    x: Params
    r: Params
    p: Params
    rho: tuple[jax.Array, jax.Array]
    restart: jax.Array
    r_true: jax.Array
    indefinite: jax.Array
    done: jax.Array
    status: jax.Array
    norms: jax.Array
    residual_norm: jax.Array


def cg(matvec: Operator, b: Params, x0: Params | None = None, tol: float = 1e-10,
       maxiter: int | None = None, precond: Operator | None = None) -> Params:
    """`x` from `cg_solve`, with the signature of PROTOCOL section 5's `cg`."""
    return cg_solve(matvec, b, x0, tol=tol, maxiter=maxiter, precond=precond).x


def cg_iterates(matvec: Operator, b: Params, x0: Params | None = None, *, maxiter: int,
                precond: Operator | None = None) -> Params:
    """Every CG iterate `x_0, x_1, ..., x_maxiter`, stacked on a new leading axis.

    One `lax.scan` of `maxiter` steps of the recurrence of `cg_solve` (Grosse ch. 4 s4, seed
    002), with the same operations in the same order, so `x_k` equals
    `cg_solve(matvec, b, x0, tol=0, maxiter=k, precond=precond).x` -- the A-norm-optimal
    point of `x0 + K_k(M A, M r_0)` in exact arithmetic (`ngd_ref.dense.krylov_optimal_iterate`).
    After a step with `p^T A p <= 0` (exact convergence, `r = 0`, or an operator that is not
    positive definite) the iterate is frozen, as `cg_solve` stops there. (`cg_solve` with
    `tol=0` restarts when the recurrence residual is exactly 0 but the true one is not; this
    function does not.)

    Args:
        matvec: `v -> A v`, `A` symmetric positive definite.
        b: right-hand side, any pytree of float arrays.
        x0: starting point like `b` (default zeros).
        maxiter: number of iterations k, a static non-negative int.
        precond: `r -> M r` with `M ~ A^{-1}` SPD (default identity).

    Returns:
        A pytree like `b` whose leaves have a leading axis of length `maxiter + 1`.
    """
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter: expected a non-negative int, got {maxiter!r}")
    apply_m = precond if precond is not None else (lambda r: r)
    x0 = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
    r0 = _sub(b, matvec(x0))
    dtype = ravel_pytree(b)[0].dtype

    def step(state, _):
        x, r, p, rho, first, done = state
        p_new, rho_new = _direction(apply_m, r, p, rho, first)
        x_new, r_new, positive = _advance(x, r, p_new, matvec(p_new), rho_new)
        done = done | ~positive
        x, r, p, rho = _select(done, (x, r, p, rho), (x_new, r_new, p_new, rho_new))
        return (x, r, p, rho, jnp.asarray(False), done), x

    state = (x0, r0, r0, (jnp.zeros((), dtype), jnp.zeros((), jnp.int32)), jnp.asarray(True),
             jnp.asarray(False))
    _, xs = jax.lax.scan(step, state, None, length=maxiter)
    return jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), x0, xs)
