"""Hessian-free optimization in JAX: damped Gauss-Newton / natural-gradient steps by CG.

The JAX twin of `ngd_ref.hf._dense` (same names, arguments and meanings, with
`(objective, params, batch)` for the problem: `hf_quadratic_model`, `reduction_ratio`,
`levenberg_marquardt`), plus the optimizer (Grosse ch. 4 s4, seed 002; Martens 2010):

* `damped_update`: `d = -(C + lambda I)^{-1} grad h` (Grosse eq. (13); `C = G` gives the damped
  Gauss-Newton step, `C = F` the damped natural-gradient step of seeds 000/001) by CG on the
  curvature operator, linearized once at `params` and reused by every CG iteration.
* `hessian_free`: an optax-style `(init, update)` pair. Each update solves eq. (13) by CG
  (warm-started from a decayed previous step, Martens 2010 s4.5), evaluates the reduction
  ratio `rho` of eq. (14) against the damped model of eq. (12), accepts the step only if the
  loss decreased, and adapts `lambda` by the Levenberg-Marquardt rule of s4.1.

Everything runs under one `jit`; with `mesh=` the batch is sharded and every product,
gradient and loss is all-reduced, so CG runs replicated on every device (`ngd_ref._sharding`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from ngd_ref._sharding import allsum
from ngd_ref._validation import check_damping
from ngd_ref.cg._jax import CGResult, cg_solve, tree_vdot
from ngd_ref.curvature._dense import Curvature
from ngd_ref.curvature._jax import (
    Batch,
    Objective,
    curvature_vp,
    gradient,
    local_loss,
    local_operator,
    loss_value,
    run_objective,
)

__all__ = [
    "HFInfo",
    "HFState",
    "HessianFree",
    "damped_update",
    "hessian_free",
    "hf_quadratic_model",
    "levenberg_marquardt",
    "reduction_ratio",
]

Params = Any


def _add_scaled(v: Params, alpha: Any, w: Params) -> Params:
    return jax.tree.map(lambda a, b: a + jnp.asarray(alpha, a.dtype) * b, v, w)


def _local_damped(objective: Objective, curvature: Curvature, cg_options: dict[str, Any],
                  axis, params, damping, x0, inputs, targets, weights):
    """Gradient, damped operator and the CG solve of `(C + lambda I) d = -g` on one shard."""
    loss, g = jax.value_and_grad(local_loss, argnums=1)(objective, params, inputs, targets,
                                                         weights)
    loss, g = allsum((loss, g), axis)
    op = local_operator(objective, curvature, axis, params, inputs, targets, weights)

    def damped(v):
        return _add_scaled(op(v), damping, v)

    neg_g = jax.tree.map(jnp.negative, g)
    result = cg_solve(damped, neg_g, x0, **cg_options)
    return loss, g, damped, result


@functools.partial(jax.jit, static_argnames=("objective", "curvature", "tol", "atol", "maxiter",
                                             "mesh"))
def damped_update(objective: Objective, params: Params, batch: Batch, damping: Any,
                  curvature: Curvature | str = Curvature.GGN.value, *, x0: Params | None = None,
                  tol: float = 1e-10, atol: float = 0.0, maxiter: int | None = None,
                  mesh: Mesh | None = None) -> tuple[Params, CGResult]:
    """`d = -(C + lambda I)^{-1} grad h` by CG, the linearization reused (Grosse eq. (13)).

    Args:
        objective: model, loss and reduction.
        params: where the step starts.
        batch: the batch (sharded over `mesh` when given).
        damping: `lambda >= 0` (a traced scalar is fine).
        curvature: `ggn` (damped Gauss-Newton), `fisher` (damped natural gradient),
            `empirical_fisher`, or `hessian` (CG then requires `H + lambda I` to be PD and
            reports `NOT_POSITIVE_DEFINITE` otherwise).
        x0: CG's starting point (default 0).
        tol: CG's relative tolerance (see `cg_solve`).
        atol: CG's absolute tolerance.
        maxiter: CG's iteration cap (default 10 n).
        mesh: shard the batch over this mesh.

    Returns:
        `(d, cg_result)`; check `cg_result.converged`.
    """
    check_damping(damping)
    kind = Curvature(curvature)
    x0 = jax.tree.map(jnp.zeros_like, params) if x0 is None else x0
    options = {"tol": tol, "atol": atol, "maxiter": maxiter}

    def local(axis, params, damping, x0, inputs, targets, weights):
        *_, result = _local_damped(objective, kind, options, axis, params, damping, x0, inputs,
                                   targets, weights)
        return result

    result = run_objective(objective, mesh, local, (params, damping, x0), batch)
    return result.x, result


def _model_value(gradient: Params, step: Params, curvature_step: Params,
                 damping: Any) -> jax.Array:
    """`g^T d + 1/2 d^T (C d) + lambda/2 ||d||^2` from its pieces (`C d` undamped)."""
    quadratic = tree_vdot(step, curvature_step) + damping * tree_vdot(step, step)
    return tree_vdot(gradient, step) + 0.5 * quadratic


def _ratio(loss_before: Any, loss_after: Any, model_value: Any) -> jax.Array:
    """`(h(theta) - h(theta + d)) / -Q_lambda(d)`; NaN when the model predicts no change."""
    predicted = -jnp.asarray(model_value)
    return jnp.where(predicted != 0, (loss_before - loss_after) / jnp.where(predicted != 0,
                                                                            predicted, 1), jnp.nan)


def hf_quadratic_model(objective: Objective, params: Params, batch: Batch, step: Params, *,
                       damping: Any = 0.0, curvature: Curvature | str = Curvature.GGN,
                       mesh: Mesh | None = None) -> jax.Array:
    """`Q_lambda(d) - Q_lambda(0) = grad h^T d + 1/2 d^T (C + lambda I) d` (Grosse eq. (12)).

    The twin of `ngd_ref.dense.hf_quadratic_model` (same arguments, with the
    `(objective, params, batch)` of the JAX twin in place of the problem): `grad h` and
    `C d` are the exact gradient and curvature-vector product at `params`.

    Args:
        objective: the network and loss.
        params: the parameters theta (a pytree).
        batch: the data.
        step: `d`, shaped like `params`.
        damping: `lambda >= 0`.
        curvature: which matrix plays `C` (`ggn` as in eq. (12); `hessian` gives eq. (5)).
        mesh: optional device mesh to shard the batch over.
    """
    check_damping(damping)
    g = gradient(objective, params, batch, mesh=mesh)
    c_step = curvature_vp(objective, params, batch, step, Curvature(curvature), mesh=mesh)
    return _model_value(g, step, c_step, damping)


def reduction_ratio(objective: Objective, params: Params, batch: Batch, step: Params, *,
                    damping: Any = 0.0, curvature: Curvature | str = Curvature.GGN,
                    mesh: Mesh | None = None) -> jax.Array:
    """`rho = (h(theta) - h(theta + d)) / (Q_lambda(0) - Q_lambda(d))` (Grosse eq. (14)).

    The twin of `ngd_ref.dense.reduction_ratio` (same arguments and meaning); NaN, as
    there, when the model predicts no change (`d = 0`).
    """
    model = hf_quadratic_model(objective, params, batch, step, damping=damping,
                               curvature=curvature, mesh=mesh)
    moved = jax.tree.map(jnp.add, params, step)
    return _ratio(loss_value(objective, params, batch, mesh=mesh),
                  loss_value(objective, moved, batch, mesh=mesh), model)


def levenberg_marquardt(damping: Any, rho: Any, *, low: float = 0.25, high: float = 0.75,
                        increase: float = 1.5, decrease: float = 2.0 / 3.0) -> jax.Array:
    """Damping after one step (Grosse s4.1), jit-able: `rho < 1/4 -> * 3/2`, `> 3/4 -> * 2/3`.

    A non-finite `rho` counts as a failed step (increase), as in `ngd_ref.hf._dense`.
    """
    if not (low <= high and increase > 1 and 0 < decrease < 1):
        raise ValueError("low/high/increase/decrease: need low <= high, increase > 1 and "
                         f"0 < decrease < 1; got {low}, {high}, {increase}, {decrease}")
    damping = jnp.asarray(damping)
    failed = ~jnp.isfinite(rho) | (rho < low)
    return jnp.where(failed, damping * increase, jnp.where(rho > high, damping * decrease, damping))


class HFState(NamedTuple):
    """State of the Hessian-free optimizer.

    Attributes:
        damping: current `lambda`.
        previous: the last CG solution, the warm start of the next solve.
        step: number of updates so far (as `KfacState.step`).
    """

    damping: jax.Array
    previous: Params
    step: jax.Array


class HFInfo(NamedTuple):
    """What one update did (all scalars).

    Attributes:
        loss: `h` before the step.
        new_loss: `h(theta + d)` on the same batch.
        rho: the reduction ratio of eq. (14).
        damping: the damping the step was computed with.
        accepted: whether the parameters moved (the loss decreased).
        cg_iterations: CG iterations used.
        cg_converged: whether CG met its tolerance.
    """

    loss: jax.Array
    new_loss: jax.Array
    rho: jax.Array
    damping: jax.Array
    accepted: jax.Array
    cg_iterations: jax.Array
    cg_converged: jax.Array


class HessianFree(NamedTuple):
    """An optax-style pair of pure functions.

    Attributes:
        init: `params -> HFState`.
        update: `(params, state, batch) -> (params, state, HFInfo)`, jitted.
    """

    init: Callable[[Params], HFState]
    update: Callable[[Params, HFState, Batch], tuple[Params, HFState, HFInfo]]


def hessian_free(objective: Objective, *, damping: float = 1.0,
                 curvature: Curvature | str = Curvature.GGN, maxiter: int = 50, tol: float = 1e-4,
                 warm_start: float = 0.95, mesh: Mesh | None = None) -> HessianFree:
    """Build the Hessian-free optimizer (Grosse ch. 4 s4; Martens 2010).

    Per update on a batch: `g = grad h`; `d` from CG on `(C + lambda I) d = -g` (at most
    `maxiter` iterations, relative tolerance `tol`, started from `warm_start * previous d`);
    `rho` by eq. (14) against `Q_lambda` of eq. (12); the step is taken iff
    `h(theta + d) < h(theta)`; `lambda` follows the Levenberg-Marquardt rule.

    Args:
        objective: model, loss and reduction.
        damping: initial `lambda > 0`.
        curvature: `ggn` (default; PSD for convex losses) or `fisher`.
        maxiter: CG iterations per update.
        tol: CG relative tolerance (a loose one is normal for HF).
        warm_start: decay of the previous solution used as CG's `x0` (0 for a cold start).
        mesh: shard each batch over this mesh.

    Returns:
        A `HessianFree` `(init, update)` pair.
    """
    check_damping(damping, positive=True)
    kind = Curvature(curvature)
    if kind not in (Curvature.GGN, Curvature.FISHER):
        raise ValueError(
            f"curvature: HF needs a PSD curvature, 'ggn' or 'fisher'; got {kind.value!r}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ValueError(f"maxiter: expected a positive int, got {maxiter!r}")
    if not 0 <= warm_start <= 1:
        raise ValueError(f"warm_start: expected a number in [0, 1], got {warm_start!r}")
    options = {"tol": tol, "maxiter": maxiter}

    def local(axis, params, damping, x0, inputs, targets, weights):
        loss, g, damped, result = _local_damped(objective, kind, options, axis, params, damping,
                                                x0, inputs, targets, weights)
        d = result.x
        model = tree_vdot(g, d) + 0.5 * tree_vdot(d, damped(d))  # Q_lambda(d), eq. (12)
        stepped = _add_scaled(params, 1.0, d)
        new_loss = allsum(local_loss(objective, stepped, inputs, targets, weights), axis)
        return loss, new_loss, model, d, result

    def init(params: Params) -> HFState:
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(leaves[0]) if leaves else jnp.float32
        return HFState(jnp.asarray(damping, dtype), jax.tree.map(jnp.zeros_like, params),
                       jnp.asarray(0, jnp.int32))

    @jax.jit
    def update(params: Params, state: HFState, batch: Batch):
        x0 = jax.tree.map(lambda p: warm_start * p, state.previous)
        loss, new_loss, model, d, result = run_objective(objective, mesh, local,
                                                (params, state.damping, x0), batch)
        rho = _ratio(loss, new_loss, model)
        accepted = jnp.isfinite(new_loss) & (new_loss < loss)
        new_params = jax.tree.map(lambda p, q: jnp.where(accepted, p + q, p), params, d)
        new_damping = levenberg_marquardt(state.damping, rho)
        info = HFInfo(loss, new_loss, rho, state.damping, accepted, result.iterations,
                      result.converged)
        return new_params, HFState(new_damping, d, state.step + 1), info

    return HessianFree(init, update)
