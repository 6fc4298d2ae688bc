"""BFGS and the L-BFGS two-loop recursion in JAX (twin of `quasi_newton._dense`).

Same formulas as the reference (seed 004 "BFGS"/"L-BFGS"; Nocedal & Wright (6.19) and
Algorithm 7.4; PROTOCOL s9). The L-BFGS memory is a pair of stacked arrays `(m, n)`, oldest
first, scanned by `lax.scan` in both loops; inputs are never modified (JAX arrays are
immutable, which rules out seed 004's overwritten-gradient bug by construction -- the seed's
bug is rebinding, which a port can still make; see `verify.mutants.seed_methods`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["bfgs_update", "lbfgs_direction"]


@jax.jit
def bfgs_update(B: jax.Array, s: jax.Array, y: jax.Array) -> jax.Array:
    """`B + y y^T/(y^T s) - B s s^T B/(s^T B s)` (PROTOCOL s9)."""
    bs = B @ s
    return B + jnp.outer(y, y) / (y @ s) - jnp.outer(bs, bs) / (s @ bs)


@jax.jit
def lbfgs_direction(g: jax.Array, s_stack: jax.Array, y_stack: jax.Array,
                    gamma: float = 1.0) -> jax.Array:
    """`H_k g` by the two-loop recursion; `s_stack`, `y_stack` are `(m, n)`, oldest first."""
    rho = 1.0 / jnp.sum(s_stack * y_stack, axis=1)

    def first(q, pair):
        s, y, r = pair
        alpha = r * (s @ q)
        return q - alpha * y, alpha

    q, alphas = lax.scan(first, g, (s_stack, y_stack, rho), reverse=True)

    def second(r, pair):
        s, y, rh, alpha = pair
        return r + (alpha - rh * (y @ r)) * s, None

    out, _ = lax.scan(second, gamma * q, (s_stack, y_stack, rho, alphas))
    return out
