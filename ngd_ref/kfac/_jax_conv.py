"""K-FAC expand and reduce statistics of convolutional problems in JAX (PROTOCOL s12).

The twin of the convolution branch of `ngd_ref.kfac._dense`. The network is written on
patch matrices (im2col by `Conv2d.patch_index`, with a zero entry for the padding): layer l
computes `S_l = P_l W_l^T + b_l` with `P_l` of shape `(B, T, d)` (a dense layer is `T = 1`),
and Grosse s5.8's instrumented VJP (a zero dummy added to every `S_l`) gives the per-position
pseudo-gradients `Ds_{b,t}` or, from the C unit cotangents, the rows of `J_{b,t}`. Then

* expand: `A_l = (1/B) sum_{b,t} abar_{b,t} abar_{b,t}^T`, `S_l = c (1/T) sum_{b,t} M_{b,t}`;
* reduce: `A_l = (1/B) sum_b abar_b abar_b^T` (`abar_b` the mean patch),
  `S_l = c sum_b M_b` with `Jb = sum_t J_{b,t}` (or `sum_t Ds_{b,t}`, empirical).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ngd_ref._activations_jax import ACTIVATIONS_JAX
from ngd_ref._losses_jax import get_jax_loss
from ngd_ref._problem import Problem
from ngd_ref._spec import Conv2d, Layer, Loss
from ngd_ref._validation import as_member
from ngd_ref.curvature._jax import device_params, to_device
from ngd_ref.kfac._dense import KfacApprox, KfacKind

__all__ = ["conv_kfac_factors"]

Array = jax.Array


def _patch_forward(layers, params, x: Array, dummies):
    """Forward on patch matrices; returns `(z, [P_l (B, T, d)])`, dummies added to `S_l`."""
    a, patches = x, []
    for layer, (w, b), dummy in zip(layers, params, dummies, strict=True):
        if layer.is_convolution:
            padded = jnp.concatenate([a, jnp.zeros((a.shape[0], 1), a.dtype)], axis=1)
            p = padded[:, jnp.asarray(np.asarray(layer.patch_index))].transpose(0, 2, 1)
        else:
            p = a[:, None, :]
        patches.append(p)
        s = p @ w.T + b + dummy                                    # (B, T, c_out)
        a = ACTIVATIONS_JAX[layer.activation](s.transpose(0, 2, 1).reshape(a.shape[0], -1))
    return a, patches


def _statistics(layers, kind: KfacKind, approx: KfacApprox, loss_name: str,
                params, x: Array, y: Array, scale: Array):
    loss = get_jax_loss(loss_name)
    batch = x.shape[0]
    dummies = [jnp.zeros((batch, layer.n_positions, layer.weight_shape[0]), x.dtype)
               for layer in layers]
    (z, patches), vjp_fn = jax.vjp(lambda d: _patch_forward(layers, params, x, d), dummies)
    zero_patches = [jnp.zeros_like(p) for p in patches]

    def vjp(dz):
        return vjp_fn((dz, zero_patches))[0]                     # [Ds_l (B, T, c_out)]

    if kind is KfacKind.EMPIRICAL:
        ds = vjp(jax.vmap(jax.grad(loss.value, argnums=1))(y, z))
    else:
        eye = jnp.eye(z.shape[1], dtype=z.dtype)
        if kind is KfacKind.FISHER:
            middles = jax.vmap(lambda zb: jax.vmap(lambda u: loss.fisher_vp(zb, u))(eye))(z)
        else:
            middles = jax.vmap(lambda yb, zb: jax.vmap(
                lambda u: loss.hessian_vp(yb, zb, u))(eye))(y, z)
        rows = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, z.shape)))(eye)  # [(C, B, T, o)]
    out = []
    for index, (layer, p) in enumerate(zip(layers, patches, strict=True)):
        positions = layer.n_positions
        abar = jnp.concatenate([p, jnp.ones((*p.shape[:2], 1), p.dtype)], axis=2)
        if approx is KfacApprox.EXPAND:
            a = jnp.einsum("bti,btj->ij", abar, abar) / batch
        else:
            mean = abar.mean(axis=1)
            a = mean.T @ mean / batch
        if kind is KfacKind.EMPIRICAL:
            d = ds[index]
            s = (jnp.einsum("bti,btj->ij", d, d) / positions if approx is KfacApprox.EXPAND
                 else d.sum(axis=1).T @ d.sum(axis=1))
        else:
            r = rows[index]                                      # (C, B, T, c_out)
            if approx is KfacApprox.EXPAND:
                s = jnp.einsum("kbti,bkj,jbtl->il", r, middles, r) / positions
            else:
                rs = r.sum(axis=2)
                s = jnp.einsum("kbi,bkj,jbl->il", rs, middles, rs)
        out.append((a, scale * s))
    return out


@functools.lru_cache(maxsize=64)
def _jitted(key: tuple, kind: KfacKind, approx: KfacApprox, loss: str):
    layers = tuple(Conv2d(*fields, input_hw=hw) if hw is not None else Layer(*fields)
                   for fields, hw in key)
    return jax.jit(functools.partial(_statistics, layers, kind, approx, loss))


def conv_kfac_factors(problem: Problem, kind: KfacKind | str, *,
                      approx: KfacApprox | str = "expand", dtype=jnp.float64) -> list:
    """K-FAC factors `[(A_l, S_l), ...]` of a problem with convolutions (exact expectations).

    Equal to `ngd_ref.dense.kfac_factors(problem, kind, approx=approx)` up to rounding.
    """
    kind = as_member(KfacKind, kind, "kind")
    approx = as_member(KfacApprox, approx, "approx")
    key = tuple((tuple(layer), getattr(layer, "input_hw", None)) for layer in problem.layers)
    params = device_params(problem.layers, problem.params, dtype)
    labels = Loss(problem.loss).has_class_labels
    y = to_device(problem.targets, np.int32 if labels else dtype)
    return _jitted(key, kind, approx, problem.loss)(
        params, to_device(problem.inputs, dtype), y, to_device(problem.scale, dtype))
