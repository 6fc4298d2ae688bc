"""The K-FAC optimizer in JAX (Grosse ch. 4 Algorithm 1, s5-s6; seed 002), optax-style.

`kfac(network, loss, ...)` returns `Kfac(init, update)`, two pure, jit-able functions with a
NamedTuple state (the shape of optax's `GradientTransformation`; K-FAC needs the batch and the
network, so `update` takes them instead of precomputed gradients):

    opt = kfac(network, "softmax_cross_entropy", learning_rate=None, damping=1e-3)
    state = opt.init(params, (x, y), key)
    update = jax.jit(opt.update)
    updates, state, info = update(params, state, (x, y))
    params = jax.tree_util.tree_map(jnp.add, params, updates)

One step, on a batch with mean reduction (`c = 1/B`):
    1. One forward pass with zero dummies on the pre-activations and one VJP give the loss
       gradient (Grosse s5.8); every `stats_every` steps a second VJP of a sampled
       pseudo-gradient (the pullback sampling trick) gives `S_l`, the saved layer inputs give
       `A_l`, and both enter exponential moving averages (eq. 25).
    2. Every `inverse_every` steps the factors are decomposed: eigendecompositions for
       `damping_method="eigen"` (eq. 23, valid for any later damping), inverses of the damped
       factors for `"factored"` (eq. 24, with the damping and pi of that step).
    3. The preconditioned gradient `r = Khat^{-1} g` is applied per layer.
    4. The step is `delta = alpha r + beta delta_prev` with either fixed `alpha = -lr`,
       `beta = momentum`, or `(alpha, beta)` minimizing the quadratic model
       `M(delta) = g^T delta + 1/2 delta^T (C + lambda I) delta` over span{r, delta_prev}
       (eq. 26 and eq. 27; `C` the batch GGN or Fisher, by `kind`, through two JVPs).
    5. With `adapt_damping`, every `damping_every` steps the reduction ratio
       `rho = (h(w + delta) - h(w)) / M(delta)` (eq. 14) updates lambda by the
       Levenberg-Marquardt rule (x 3/2 if rho < 1/4, x 2/3 if rho > 3/4; Grosse s4.1).
With `axis_name` (inside `pmap`/`shard_map` over a sharded batch) gradients, losses and the
batch statistics are averaged across devices with `lax.pmean`; under plain `jit` with a sharded
batch the batch means are global already.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ngd_ref._losses_jax import JaxLoss, get_jax_loss
from ngd_ref._validation import as_member
from ngd_ref.cg._jax import tree_vdot
from ngd_ref.hf._jax import levenberg_marquardt
from ngd_ref.kfac._dense import DampingMethod, KfacKind
from ngd_ref.kfac._jax import (
    DenseNetwork,
    Estimator,
    factored_pi,
    homogeneous,
    instrumented_vjp,
    pseudo_gradient_factors,
)

__all__ = ["Kfac", "KfacInfo", "KfacState", "kfac"]

Array = jax.Array


class KfacState(NamedTuple):
    """The optimizer's state (a pytree).

    Attributes:
        step: number of updates done.
        factors: moving averages `[(A_l, S_l), ...]`.
        decomposition: per layer, `(Q_A, d_A, Q_S, d_S)` (eigen) or
            `(inv(A + pi sqrt(l) I), inv(S + sqrt(l)/pi I))` padded to the same 4-tuple (factored).
        damping: current lambda.
        delta: the previous update, layer-shaped `[(dW, db), ...]`.
        key: PRNG key for the pullback sampling trick.
    """

    step: Array
    factors: list[tuple[Array, Array]]
    decomposition: list[tuple[Array, Array, Array, Array]]
    damping: Array
    delta: list[tuple[Array, Array]]
    key: Array


class KfacInfo(NamedTuple):
    """Diagnostics of one step.

    Attributes:
        loss: batch loss before the step.
        alpha: coefficient of the preconditioned gradient (negative: a descent step).
        beta: coefficient of the previous update (momentum).
        damping: lambda after this step's adaptation.
        rho: reduction ratio of eq. 14 (NaN on steps without damping adaptation).
    """

    loss: Array
    alpha: Array
    beta: Array
    damping: Array
    rho: Array


class Kfac(NamedTuple):
    """The optimizer: two pure functions.

    Attributes:
        init: `(params, batch, key) -> KfacState` (statistics of the first batch, Algorithm 1).
        update: `(params, state, batch) -> (updates, state, KfacInfo)`; jit it.
    """

    init: Any
    update: Any


def _wbar(layer: tuple[Array, Array]) -> Array:
    w, b = layer
    return jnp.concatenate([w, b[:, None]], axis=1)


def _split(v: Array) -> tuple[Array, Array]:
    return v[:, :-1], v[:, -1]


def kfac(network: DenseNetwork, loss: str | JaxLoss, *, learning_rate: float | None = None,
         momentum: float | None = None, damping: float = 1e-3,
         damping_method: DampingMethod | str = "factored", kind: KfacKind | str = "fisher",
         estimator: Estimator | str = "sampled", stats_every: int = 1, inverse_every: int = 20,
         ema_decay: float = 0.95, adapt_damping: bool = False, damping_every: int = 5,
         min_damping: float = 1e-8, max_damping: float = 1e4,
         axis_name: str | None = None) -> Kfac:
    """Build the K-FAC optimizer (module docstring).

    Args:
        network: the instrumented dense network (`mlp_network`, `flax_network`, ...).
        loss: a protocol loss name or `JaxLoss`; the objective is its batch mean.
        learning_rate: fixed step size `lr` (`alpha = -lr`); None chooses alpha (and beta) from
            the quadratic model, eq. 26/27.
        momentum: fixed heavy-ball `beta` (with a fixed learning rate; default 0).
        damping: initial lambda > 0.
        damping_method: `"eigen"` (eq. 23) or `"factored"` (eq. 24).
        kind: `"fisher"`, `"ggn"` or `"empirical"` statistics.
        estimator: `"sampled"` (pullback sampling trick) or `"exact"` (C VJPs per update).
        stats_every: update the statistics every k steps.
        inverse_every: recompute decompositions every T steps.
        ema_decay: eta of eq. 25.
        adapt_damping: Levenberg-Marquardt adaptation of lambda (eq. 14).
        damping_every: steps between adaptations.
        min_damping: lower clip of lambda.
        max_damping: upper clip of lambda.
        axis_name: a mapped axis to average statistics and gradients over (sharded batch).

    Raises:
        ValueError: naming the first invalid argument.
    """
    method = as_member(DampingMethod, damping_method, "method")
    kind = as_member(KfacKind, kind, "kind")
    estimator = as_member(Estimator, estimator, "estimator")
    jloss = get_jax_loss(loss)
    for name, value in (("stats_every", stats_every), ("inverse_every", inverse_every),
                        ("damping_every", damping_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if not damping > 0:
        raise ValueError(f"damping: expected > 0, got {damping!r}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay: expected 0 <= ema_decay < 1, got {ema_decay!r}")
    if learning_rate is None and momentum is not None:
        raise ValueError("momentum: a fixed momentum needs a fixed learning_rate; with "
                         "learning_rate=None both come from the quadratic model (eq. 27)")
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(f"learning_rate: expected > 0 or None, got {learning_rate!r}")
    beta_fixed = 0.0 if momentum is None else float(momentum)

    def mean(x):
        return x if axis_name is None else jax.lax.pmean(x, axis_name)

    def batch_statistics(vjp, z, y, inputs, key):
        batch = z.shape[0]
        a_new = [mean(homogeneous(a).T @ homogeneous(a) / batch) for a in inputs]
        s_new = [mean(s) for s in
                 pseudo_gradient_factors(vjp, z, y, jloss, kind, estimator, key, 1.0 / batch)]
        return list(zip(a_new, s_new, strict=True))

    def decompose(factors, lam):
        out = []
        for a, s in factors:
            if method is DampingMethod.EIGEN:
                d_a, q_a = jnp.linalg.eigh(a)
                d_s, q_s = jnp.linalg.eigh(s)
                out.append((q_a, d_a, q_s, d_s))
            else:
                pi, root = factored_pi(a, s), jnp.sqrt(lam)
                inv_a = _spd_inverse(a + pi * root * jnp.eye(a.shape[0], dtype=a.dtype))
                inv_s = _spd_inverse(s + root / pi * jnp.eye(s.shape[0], dtype=s.dtype))
                out.append((inv_a, jnp.zeros((), a.dtype), inv_s, jnp.zeros((), a.dtype)))
        return out

    def precondition(decomposition, inputs, ds, lam):
        """`r_l = Khat_l^{-1} g_l` from the per-example pieces of `g_l = Ds_l^T abar_l`.

        The gradient of a dense layer is `sum_b Ds_b abar_b^T` (Grosse s5.2), so for factored
        damping `S_d^{-1} g A_d^{-1} = (Ds S_d^{-1})^T (abar A_d^{-1})` is used whenever it
        costs fewer flops (small batches: `O(B (M^2 + N^2 + MN))` instead of `O(MN (M + N))`,
        Grosse s5.5 point 3). Returns `(r, g)` as layer lists `[(W, b), ...]`, averaged across
        devices (the preconditioner is replicated and linear, so averaging commutes with it).
        """
        out, grads = [], []
        for (m_a, d_a, m_s, d_s), a, d in zip(decomposition, inputs, ds, strict=True):
            abar = homogeneous(a)
            g = mean(d.T @ abar)
            grads.append(_split(g))
            batch, (n_out, n_in1) = a.shape[0], g.shape
            if method is DampingMethod.EIGEN:
                v = m_s @ ((m_s.T @ g @ m_a) / (d_s[:, None] * d_a[None, :] + lam)) @ m_a.T
            elif batch * (n_out * n_out + n_in1 * n_in1 + n_out * n_in1) < n_out * n_in1 * (
                    n_out + n_in1):
                v = mean((d @ m_s).T @ (abar @ m_a))
            else:
                v = m_s @ g @ m_a
            out.append(_split(v))
        return out, grads

    def loss_of(z, y):
        return mean(jnp.mean(jax.vmap(jloss.value)(y, z)))

    def curvature_products(z, y, q1, q2):
        """`c sum_b q1_b^T Mid_b q2_b` with Mid = F_R (fisher) or H_L (ggn, empirical)."""
        if kind is KfacKind.FISHER:
            mq = jax.vmap(jloss.fisher_vp)(z, q2)
        else:
            mq = jax.vmap(jloss.hessian_vp)(y, z, q2)
        return mean(jnp.mean(jnp.sum(q1 * mq, axis=1)))

    def init(params, batch, key):
        x, y = batch
        key, sub = jax.random.split(key)
        z, inputs, vjp = instrumented_vjp(network, params, x)
        factors = batch_statistics(vjp, z, y, inputs, sub)
        lam = jnp.asarray(damping, z.dtype)
        zeros = [(jnp.zeros_like(w), jnp.zeros_like(b)) for w, b in network.get_layers(params)]
        return KfacState(jnp.zeros((), jnp.int32), factors, decompose(factors, lam), lam, zeros,
                         key)

    def update(params, state, batch):
        x, y = batch
        key, sub = jax.random.split(state.key)
        z, inputs, vjp = instrumented_vjp(network, params, x)
        h = loss_of(z, y)
        dz = jax.vmap(jax.grad(jloss.value, argnums=1))(y, z) / z.shape[0]
        ds = vjp(dz)[1]  # c Ds_l per example: the dense layers' gradients are ds^T abar

        def refresh(factors):
            new = batch_statistics(vjp, z, y, inputs, sub)
            return [(ema_decay * a + (1 - ema_decay) * an, ema_decay * s + (1 - ema_decay) * sn)
                    for (a, s), (an, sn) in zip(factors, new, strict=True)]

        factors = _every(stats_every, state.step, refresh, lambda f: f, state.factors)
        decomposition = _every(inverse_every, state.step, lambda f: decompose(f, state.damping),
                               lambda f: state.decomposition, factors)
        r, grads = precondition(decomposition, inputs, ds, state.damping)
        lam = state.damping

        def model_terms(direction):
            tangent = network.set_layers(params, direction)
            return jax.jvp(lambda p: network.apply(p, x), (params,), (tangent,))[1]

        if learning_rate is None:
            jr, jd = model_terms(r), model_terms(state.delta)
            m_rr = curvature_products(z, y, jr, jr) + lam * tree_vdot(r, r)
            m_rd = curvature_products(z, y, jr, jd) + lam * tree_vdot(r, state.delta)
            m_dd = curvature_products(z, y, jd, jd) + lam * tree_vdot(state.delta, state.delta)
            g_r, g_d = tree_vdot(grads, r), tree_vdot(grads, state.delta)
            first = m_dd == 0  # no previous step: minimize over span{r} (eq. 26)
            det = jnp.where(first, 1.0, m_rr * m_dd - m_rd * m_rd)
            alpha = jnp.where(first, -g_r / m_rr, (-g_r * m_dd + g_d * m_rd) / det)
            beta = jnp.where(first, 0.0, (-g_d * m_rr + g_r * m_rd) / det)
            predicted = 0.5 * (alpha * g_r + beta * g_d)
        else:
            alpha, beta = jnp.asarray(-learning_rate, z.dtype), jnp.asarray(beta_fixed, z.dtype)
            predicted = jnp.zeros((), z.dtype)
        delta = jax.tree_util.tree_map(lambda u, d: alpha * u + beta * d, r, state.delta)

        rho = jnp.asarray(jnp.nan, z.dtype)
        if adapt_damping:
            def adapt(lam):
                if learning_rate is None:
                    quad = predicted
                else:
                    jd = model_terms(delta)
                    quad = tree_vdot(grads, delta) + 0.5 * (curvature_products(z, y, jd, jd)
                                                       + lam * tree_vdot(delta, delta))
                moved = jax.tree_util.tree_map(jnp.add, network.get_layers(params), delta)
                new_h = loss_of(network.apply(network.set_layers(params, moved), x), y)
                ratio = (new_h - h) / quad
                # one LM rule for both optimizers: a NaN ratio (non-finite new loss) raises
                # the damping, as a failed step must
                return jnp.clip(levenberg_marquardt(lam, ratio), min_damping, max_damping), ratio

            lam, rho = jax.lax.cond(state.step % damping_every == 0, adapt,
                                    lambda lam: (lam, rho), lam)
        updates = network.set_layers(params, delta)
        new_state = KfacState(state.step + 1, factors, decomposition, lam, delta, key)
        return updates, new_state, KfacInfo(h, alpha, beta, lam, rho)

    return Kfac(init, update)


def _every(period: int, step: Array, fire, skip, operand):
    """`fire(operand)` on steps that are multiples of `period`, else `skip(operand)`.

    A period of 1 is resolved at trace time (no `lax.cond`, so XLA can fuse the statistics
    with the gradient's backward pass).
    """
    if period == 1:
        return fire(operand)
    return jax.lax.cond(step % period == 0, fire, skip, operand)


def _spd_inverse(m: Array) -> Array:
    """Inverse of a symmetric positive definite matrix, symmetrized.

    `jnp.linalg.inv` (LU) rather than `cho_solve` against the identity. On a quiet 2-core
    XLA:CPU machine the Cholesky route is a little faster for the bench model's 785 x 785
    factor (16 ms against 20 ms, float32, relative errors 8.6e-7 and 8.3e-7); with the other
    core busy it degrades far more (543 ms against 191 ms), and its accuracy on ill-conditioned
    factors is slightly worse (1.1e-2 against 8.7e-3 at condition number 1e6). Decompositions
    are amortized over `inverse_every` steps either way (~2% of a step in the bench setting).
    """
    inverse = jnp.linalg.inv(m)
    return (inverse + inverse.T) / 2
