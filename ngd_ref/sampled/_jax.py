"""The JAX twin of the sampled estimators (PROTOCOL s11) and of s13's eigenpairs.

For the protocol's small problems, in the canonical layout (`theta` the flat parameter
vector, `mlp_params(layers, theta)` the network's pytree):

* `output_jacobians`: `J_b = dz_b/dtheta`, `(B, C, n)`, one `jacfwd` of the batched network
  (examples are independent);
* `sampled_scores`: `u_{b,s} = dL(yhat_{b,s}, z_b)/dz` with `yhat_{b,s} = loss.sample(k_{b,s},
  z_b)`, `k_{b,s}` from `split(split(key, B)[b], S)[s]` (independent over b and s);
  `sketch_scores`: `u_{b,s} = Q_b w_{b,s}`, `Q_b = V sqrt(Lambda)` from `F_R,b = V Lambda V^T`
  (built by `loss.fisher_vp` on the basis), Rademacher `w`;
* `mc_fisher = c sum_b (1/S) G_b^T G_b`, `G_b = U_b J_b` (rows `gh^T`); `mc_fisher_diag` its
  diagonal; `mc_kfac_s`: `S_l = c sum_b (1/S) Ds^T Ds`, `Ds = U_b (dz/ds_l)`, the bias
  columns of `J_b` (PROTOCOL s1's layout) -- the pullback sampling trick with the same sampled
  targets for every layer (Grosse s5.4), or the sketch;
* `lanczos`: Lanczos with full reorthogonalization on a symmetric operator, run for n steps
  (restarting with a fresh orthogonal vector at an invariant subspace), so its Ritz pairs
  are all n eigenpairs (Golub and Van Loan s10.1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ngd_ref.curvature._jax import Objective, mlp_params

__all__ = [
    "lanczos",
    "mc_fisher",
    "mc_fisher_diag",
    "mc_kfac_s",
    "output_jacobians",
    "per_example_gradients",
    "sampled_scores",
    "sketch_scores",
]


def output_jacobians(objective: Objective, layers, theta, inputs):
    """`J_b = dz_b/dtheta` for every example, `(B, C, n)`."""
    return jax.jacfwd(lambda t: objective.apply(mlp_params(layers, t), inputs))(theta)


def _outputs(objective: Objective, layers, theta, inputs):
    return objective.apply(mlp_params(layers, theta), inputs)


def sampled_scores(objective: Objective, z, key, num_samples: int):
    """`(B, S, C)` scores at targets sampled from the model, i.i.d. over examples and draws."""
    loss = objective.loss

    def example(k, zb):
        ys = jax.vmap(loss.sample, in_axes=(0, None))(jax.random.split(k, num_samples), zb)
        return jax.vmap(loss.grad, in_axes=(0, None))(ys, zb)

    return jax.vmap(example)(jax.random.split(key, z.shape[0]), z)


def sketch_scores(objective: Objective, z, key, num_samples: int):
    """`(B, S, C)` rows `(Q_b w)^T`, `Q_b Q_b^T = F_R,b`, Rademacher `w` (curvature propagation)."""
    loss = objective.loss
    c = z.shape[1]

    def example(k, zb):
        eye = jnp.eye(c, dtype=zb.dtype)
        fisher = jax.vmap(lambda e: loss.fisher_vp(zb, e))(eye)
        lam, vec = jnp.linalg.eigh((fisher + fisher.T) / 2)
        root = vec * jnp.sqrt(jnp.clip(lam, 0, None))
        w = jax.random.rademacher(k, (num_samples, c), dtype=zb.dtype)
        return w @ root.T

    return jax.vmap(example)(jax.random.split(key, z.shape[0]), z)


def _scale(objective: Objective, batch: int, num_samples: int, dtype):
    c = 1.0 / batch if objective.reduction == "mean" else 1.0
    return jnp.asarray(c / num_samples, dtype)


@functools.partial(jax.jit, static_argnames=("objective", "layers", "num_samples"))
def mc_fisher(objective: Objective, layers, theta, inputs, key, num_samples: int):
    """`c sum_b (1/S) sum_s gh gh^T` (PROTOCOL s11), `(n, n)`."""
    jac = output_jacobians(objective, layers, theta, inputs)
    u = sampled_scores(objective, _outputs(objective, layers, theta, inputs), key, num_samples)
    g = jnp.einsum("bsc,bcn->bsn", u, jac)
    return _scale(objective, inputs.shape[0], num_samples, theta.dtype) * jnp.einsum(
        "bsn,bsm->nm", g, g)


@functools.partial(jax.jit, static_argnames=("objective", "layers", "num_samples"))
def mc_fisher_diag(objective: Objective, layers, theta, inputs, key, num_samples: int):
    """`c sum_b (1/S) sum_s gh * gh` (PROTOCOL s11), `(n,)`."""
    jac = output_jacobians(objective, layers, theta, inputs)
    u = sampled_scores(objective, _outputs(objective, layers, theta, inputs), key, num_samples)
    g = jnp.einsum("bsc,bcn->bsn", u, jac)
    return _scale(objective, inputs.shape[0], num_samples, theta.dtype) * jnp.sum(g * g,
                                                                                  axis=(0, 1))


@functools.partial(jax.jit, static_argnames=("objective", "layers", "num_samples", "sketch"))
def mc_kfac_s(objective: Objective, layers, theta, inputs, key, num_samples: int,
              sketch: bool):
    """Per layer `S_l = c sum_b (1/S) sum_s Ds Ds^T` (targets or sketch), a list."""
    jac = output_jacobians(objective, layers, theta, inputs)
    z = _outputs(objective, layers, theta, inputs)
    u = (sketch_scores if sketch else sampled_scores)(objective, z, key, num_samples)
    scale = _scale(objective, inputs.shape[0], num_samples, theta.dtype)
    out, stop = [], 0
    for layer in layers:
        stop += (layer.n_in + 1) * layer.n_out
        ds = jnp.einsum("bsc,bck->bsk", u, jac[:, :, stop - layer.n_out: stop])
        out.append(scale * jnp.einsum("bsk,bsl->kl", ds, ds))
    return out


@functools.partial(jax.jit, static_argnames=("objective", "layers"))
def per_example_gradients(objective: Objective, layers, theta, inputs, targets):
    """Rows `grad_theta L(y_b, f(x_b))`, unreduced, `(B, n)`."""
    def one(x, y):
        return jax.grad(lambda t: objective.loss.value(
            y, objective.apply(mlp_params(layers, t), x[None])[0]))(theta)

    return jax.vmap(one)(inputs, targets)


def lanczos(matvec, n: int, key, dtype):
    """All n Ritz pairs `(values, vectors (n, n))` of a symmetric operator (full reorth.)."""
    basis = jnp.zeros((n, n), dtype)
    alphas = jnp.zeros(n, dtype)
    betas = jnp.zeros(n, dtype)
    q = jax.random.normal(key, (n,), dtype)
    q = q / jnp.linalg.norm(q)
    keys = jax.random.split(key, n)

    def orthogonalize(v, basis):
        for _ in range(2):  # twice is enough (Giraud et al. 2005)
            v = v - basis.T @ (basis @ v)
        return v

    def step(carry, j):
        basis, alphas, betas, q = carry
        basis = basis.at[j].set(q)
        w = matvec(q)
        alpha = q @ w
        w = orthogonalize(w, basis)
        beta = jnp.linalg.norm(w)
        tiny = 1e3 * jnp.finfo(dtype).eps * (jnp.abs(alpha) + beta + 1)
        fresh = orthogonalize(jax.random.normal(keys[j], (n,), dtype), basis)
        restart = beta <= tiny
        nxt = jnp.where(restart, fresh / jnp.linalg.norm(fresh), w / jnp.where(beta > 0, beta, 1))
        betas = betas.at[j].set(jnp.where(restart, 0, beta))
        return (basis, alphas.at[j].set(alpha), betas, nxt), None

    (basis, alphas, betas, _), _ = jax.lax.scan(step, (basis, alphas, betas, q), jnp.arange(n))
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    values, vectors = jnp.linalg.eigh(tri)
    return values, basis.T @ vectors
