"""Inverse p-th roots and the Shampoo direction in JAX (twin of `shampoo._dense`).

Same formulas and names as the dense reference (see its docstring; seed 004 "Shampoo";
PROTOCOL s9): `inverse_root` by `jnp.linalg.eigh`, `coupled_newton_inverse_root` by the
coupled Newton iteration of Guo & Higham (2006) in a `lax.while_loop` (jit-compatible, no
Python-side branching), and `shampoo_direction`. Everything runs in the dtype of the input
(float32 or float64 with x64 enabled).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["InverseRootResult", "coupled_newton_inverse_root", "inverse_root", "shampoo_direction"]


@functools.partial(jax.jit, static_argnums=(1,))
def inverse_root(M: jax.Array, p: int, ridge: float = 0.0) -> jax.Array:
    """`(M + ridge I)^{-1/p}` by eigendecomposition, for symmetric PSD `M` (PROTOCOL s9).

    Eigenvalues of `M + ridge I` that are not positive give NaN (no silent clipping).
    """
    values, vectors = jnp.linalg.eigh(M + ridge * jnp.eye(M.shape[0], dtype=M.dtype))
    return (vectors * values ** (-1.0 / p)) @ vectors.T


class InverseRootResult(NamedTuple):
    """Outcome of the coupled Newton iteration (arrays, so it can be returned from jit).

    Attributes:
        root: `X_k ~ (M + ridge I)^{-1/p}`.
        iterations: Newton steps taken.
        residual: `||M_k - I||_F`; `||X_k - A^{-1/p}|| <= ||A^{-1/p}|| rho/(p (1 - rho))`.
    """

    root: jax.Array
    iterations: jax.Array
    residual: jax.Array


@functools.partial(jax.jit, static_argnums=(1,), static_argnames=("max_iterations",))
def coupled_newton_inverse_root(M: jax.Array, p: int, ridge: float = 0.0, *,
                                tolerance: float | None = None,
                                max_iterations: int = 100) -> InverseRootResult:
    """`(M + ridge I)^{-1/p}` by the coupled Newton iteration (Guo & Higham 2006; seed 004).

    `X_0 = z^{1/p} I`, `M_0 = z A`, `z = (1 + p)/(2 ||A||_F)`; `T = ((p + 1) I - M_k)/p`,
    `X <- X T`, `M <- T^p M`, while the residual decreases and exceeds `tolerance` (default
    `n` times the dtype's machine epsilon).
    """
    n = M.shape[0]
    eye = jnp.eye(n, dtype=M.dtype)
    a = M + ridge * eye
    z = (1.0 + p) / (2.0 * jnp.linalg.norm(a))
    tol = n * jnp.finfo(M.dtype).eps if tolerance is None else tolerance

    def residual(m):
        return jnp.linalg.norm(m - eye)

    def step(state):
        i, x, m, res, _ = state
        t = ((p + 1) * eye - m) / p
        new_m = jnp.linalg.matrix_power(t, p) @ m
        new_res = residual(new_m)
        better = new_res < res
        return (jnp.where(better, i + 1, i), jnp.where(better, x @ t, x),
                jnp.where(better, new_m, m), jnp.where(better, new_res, res), better)

    def keep_going(state):
        i, _, _, res, progressed = state
        return (i < max_iterations) & (res > tol) & progressed

    m0 = z * a
    init = (jnp.asarray(0), eye * z ** (1.0 / p), m0, residual(m0), jnp.asarray(True))
    i, x, _, res, _ = lax.while_loop(keep_going, step, init)
    return InverseRootResult(x, i, res)


@jax.jit
def shampoo_direction(G: jax.Array, L: jax.Array, R: jax.Array, eps: float) -> jax.Array:
    """`(L + eps I)^{-1/4} G (R + eps I)^{-1/4}` (PROTOCOL s9; Gupta et al. 2018)."""
    return inverse_root(L, 4, eps) @ G @ inverse_root(R, 4, eps)
