"""The damped GGN step solved in output space in JAX (twin of `lowrank._dense`).

`-(G + lambda I)^{-1} grad h = -J^T (c H_L J J^T + lambda I)^{-1} c r` (push-through; seed 004
"Generalized Gauss-Newton"; PROTOCOL s9): `J` (`BC x n`) by `jax.jacrev` of the flattened
outputs, the *block-diagonal* `H_L` from the loss's per-example `hessian_vp` applied to the
identity, `r = dL/dz` per example. Memory `O(BC n + (BC)^2)`: no `n x n` matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import block_diag

from ngd_ref.curvature._jax import Batch, Objective

__all__ = ["lowrank_ggn_update"]


@functools.partial(jax.jit, static_argnums=(0,))
def lowrank_ggn_update(objective: Objective, params, batch: Batch, damping: float):
    """`-(G + damping I)^{-1} grad h` via the `B*C` output space, a pytree like `params`."""
    flat, unravel = ravel_pytree(params)
    outputs = objective.apply(params, batch.inputs)                          # (B, C)
    count, width = outputs.shape
    jac = jax.jacrev(lambda t: objective.apply(unravel(t), batch.inputs).reshape(-1))(flat)
    loss = objective.loss
    eye = jnp.eye(width, dtype=outputs.dtype)
    blocks = jax.vmap(lambda y, z: jax.vmap(lambda u: loss.hessian_vp(y, z, u))(eye).T)(
        batch.targets, outputs)                                              # (B, C, C)
    residuals = jax.vmap(loss.grad)(batch.targets, outputs).reshape(-1)
    c = objective.weights(count, outputs.dtype)[0]
    system = c * block_diag(*blocks) @ (jac @ jac.T) + damping * jnp.eye(count * width,
                                                                           dtype=outputs.dtype)
    return unravel(-(jac.T @ jnp.linalg.solve(system, c * residuals)))
