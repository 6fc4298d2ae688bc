"""The |H| trust-region step in JAX (twin of `newton._dense`; seed 004 "Trust Region Newton").

`-(|H| + lambda I)^{-1} grad h` with `|H| = Q |Lambda| Q^T` from `jnp.linalg.eigh` of the dense
Hessian `jax.hessian` of the flattened objective -- for the small models this method is meant
for (it forms the `n x n` Hessian, as the seed's code does).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ngd_ref.curvature._jax import Batch, Objective, loss_value

__all__ = ["trust_region_update"]


@functools.partial(jax.jit, static_argnums=(0,))
def trust_region_update(objective: Objective, params, batch: Batch, damping: float):
    """`-(|H| + damping I)^{-1} grad h` as a pytree like `params` (PROTOCOL s9)."""
    flat, unravel = ravel_pytree(params)

    def h(theta):
        return loss_value(objective, unravel(theta), batch)

    grad = jax.grad(h)(flat)
    values, vectors = jnp.linalg.eigh(jax.hessian(h)(flat))
    return unravel(-(vectors @ ((vectors.T @ grad) / (jnp.abs(values) + damping))))
