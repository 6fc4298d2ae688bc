"""The losses of PROTOCOL section 2 in JAX: value, closed-form output curvature, sampling.

The JAX twin of `ngd_ref._losses`. For one example with network output `z` (shape `(C,)`):

    value(y, z)         L(y, z) = -log r(y|z) (+ the protocol's constants)
    hessian_vp(y, z, u) H_L u,   H_L = d^2 L / dz^2 at the observed target
    fisher_vp(z, u)     F_R u,   F_R = E_{y ~ r(.|z)}[dL/dz dL/dz^T], the output Fisher
    sample(key, z)      y ~ r(.|z), for the Monte-Carlo Fisher (seeds 000/001)

The products are closed forms (never a `jax.hessian` of the loss), so a GGN- or
Fisher-vector product costs one JVP, `O(C)` work per example and one VJP (Martens s3, s5):

    mse                     H_L = F_R = I
    softmax_cross_entropy   H_L = F_R = diag(p) - p p^T,         p = softmax(z)
    sigmoid_cross_entropy   H_L = F_R = diag(p (1 - p)),         p = sigmoid(z)
    poisson                 H_L = F_R = diag(exp z)
    nll_probs               H_L = e_y e_y^T / z_y^2,  F_R = diag(1 / z)   (z = probabilities)
    gaussian_logvar         z = (mu, s), r = y - mu, per coordinate
                            H_L = [[e^-s, r e^-s], [r e^-s, r^2 e^-s / 2]],  F_R = diag(e^-s, 1/2)

For natural parameters (the first four) `H_L = F_R` does not depend on y, so G = F
(Martens s9); for `nll_probs` and `gaussian_logvar` it does, and `H_L` of `gaussian_logvar`
is indefinite at observed targets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ngd_ref._activations_jax import softmax_jacobian_vp
from ngd_ref._spec import Loss

__all__ = ["JaxLoss", "get_jax_loss"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class JaxLoss:
    """One loss of PROTOCOL section 2, per example (vmap it over a batch).

    Attributes:
        name: the protocol's loss name.
        value: `(y, z) -> L(y, z)`, a scalar.
        hessian_vp: `(y, z, u) -> H_L(y, z) u`.
        fisher_vp: `(z, u) -> F_R(z) u`, the exact output Fisher.
        sample: `(key, z) -> y ~ r(.|z)`, shaped and typed like a target.
    """

    name: str
    value: Callable[[Array, Array], Array]
    hessian_vp: Callable[[Array, Array, Array], Array]
    fisher_vp: Callable[[Array, Array], Array]
    sample: Callable[[Array, Array], Array]

    def grad(self, y: Array, z: Array) -> Array:
        """`dL/dz` at target y (autodiff of `value`, one example)."""
        return jax.grad(self.value, argnums=1)(y, z)


# -- mse ---------------------------------------------------------------------------------------
def _mse_value(y, z):
    r = y - z
    return 0.5 * jnp.sum(r * r)


def _identity_product(z, u):
    return u


def _gaussian_sample(key, z):
    return z + jax.random.normal(key, z.shape, z.dtype)


def _closed_form_derivatives(value, grad, fisher_vp):
    """`value` with autodiff rules `dL/dz = grad(y, z)` and `d(dL/dz) = fisher_vp(z, dz)`.

    For a natural-parameter loss `H_L = F_R` (Martens s9), so this fixes the first and second
    derivatives that every product (gradient, HVP by forward-over-reverse, GGN) differentiates
    to closed forms written without cancellation; autodiff of `value` would form `p - e_y` and
    `p * (u - p^T u)` directly and lose a factor `1 / (1 - p_max)` of relative accuracy at a
    saturated output (float32 HVPs of a saturated softmax were 1.3x their tolerance off).
    """

    @jax.custom_jvp
    def loss(y, z):
        return value(y, z)

    @jax.custom_jvp
    def loss_grad(y, z):
        return grad(y, z)

    @loss.defjvp
    def _(primals, tangents):
        y, z = primals
        return loss(y, z), jnp.vdot(loss_grad(y, z), tangents[1])

    @loss_grad.defjvp
    def _(primals, tangents):
        y, z = primals
        return loss_grad(y, z), fisher_vp(z, tangents[1])

    return loss


# -- softmax cross-entropy -------------------------------------------------------------------
def _softmax_ce_value(y, z):
    return -jax.nn.log_softmax(z)[y]


def _softmax_ce_grad(y, z):
    """`p - e_y`, with `1 - p_y` summed from the other probabilities (exact when p_y ~ 1)."""
    p = jax.nn.softmax(z)
    is_y = jnp.arange(z.shape[0], dtype=jnp.asarray(y).dtype) == y
    return jnp.where(is_y, -jnp.sum(jnp.where(is_y, 0, p)), p)


def _softmax_fisher_vp(z, u):
    """`(diag(p) - p p^T) u`: the softmax's Jacobian, in the form without cancellation."""
    return softmax_jacobian_vp(z, u)


