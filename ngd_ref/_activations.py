"""Activations phi with their exact first and second derivatives, on any backend.

Every activation here has a symmetric Jacobian (diagonal for the elementwise ones,
`diag(p) - p p^T` for softmax), so one `jacobian_apply` serves forward tangents (JVP) and
backward cotangents (VJP). `second_order_apply` is the exact derivative of the VJP in the
direction of a tangent of `s`: `sum_k g_k d^2 phi_k(s)[ds]`, the term that makes the
hand-written forward-over-backward Hessian exact (no finite differences).

ReLU uses the derivative 0 at s = 0 (the convention of JAX and PyTorch).

`jacobian_magnitude_apply` is the Jacobian's closed form on absolute values, `MAG(J_phi)`: the
scale of a correct port's rounding of `J_phi t` (the tolerance policy's magnitude model,
`verify._policy`). Ports differentiate the textbook forms, which cancel where phi saturates:
`1 - a^2` (tanh) and `a (1 - a)` (sigmoid) lose all relative accuracy as `|a| -> 1`, and
`diag(p) - p p^T` (softmax) as `p -> e_k`, so their magnitudes are `1 + a^2`, `a + a^2` and
`diag(p) + p p^T`, not the (accurately computed) derivatives themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import scipy.special

from ngd_ref._backend import Backend

__all__ = ["Activation", "get_activation"]


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation function and its derivatives.

    Attributes:
        name: one of PROTOCOL section 1's activation names.
        value: `phi(s)`.
        derivatives: for elementwise activations, `(s, a) -> (phi'(s), phi''(s))`;
            `None` for softmax, whose Jacobian is `diag(p) - p p^T`.
        derivative_magnitude: for elementwise activations, `(s, a) -> MAG(phi'(s))` in float64,
            the textbook form of `phi'` on absolute values (module docstring); `None` for
            softmax (`diag(p) + p p^T`).
    """

    name: str
    value: Callable[[Backend, np.ndarray], np.ndarray]
    derivatives: Callable[[Backend, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None
    derivative_magnitude: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def jacobian_apply(self, backend: Backend, s: np.ndarray, a: np.ndarray,
                       t: np.ndarray) -> np.ndarray:
        """`J_phi(s) @ t` for `t` of shape `(k,)` or `(k, m)` (J_phi is symmetric)."""
        if self.derivatives is None:
            return _col(a, t) * _centered(a, t)
        d1, _ = self.derivatives(backend, s, a)
        return _col(d1, t) * t

    def jacobian_magnitude_apply(self, s: np.ndarray, a: np.ndarray,
                                 t: np.ndarray) -> np.ndarray:
        """`MAG(J_phi) @ t` for a nonnegative float64 `t` of shape `(k,)` or `(k, m)`.

        `MAG(J_phi)` is `diag(MAG(phi'))` for an elementwise phi and `diag(p) + p p^T` for
        softmax (module docstring).
        """
        if self.derivative_magnitude is None:
            return _col(a, t) * (t + a @ t)
        return _col(self.derivative_magnitude(s, a), t) * t

    def second_order_apply(self, backend: Backend, s: np.ndarray, a: np.ndarray,
                           ds: np.ndarray, g: np.ndarray) -> np.ndarray:
        """`sum_k g_k (d^2 phi_k / ds^2) @ ds`: the tangent of `J_phi(s)^T g` along `ds`.

        Args:
            backend: the arithmetic (float64 or mpmath) in which the derivatives are evaluated.
            s: pre-activation `(k,)`; `a = phi(s)`.
            a: the activation value `phi(s)`, `(k,)` (the probabilities `p` for softmax),
                reused by the derivatives instead of recomputing `phi`.
            ds: tangent of `s`, `(k,)` or `(k, m)` (m directions at once).
            g: fixed cotangent `(k,)`.
        """
        if self.derivatives is None:
            dp = self.jacobian_apply(backend, s, a, ds)
            w = _centered(a, g)
            return dp * _col(w, ds) - _col(a, ds) * (w @ dp)
        _, d2 = self.derivatives(backend, s, a)
        return _col(g * d2, ds) * ds


def _centered(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """`t - p^T t` computed as `sum_j p_j (t_i - t_j)` (equal because `sum_j p_j = 1`).

    For a saturated softmax (`p_m ~ 1`) the direct `t_m - p^T t` subtracts two numbers of size
    `|t_m|` to get one of size `(1 - p_m) |t|`, losing a factor `1 / (1 - p_m)` of relative
    accuracy (e.g. `nll_probs`: `t = -e_y / p_y` gives `-1/p_y + 1`); in the pairwise form every
    term carries its own small weight, so the result keeps the accuracy of `p` and `t`.
    `t` is `(k,)` or `(k, m)`.
    """
    diff = t[:, None] - t[None, :]                  # (k, k) or (k, k, m): t_i - t_j
    weights = p[None, :, None] if t.ndim == 2 else p[None, :]
    return (weights * diff).sum(axis=1)


def _col(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Broadcast a `(k,)` vector against `like` of shape `(k,)` or `(k, m)`."""
    return v[:, None] if like.ndim == 2 else v


def _identity_derivatives(backend: Backend, s: np.ndarray, a: np.ndarray):
    return backend.asarray(np.ones(s.shape)), backend.zeros(s.shape)


# Derivatives without cancellation at saturation (the JAX twin, `ngd_ref._activations_jax`,
# uses the same forms): `1 - a^2` and `a (1 - a)` subtract numbers close to 1 where |s| is
# large and keep only `eps / phi'(s)` of relative accuracy (none at |s| = 18).
def _tanh_derivatives(backend: Backend, s: np.ndarray, a: np.ndarray):
    complement = 2 * backend.sigmoid(-2 * np.abs(s))            # 1 - |tanh s|, exactly
    d1 = complement * (2 - complement)                           # (1 - |a|)(1 + |a|)
    return d1, -2 * a * d1


def _sigmoid_derivatives(backend: Backend, s: np.ndarray, a: np.ndarray):
    d1 = a * backend.sigmoid(-s)                                 # sigmoid(s) sigmoid(-s)
    return d1, -d1 * backend.tanh(s / 2)                         # 1 - 2a = -tanh(s/2)


def _relu_value(backend: Backend, s: np.ndarray) -> np.ndarray:
    return np.where(s > 0, s, backend.zeros(s.shape))


def _relu_derivatives(backend: Backend, s: np.ndarray, a: np.ndarray):
    ones, zeros = backend.asarray(np.ones(s.shape)), backend.zeros(s.shape)
    return np.where(s > 0, ones, zeros), zeros


def _softplus_derivatives(backend: Backend, s: np.ndarray, a: np.ndarray):
    sig = backend.sigmoid(s)
    return sig, sig * backend.sigmoid(-s)


_ACTIVATIONS = {
    "identity": Activation("identity", lambda bk, s: s, _identity_derivatives,
                           lambda s, a: np.ones(s.shape)),
    "tanh": Activation("tanh", lambda bk, s: bk.tanh(s), _tanh_derivatives,
                       lambda s, a: 1 + a * a),                        # of 1 - a^2
    "sigmoid": Activation("sigmoid", lambda bk, s: bk.sigmoid(s), _sigmoid_derivatives,
                          lambda s, a: a + a * a),                     # of a (1 - a)
    "relu": Activation("relu", _relu_value, _relu_derivatives,
                       lambda s, a: (s > 0).astype(np.float64)),
    "softplus": Activation("softplus", lambda bk, s: bk.softplus(s), _softplus_derivatives,
                           lambda s, a: scipy.special.expit(s)),       # sigmoid(s), no difference
    "softmax": Activation("softmax", lambda bk, s: bk.softmax(s), None),
}


def get_activation(name: str) -> Activation:
    """The activation called `name` (validated problems only carry known names)."""
    return _ACTIVATIONS[name]
