"""The activations of PROTOCOL section 1 in JAX: the twin of `ngd_ref._activations`.

Values are JAX's; the first and second derivatives that every product differentiates
(gradients, forward-over-reverse HVPs, JVPs of GGN products) are closed forms written without
cancellation at saturation (`jax.custom_jvp`), as in the dense twin:

    tanh'     = (1 - |a|)(1 + |a|),  1 - |a| = 2 sigmoid(-2|s|)      (not 1 - a^2)
    sigmoid'  = sigmoid(s) sigmoid(-s)                                (not a (1 - a))
    sigmoid'' = -sigmoid'(s) tanh(s / 2)                              (not a'(1 - 2a))
    softplus' = sigmoid(s)
    softmax'  : (diag(p) - p p^T) u = p * (u - p^T u), with `u_m - p^T u` summed as
                `sum_j p_j (u_m - u_j)`, m = argmax

JAX's own rules (`1 - ans^2`, `ans (1 - ans)`, `p * (u - p^T u)`) subtract two numbers close to
1 where the activation saturates and keep only `eps / phi'` of relative accuracy: at
`|s| = 18`, `tanh'(s) ~ 9e-16` and `1 - a^2` has no correct digit.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS_JAX", "sigmoid", "softmax", "softmax_jacobian_vp", "softplus", "tanh"]

Array = jax.Array


@jax.custom_jvp
def tanh(s: Array) -> Array:
    """Hyperbolic tangent; derivative `(1 - |a|)(1 + |a|)`, `1 - |a| = 2 sigmoid(-2|s|)`."""
    return jnp.tanh(s)


@tanh.defjvp
def _tanh_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    complement = 2 * jax.nn.sigmoid(-2 * jnp.abs(s))  # its own derivative has no cancellation
    return tanh(s), complement * (2 - complement) * ds


@jax.custom_jvp
def _sigmoid_slope(s: Array) -> Array:
    """`sigmoid'(s) = sigmoid(s) sigmoid(-s)`, with `sigmoid''(s) = -sigmoid'(s) tanh(s/2)`."""
    return jax.nn.sigmoid(s) * jax.nn.sigmoid(-s)


@_sigmoid_slope.defjvp
def _sigmoid_slope_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    slope = _sigmoid_slope(s)
    return slope, -slope * jnp.tanh(s / 2) * ds


@jax.custom_jvp
def sigmoid(s: Array) -> Array:
    """Logistic function `1 / (1 + e^-s)`; its derivative is the product of it at s and -s."""
    return jax.nn.sigmoid(s)


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    return sigmoid(s), _sigmoid_slope(s) * ds


@jax.custom_jvp
def softplus(s: Array) -> Array:
    """`log(1 + e^s)` with the derivative `sigmoid(s)` (whose derivative is accurate too)."""
    return jax.nn.softplus(s)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    return softplus(s), sigmoid(s) * ds


def softmax_jacobian_vp(s: Array, u: Array) -> Array:
    """`(diag(p) - p p^T) u` over the last axis, `p = softmax(s)`, without cancellation.

    With `m = argmax s`, `u_m - p^T u = sum_j p_j (u_m - u_j)` (as `sum_j p_j = 1`) is a sum of
    terms weighted by the small probabilities, and `u_i - p^T u = (u_i - u_m) + (u_m - p^T u)`.
    The same matrix is the output Fisher of softmax cross-entropy (`ngd_ref._losses_jax`).
    """
    p = softmax(s)
    u_max = jnp.take_along_axis(u, jnp.argmax(s, axis=-1, keepdims=True), axis=-1)
    from_max = u_max - u                                   # u_m - u_j
    return p * (jnp.sum(p * from_max, axis=-1, keepdims=True) - from_max)


@jax.custom_jvp
def softmax(s: Array) -> Array:
    """Softmax over the last axis; derivative `softmax_jacobian_vp`."""
    return jax.nn.softmax(s, axis=-1)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    return softmax(s), softmax_jacobian_vp(s, ds)


ACTIVATIONS_JAX: dict[str, Callable[[Array], Array]] = {
    "identity": lambda s: s,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "relu": jax.nn.relu,  # derivative 0 at 0, as the reference
    "softplus": softplus,
    "softmax": softmax,
}