def _categorical_sample(key, logits):
    return jax.random.categorical(key, logits)


# -- sigmoid cross-entropy -------------------------------------------------------------------
def _sigmoid_ce_value(y, z):
    return jnp.sum(jax.nn.softplus(z) - y * z)


def _sigmoid_ce_grad(y, z):
    """`p - y` as `(1 - y) sigmoid(z) - y sigmoid(-z)` (exact for y in {0, 1} when p ~ 1)."""
    return (1 - y) * jax.nn.sigmoid(z) - y * jax.nn.sigmoid(-z)


def _sigmoid_fisher_vp(z, u):
    # p (1 - p) as sigmoid(z) sigmoid(-z): no cancellation when p saturates at 1.
    return jax.nn.sigmoid(z) * jax.nn.sigmoid(-z) * u


def _bernoulli_sample(key, z):
    return jax.random.bernoulli(key, jax.nn.sigmoid(z)).astype(z.dtype)


# -- poisson ---------------------------------------------------------------------------------
def _poisson_value(y, z):
    return jnp.sum(jnp.exp(z) - y * z + jax.scipy.special.gammaln(y + 1))


def _poisson_fisher_vp(z, u):
    return jnp.exp(z) * u


def _poisson_sample(key, z):
    return jax.random.poisson(key, jnp.exp(z)).astype(z.dtype)


# -- nll on probabilities -------------------------------------------------------------------
def _nll_value(y, z):
    return -jnp.log(z[y])


def _nll_hessian_vp(y, z, u):
    return jnp.zeros_like(u).at[y].set(u[y] / (z[y] * z[y]))


def _nll_fisher_vp(z, u):
    return u / z


def _nll_sample(key, z):
    return jax.random.categorical(key, jnp.log(z))


# -- heteroscedastic gaussian ------------------------------------------------------------------
def _halves(z):
    half = z.shape[0] // 2
    return z[:half], z[half:]


def _logvar_value(y, z):
    mu, s = _halves(z)
    r = y - mu
    return jnp.sum(0.5 * r * r * jnp.exp(-s) + 0.5 * s + 0.5 * math.log(2 * math.pi))


def _logvar_hessian_vp(y, z, u):
    mu, s = _halves(z)
    u_mu, u_s = _halves(u)
    inv_var = jnp.exp(-s)
    r = y - mu
    return jnp.concatenate([inv_var * (u_mu + r * u_s), r * inv_var * (u_mu + 0.5 * r * u_s)])


def _logvar_fisher_vp(z, u):
    _, s = _halves(z)
    u_mu, u_s = _halves(u)
    return jnp.concatenate([jnp.exp(-s) * u_mu, 0.5 * u_s])


def _logvar_sample(key, z):
    mu, s = _halves(z)
    return mu + jnp.exp(0.5 * s) * jax.random.normal(key, mu.shape, z.dtype)


def _natural(name, value, fisher_vp, sample) -> JaxLoss:
    """Build a loss in natural parameters: H_L = F_R, independent of the target (Martens s9)."""
    return JaxLoss(name, value, lambda y, z, u: fisher_vp(z, u), fisher_vp, sample)


_JAX_LOSSES: dict[str, JaxLoss] = {
    loss.name: loss
    for loss in (
        _natural(Loss.MSE.value, _mse_value, _identity_product, _gaussian_sample),
        _natural(Loss.SOFTMAX_CROSS_ENTROPY.value,
                 _closed_form_derivatives(_softmax_ce_value, _softmax_ce_grad,
                                          _softmax_fisher_vp),
                 _softmax_fisher_vp, _categorical_sample),
        _natural(Loss.SIGMOID_CROSS_ENTROPY.value,
                 _closed_form_derivatives(_sigmoid_ce_value, _sigmoid_ce_grad,
                                          _sigmoid_fisher_vp),
                 _sigmoid_fisher_vp, _bernoulli_sample),
        _natural(Loss.POISSON.value, _poisson_value, _poisson_fisher_vp, _poisson_sample),
        JaxLoss(Loss.NLL_PROBS.value, _nll_value, _nll_hessian_vp, _nll_fisher_vp, _nll_sample),
        JaxLoss(Loss.GAUSSIAN_LOGVAR.value, _logvar_value, _logvar_hessian_vp, _logvar_fisher_vp,
                _logvar_sample),
    )
}


def get_jax_loss(loss: str | Loss | JaxLoss) -> JaxLoss:
    """Return the `JaxLoss` named `loss` (a `JaxLoss` is returned as is, for custom losses).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(loss, JaxLoss):
        return loss
    name = loss.value if isinstance(loss, Loss) else loss
    try:
        return _JAX_LOSSES[name]
    except KeyError:
        raise ValueError(
            f"loss: unknown loss {loss!r}; expected one of {', '.join(_JAX_LOSSES)} or a JaxLoss"
        ) from None
