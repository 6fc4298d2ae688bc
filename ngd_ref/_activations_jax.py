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


def _with_slope(value: Callable[[Array], Array],
                slope: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """The elementwise function `value` with the JVP rule `d value = slope(s) ds`."""
    function = jax.custom_jvp(value)
    function.defjvp(lambda primals, tangents: (function(primals[0]),
                                               slope(primals[0]) * tangents[0]))
    return function


def _tanh_slope(s: Array) -> Array:
    """`tanh'(s) = (1 - |a|)(1 + |a|)`, `1 - |a| = 2 sigmoid(-2|s|)` (derivative accurate too)."""
    complement = 2 * jax.nn.sigmoid(-2 * jnp.abs(s))
    return complement * (2 - complement)


def _sigmoid_product(s: Array) -> Array:
    """`sigmoid'(s) = sigmoid(s) sigmoid(-s)`."""
    return jax.nn.sigmoid(s) * jax.nn.sigmoid(-s)


#: `sigmoid'`, whose own derivative is `sigmoid''(s) = -sigmoid'(s) tanh(s / 2)`.
_sigmoid_slope: Callable[[Array], Array] = _with_slope(
    _sigmoid_product, lambda s: -_sigmoid_slope(s) * jnp.tanh(s / 2))
#: Hyperbolic tangent with the derivative `_tanh_slope`.
tanh = _with_slope(jnp.tanh, _tanh_slope)
#: Logistic function with the derivative `sigmoid(s) sigmoid(-s)`.
sigmoid = _with_slope(jax.nn.sigmoid, _sigmoid_slope)
#: `log(1 + e^s)` with the derivative `sigmoid` (whose derivative is accurate too).
softplus = _with_slope(jax.nn.softplus, sigmoid)


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
