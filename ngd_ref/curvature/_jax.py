"""Curvature-vector products and diagonals in JAX, for any `apply(params, x)` model.

The scalable twin of `_dense.py`. A model is any function `apply(params, inputs) -> outputs`
mapping a batch `(B, ...)` to outputs `(B, C)`, with `params` any pytree; an `Objective`
adds one of the losses of PROTOCOL section 2 and the reduction:

    h(params) = sum_b w_b L(y_b, apply(params, x)_b),     w_b = c = 1/B (mean) or 1 (sum)

(or the batch's own `weights`, e.g. 0 for padding).

Products (all matrix-free, `v` and results are pytrees like `params`):

* `hvp`: `H v` by forward-over-reverse, `jvp(grad h)` (Grosse ch. 4 s2, seed 002).
* `ggn_vp`: `G v = sum_b w_b J_b^T H_L,b J_b v` (Martens s3): `jax.linearize` of the network
  at `params` (one forward pass, residuals kept), the JVP `J v`, the closed-form output
  product `H_L u` of `ngd_ref._losses_jax` (`O(C)` per example), and the transposed JVP
  (`jax.linear_transpose`) for `J^T`. `curvature_operator` returns the product with the
  linearization done once, for reuse across CG iterations.
* `fisher_vp`: the exact Fisher `F v = sum_b w_b J_b^T F_R,b J_b v` (Martens s5, s9; seeds
  000/001), the same way with the output Fisher `F_R` in closed form.
* `mc_fisher_vp`: the Monte-Carlo Fisher of seeds 000/001 -- targets sampled from the model,
  `y_bs ~ r(.|z_b)`, and `F_hat v = sum_b w_b J_b^T (1/S sum_s g_bs g_bs^T) J_b v` with
  `g_bs = dL(y_bs, z_b)/dz`; unbiased for `F v`.
* `empirical_fisher_vp`: `EF v = sum_b w_b g_b (g_b^T v)` with `g_b = J_b^T e_b`,
  `e_b = dL(y_b, z_b)/dz` (Martens s7). Computed in the same J^T M J form with the rank-one
  middle `M_b = e_b e_b^T`: one JVP gives every `g_b^T v = e_b^T J_b v` at once, so no
  `(B, n)` matrix of per-example gradients is ever formed.
* `curvature_products`: several of these in one program; G, F and EF share one
  linearization and one `J v`, and their transposed JVPs run batched.

Diagonals: `ggn_diag`, `fisher_diag`, `empirical_fisher_diag` are exact: with the per-example
middle factored as `M_b = Q_b diag(lam_b) Q_b^T` (a `C x C` eigendecomposition; `Q_b = e_b`
for EF), `diag(J_b^T M_b J_b) = sum_k lam_bk (J_b^T q_bk)^2` -- `C` per-example VJPs
(per-example gradients of `q_bk^T z_b`), accumulated by `lax.scan` over examples in O(n)
memory; `exact_diagonals` computes several in one such pass (one forward pass and one
pullback per example for all). `hessian_diag` is exact by n HVPs (small models only).
`hutchinson_diag` is the unbiased Rademacher estimator `E[z * (C z)] = diag(C)` for any
product.

Every product accepts `mesh=`: the batch is then sharded over the mesh and partial sums are
all-reduced (`ngd_ref._sharding`), giving the one-device result.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from ngd_ref._activations_jax import ACTIVATIONS_JAX
from ngd_ref._layout import layer_slices, unflatten
from ngd_ref._losses_jax import JaxLoss, get_jax_loss
from ngd_ref._problem import Problem
from ngd_ref._sharding import allsum, run_sharded
from ngd_ref._spec import Conv2d, Layer, Loss, Reduction
from ngd_ref.curvature._dense import Curvature

__all__ = [
    "Batch",
    "Objective",
    "canonical_vector",
    "curvature_operator",
    "curvature_vp",
    "device_params",
    "empirical_fisher_diag",
    "empirical_fisher_vp",
    "fisher_diag",
    "fisher_vp",
    "from_problem",
    "ggn_diag",
    "ggn_vp",
    "gradient",
    "hessian_diag",
    "hutchinson_diag",
    "hvp",
    "loss_value",
    "mc_fisher_vp",
    "mlp_apply",
    "network_apply",
    "mlp_params",
    "to_device",
    "value_and_gradient",
]

Array = jax.Array
Params = Any  # a pytree of arrays
Apply = Callable[[Params, Array], Array]
Operator = Callable[[Params], Params]


class Batch(NamedTuple):
    """A batch: `inputs` `(B, ...)`, `targets` `(B,)` int labels or `(B, C_y)` floats.

    `weights` `(B,)`, optional, replaces the reduction constant: `h = sum_b w_b L_b`. Use it
    for masked or padded batches (weight 0) and importance weights; by default `w_b = c`.
    """

    inputs: Array
    targets: Array
    weights: Array | None = None


@dataclasses.dataclass(frozen=True, init=False)
class Objective:
    """`h(params) = c sum_b L(y_b, apply(params, inputs)_b)` (PROTOCOL sections 1-2).

    Hashable, so it is a static argument of the jitted products: build it once (with a
    module-level `apply`, e.g. `mlp_apply(...)`) and repeated calls reuse the compilation.

    Attributes:
        apply: `(params, inputs (B, ...)) -> outputs (B, C)`; must treat examples
            independently (no batch norm), as the per-example quantities assume.
        loss: a protocol loss name (or `Loss`, or a custom `JaxLoss`).
        reduction: `"mean"` (c = 1/B) or `"sum"` (c = 1).
    """

    apply: Apply
    loss: JaxLoss
    reduction: str = "mean"

    def __init__(self, apply: Apply, loss: JaxLoss | Loss | str, reduction: str = "mean") -> None:
        # the fields hold the resolved `JaxLoss` and reduction value (frozen: set once here)
        if not callable(apply):
            raise ValueError(f"apply: expected a callable (params, inputs) -> outputs, got "
                             f"{type(apply).__name__}")
        object.__setattr__(self, "apply", apply)
        object.__setattr__(self, "loss", get_jax_loss(loss))
        try:
            object.__setattr__(self, "reduction", Reduction(reduction).value)
        except ValueError:
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}") from None

    def weights(self, batch_size: int, dtype: Any) -> Array:
        """Per-example weights `w_b = c`, shape `(B,)`."""
        c = 1.0 / batch_size if self.reduction == "mean" else 1.0
        return jnp.full((batch_size,), c, dtype)

    def per_example_losses(self, params: Params, inputs: Array, targets: Array) -> Array:
        """`L(y_b, z_b)` for every example, `(B,)` (unweighted)."""
        return jax.vmap(self.loss.value)(targets, self.apply(params, inputs))


# ---------------------------------------------------------------------------------------------
# Local computations: sum over the examples held, then all-reduce over `axis` (None: no mesh)
# ---------------------------------------------------------------------------------------------
def local_loss(obj: Objective, params, inputs, targets, weights):
    return jnp.sum(weights * obj.per_example_losses(params, inputs, targets))


def _gauss_newton_operator(obj: Objective, params, inputs, aux, weights,
                           middle: Callable[[Array, Array, Array], Array]) -> Operator:
    """`v -> sum_b w_b J_b^T M_b J_b v` with `M_b u = middle(aux_b, z_b, u)`, linearized once."""
    products = _gauss_newton_products(obj, params, inputs, aux, weights, (middle,))
    return lambda v: products(v)[0]


def _gauss_newton_products(obj: Objective, params, inputs, aux, weights,
                           middles: tuple[Callable[[Array, Array, Array], Array], ...]
                           ) -> Callable[[Params], tuple[Params, ...]]:
    """`v -> (sum_b w_b J_b^T M_b J_b v for each middle)`: one linearization, one `J v`.

    With several middles the transposed JVP is applied to all their cotangents at once.
    """
    z, jvp_fn = jax.linearize(lambda p: obj.apply(p, inputs), params)
    transpose = jax.linear_transpose(jvp_fn, params)

    def apply(v):
        u = jvp_fn(v)
        cotangents = [weights[:, None] * jax.vmap(middle)(aux, z, u) for middle in middles]
        if len(cotangents) == 1:
            return (transpose(cotangents[0])[0],)
        stacked = jax.vmap(lambda c: transpose(c)[0])(jnp.stack(cotangents))
        return tuple(jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
                     for i in range(len(cotangents)))

    return apply


def _middle(loss: JaxLoss, curvature: Curvature) -> Callable[[Array, Array, Array], Array]:
    if curvature is Curvature.GGN:
        return loss.hessian_vp
    if curvature is Curvature.FISHER:
        return lambda y, z, u: loss.fisher_vp(z, u)

    def empirical(y, z, u):
        e = loss.grad(y, z)
        return e * jnp.dot(e, u)

    return empirical


def _mc_middle(loss: JaxLoss, num_samples: int) -> Callable[[Array, Array, Array], Array]:
    """`M_b u = (1/S) sum_s g_s g_s^T u`, `g_s = dL(y_s, z_b)/dz`, `y_s ~ r(.|z_b)`."""

    def middle(key, z, u):
        keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_samples))
        g = jax.vmap(lambda k: loss.grad(loss.sample(k, z), z))(keys)
        return g.T @ (g @ u) / num_samples

    return middle


def local_operator(obj: Objective, curvature: Curvature, axis: str | None, params, inputs, aux,
                    weights) -> Operator:
    """Build the all-reduced curvature product on the examples held (call it in a trace)."""
    if curvature is Curvature.HESSIAN:
        grad_fn = jax.grad(lambda p: local_loss(obj, p, inputs, aux, weights))
        _, local = jax.linearize(grad_fn, params)
    else:
        local = _gauss_newton_operator(obj, params, inputs, aux, weights,
                                       _middle(obj.loss, curvature))
    return lambda v: allsum(local(v), axis)


def curvature_operator(objective: Objective, params: Params, batch: Batch,
                       curvature: Curvature | str, *, axis: str | None = None) -> Operator:
    """`v -> C v` with the linearization at `params` computed once and reused.

    Use it inside a jitted function (or a `shard_map` body, passing its mesh `axis`), e.g. as
    the `matvec` of `ngd_ref.jax.cg_solve`: every call then costs one JVP and one transposed
    JVP, without repeating the forward pass (for the Hessian, the linearized gradient).

    Args:
        objective: the model, loss and reduction.
        params: where the curvature is taken.
        batch: the (local) batch.
        curvature: `hessian`, `ggn`, `fisher` or `empirical_fisher`.
        axis: mesh axis to all-reduce over, when called inside `shard_map`.
    """
    return local_operator(objective, Curvature(curvature), axis, params, batch.inputs,
                           batch.targets, _weights(objective, batch, params))


def _dtype(params: Params) -> Any:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params: expected a pytree with at least one array, got no leaves")
    return jnp.result_type(leaves[0])


def _weights(objective: Objective, batch: Batch, params: Params) -> Array:
    if batch.weights is None:
        return objective.weights(batch.inputs.shape[0], _dtype(params))
    if batch.weights.shape != batch.inputs.shape[:1]:
        raise ValueError(f"batch.weights: expected shape {batch.inputs.shape[:1]}, got "
                         f"{batch.weights.shape}")
    return batch.weights


def run_objective(objective: Objective, mesh: Mesh | None, local, replicated, batch: Batch,
         per_example: tuple[Array, ...] = ()):
    return run_sharded(local, mesh, replicated, (batch.inputs, batch.targets, *per_example),
                       _weights(objective, batch, replicated[0]))


# ---------------------------------------------------------------------------------------------
# Public jitted functions
# ---------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("objective", "mesh"))
def loss_value(objective: Objective, params: Params, batch: Batch, *,
               mesh: Mesh | None = None) -> Array:
    """`h(params)`."""
    def local(axis, params, inputs, targets, weights):
        return allsum(local_loss(objective, params, inputs, targets, weights), axis)

    return run_objective(objective, mesh, local, (params,), batch)


@functools.partial(jax.jit, static_argnames=("objective", "mesh"))
def value_and_gradient(objective: Objective, params: Params, batch: Batch, *,
                       mesh: Mesh | None = None) -> tuple[Array, Params]:
    """`(h(params), grad h(params))` in one forward and one backward pass."""
    def local(axis, params, inputs, targets, weights):
        return allsum(jax.value_and_grad(local_loss, argnums=1)(objective, params, inputs,
                                                                 targets, weights), axis)

    return run_objective(objective, mesh, local, (params,), batch)


def gradient(objective: Objective, params: Params, batch: Batch, *,
             mesh: Mesh | None = None) -> Params:
    """`grad h(params)`."""
    return value_and_gradient(objective, params, batch, mesh=mesh)[1]


@functools.partial(jax.jit, static_argnames=("objective", "curvature", "mesh"))
def curvature_vp(objective: Objective, params: Params, batch: Batch, v: Params,
                 curvature: Curvature | str, *, mesh: Mesh | None = None) -> Params:
    """`C v` for `curvature` in `hessian`, `ggn`, `fisher`, `empirical_fisher` (one product).

    See the module docstring for each product's formula and cost.
    """
    kind = Curvature(curvature)

    def local(axis, params, v, inputs, targets, weights):
        return local_operator(objective, kind, axis, params, inputs, targets, weights)(v)

    return run_objective(objective, mesh, local, (params, v), batch)


@functools.partial(jax.jit, static_argnames=("objective", "curvatures", "mesh"))
def curvature_products(objective: Objective, params: Params, batch: Batch, v: Params,
                       curvatures: tuple[str, ...] = ("hessian", "ggn", "fisher",
                                                      "empirical_fisher"), *,
                       mesh: Mesh | None = None) -> dict[str, Params]:
    """`C v` for several curvatures at once: `{name: C v}`.

    The Gauss-Newton-type products (G, F, EF: `c sum_b J_b^T M_b J_b v`) share one
    linearization of the network and one `J v`, and their transposed JVPs run together; `H v`
    is `curvature_vp`'s forward-over-reverse product.
    """
    kinds = [Curvature(name) for name in curvatures]
    outer = [kind for kind in kinds if kind is not Curvature.HESSIAN]

    def local(axis, params, v, inputs, targets, weights):
        out = {}
        if Curvature.HESSIAN in kinds:
            out[Curvature.HESSIAN.value] = local_operator(objective, Curvature.HESSIAN, axis,
                                                          params, inputs, targets, weights)(v)
        if outer:
            products = _gauss_newton_products(objective, params, inputs, targets, weights,
                                              tuple(_middle(objective.loss, k) for k in outer))
            out.update({kind.value: allsum(product, axis)
                        for kind, product in zip(outer, products(v), strict=True)})
        return out

    return run_objective(objective, mesh, local, (params, v), batch)


def hvp(objective: Objective, params: Params, batch: Batch, v: Params, *,
        mesh: Mesh | None = None) -> Params:
    """Hessian-vector product `H v` (forward-over-reverse)."""
    return curvature_vp(objective, params, batch, v, Curvature.HESSIAN.value, mesh=mesh)


def ggn_vp(objective: Objective, params: Params, batch: Batch, v: Params, *,
           mesh: Mesh | None = None) -> Params:
    """GGN-vector product `G v = c sum_b J_b^T H_L,b J_b v` (Martens s3)."""
    return curvature_vp(objective, params, batch, v, Curvature.GGN.value, mesh=mesh)


def fisher_vp(objective: Objective, params: Params, batch: Batch, v: Params, *,
              mesh: Mesh | None = None) -> Params:
    """Exact Fisher-vector product `F v = c sum_b J_b^T F_R,b J_b v` (Martens s5)."""
    return curvature_vp(objective, params, batch, v, Curvature.FISHER.value, mesh=mesh)


def empirical_fisher_vp(objective: Objective, params: Params, batch: Batch, v: Params, *,
                        mesh: Mesh | None = None) -> Params:
    """Empirical-Fisher-vector product `EF v = c sum_b g_b (g_b^T v)` (Martens s7)."""
    return curvature_vp(objective, params, batch, v, Curvature.EMPIRICAL_FISHER.value, mesh=mesh)


@functools.partial(jax.jit, static_argnames=("objective", "num_samples", "mesh"))
def mc_fisher_vp(objective: Objective, params: Params, batch: Batch, v: Params, key: Array,
                 num_samples: int = 1, *, mesh: Mesh | None = None) -> Params:
    """Monte-Carlo Fisher-vector product with `num_samples` targets sampled per example.

    `F_hat v = c sum_b J_b^T [(1/S) sum_s g_bs g_bs^T] J_b v`, `g_bs = dL(y_bs, z_b)/dz`,
    `y_bs ~ r(.|z_b)` (seeds 000/001: the Fisher as an expectation under the model's own
    predictive distribution, not the data's). Example b uses `jax.random.split(key, B)[b]`,
    so the estimate does not depend on how the batch is sharded.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    keys = jax.random.split(key, batch.inputs.shape[0])
    middle = _mc_middle(objective.loss, num_samples)

    def local(axis, params, v, inputs, targets, keys, weights):
        op = _gauss_newton_operator(objective, params, inputs, keys, weights, middle)
        return allsum(op(v), axis)

    return run_objective(objective, mesh, local, (params, v), batch, (keys,))


# -- diagonals ---------------------------------------------------------------------------------
def _eigen_factor(product: Callable[[Array, Array, Array], Array]):
    """`(aux, z) -> (lam, Q)` with `M = Q diag(lam) Q^T`, `M u = product(aux, z, u)`."""

    def factor(aux, z):
        eye = jnp.eye(z.shape[0], dtype=z.dtype)
        matrix = jax.vmap(lambda e: product(aux, z, e), out_axes=1)(eye)
        return jnp.linalg.eigh((matrix + matrix.T) / 2)

    return factor


def _local_diagonals(objective: Objective, factors, axis, params, inputs, aux, weights):
    """`sum_b w_b sum_k lam_bk (J_b^T q_bk)^2` per factor, one example at a time (O(n) memory).

    One forward pass and one pullback per example serve every factor.
    """

    def one(totals, example):
        x, a, w = example
        z, pullback = jax.vjp(lambda p: objective.apply(p, x[None])[0], params)
        out = []
        for total, factor in zip(totals, factors, strict=True):
            lam, q = factor(a, z)
            rows = jax.vmap(lambda col: pullback(col)[0], in_axes=1)(q)  # leaves (K, ...)
            out.append(jax.tree.map(lambda t, r, lam=lam: t + w * jnp.tensordot(lam, r * r,
                                                                               axes=1),
                                    total, rows))
        return tuple(out), None

    zero = jax.tree.map(jnp.zeros_like, params)
    totals, _ = jax.lax.scan(one, (zero,) * len(factors), (inputs, aux, weights))
    return allsum(totals, axis)


def _diagonal_factor(loss: JaxLoss, kind: Curvature):
    """`(y, z) -> (lam, Q)` with `Q diag(lam) Q^T` the curvature's output-space matrix."""
    if kind is Curvature.EMPIRICAL_FISHER:  # g g^T: one rank-one term
        def factor(y, z):
            return jnp.ones((1,), z.dtype), loss.grad(y, z)[:, None]

        return factor
    return _eigen_factor(_middle(loss, kind))


@functools.partial(jax.jit, static_argnames=("objective", "curvatures", "mesh"))
def exact_diagonals(objective: Objective, params: Params, batch: Batch,
                    curvatures: tuple[str, ...] = ("ggn", "fisher", "empirical_fisher"), *,
                    mesh: Mesh | None = None) -> dict[str, Params]:
    """The exact diagonals of several of G, F and EF in one pass over the examples.

    Each is `c sum_b sum_k lam_bk (J_b^T q_bk)^2` with `Q diag(lam) Q^T` the example's
    output-space matrix (`H_L`, `F_R`, or `g g^T` for EF); one forward pass and one pullback
    per example serve them all (`ggn_diag`, `fisher_diag`, `empirical_fisher_diag` are this
    with one curvature).
    """
    kinds = [Curvature(name) for name in curvatures]
    if Curvature.HESSIAN in kinds:
        raise ValueError("curvatures: the exact diagonal of H is hessian_diag (n HVPs)")
    factors = tuple(_diagonal_factor(objective.loss, kind) for kind in kinds)
    diagonals = run_objective(objective, mesh,
                              functools.partial(_local_diagonals, objective, factors),
                              (params,), batch)
    return {kind.value: diagonal for kind, diagonal in zip(kinds, diagonals, strict=True)}


def ggn_diag(objective: Objective, params: Params, batch: Batch, *,
             mesh: Mesh | None = None) -> Params:
    """Exact diagonal of `G`: `c sum_b sum_k lam_bk (J_b^T q_bk)^2`, `H_L,b = Q diag(lam) Q^T`."""
    return exact_diagonals(objective, params, batch, ("ggn",), mesh=mesh)["ggn"]


def fisher_diag(objective: Objective, params: Params, batch: Batch, *,
                mesh: Mesh | None = None) -> Params:
    """Exact diagonal of the true Fisher `F`, as `ggn_diag` with `F_R` for `H_L`."""
    return exact_diagonals(objective, params, batch, ("fisher",), mesh=mesh)["fisher"]


def empirical_fisher_diag(objective: Objective, params: Params, batch: Batch, *,
                          mesh: Mesh | None = None) -> Params:
    """Exact diagonal of `EF`: `c sum_b g_b^2` from per-example gradients."""
    return exact_diagonals(objective, params, batch, ("empirical_fisher",),
                           mesh=mesh)["empirical_fisher"]


@functools.partial(jax.jit, static_argnames=("objective",))
def hessian_diag(objective: Objective, params: Params, batch: Batch) -> Params:
    """Exact diagonal of `H` by `n` Hessian-vector products (`e_i^T H e_i`); small models only.

    The linearized gradient is computed once and applied to the basis vectors 64 at a time.
    For large models use `hutchinson_diag` with `hvp`.
    """
    flat, unravel = ravel_pytree(params)
    op = curvature_operator(objective, params, batch, Curvature.HESSIAN)
    n = flat.shape[0]

    def entry(i):
        e = jnp.zeros_like(flat).at[i].set(1)
        return ravel_pytree(op(unravel(e)))[0][i]

    return unravel(jax.lax.map(entry, jnp.arange(n), batch_size=min(n, 64)))


def hutchinson_diag(matvec: Operator, like: Params, num_samples: int, key: Array) -> Params:
    """Hutchinson's estimator `(1/S) sum_s z_s * (C z_s)` of `diag(C)`, `z_s` Rademacher.

    Unbiased because `E[z z^T] = I` (each entry of the estimate is `C_ii + sum_{j != i}
    z_i z_j C_ij`). Sample s uses `jax.random.fold_in(key, s)`. Jit-able when `matvec` is.

    Args:
        matvec: `v -> C v` on pytrees like `like` (e.g. `partial(ggn_vp, obj, params, batch)`
            or a `curvature_operator`).
        like: a pytree with the shapes and dtypes of the vectors.
        num_samples: S >= 1.
        key: a PRNG key.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    flat, unravel = ravel_pytree(like)

    def add_sample(s, total):
        z = jax.random.rademacher(jax.random.fold_in(key, s), flat.shape, flat.dtype)
        return total + z * ravel_pytree(matvec(unravel(z)))[0]

    total = jax.lax.fori_loop(0, num_samples, add_sample, jnp.zeros_like(flat))
    return unravel(total / num_samples)


# ---------------------------------------------------------------------------------------------
# The canonical MLP of PROTOCOL section 1
# ---------------------------------------------------------------------------------------------
_ACTIVATIONS = ACTIVATIONS_JAX  # derivatives without cancellation at saturation


@functools.cache
def mlp_apply(activations: tuple[str, ...]) -> Apply:
    """Build the protocol's MLP, `a_l = phi_l(W_l a_{l-1} + b_l)`, on params `[(W_l, b_l), ...]`.

    Cached per activation tuple, so every problem of one architecture shares one function
    (and one compilation of each product).
    """
    activations = tuple(activations)
    unknown = [a for a in activations if a not in _ACTIVATIONS]
    if unknown:
        raise ValueError(
            f"activations: unknown {unknown}; expected names in {sorted(_ACTIVATIONS)}")

    def apply(params: Sequence[tuple[Array, Array]], inputs: Array) -> Array:
        a = inputs
        for (w, b), act in zip(params, activations, strict=True):
            a = _ACTIVATIONS[act](a @ w.T + b)
        return a

    return apply


def mlp_params(layers: Sequence[Layer], theta: Any, dtype: Any = None) -> list[tuple[Array, Array]]:
    """Canonical vector (PROTOCOL s1, column-major `vec([W b])`) -> `[(W (out, in), b), ...]`."""
    theta = jnp.asarray(theta, dtype)
    out = []
    for layer, sl in zip(layers, layer_slices(layers), strict=True):
        rows, cols = layer.weight_shape
        wbar = theta[sl].reshape(cols, rows).T  # column-major unstacking
        out.append((wbar[:, :-1], wbar[:, -1]))  # a conv's W is (c_out, c_in k_h k_w), s12
    return out


def network_apply(layers: Sequence[Layer | Conv2d]) -> Apply:
    """The protocol network of PROTOCOL s1 and s12 (convolutions first), on `[(W_l, b_l), ...]`.

    A convolution is `jax.lax.conv_general_dilated` (a cross-correlation, NCHW/OIHW, zero
    padding) on the image `a.reshape(B, c_in, H, W)` with the kernel
    `W.reshape(c_out, c_in, k_h, k_w)`; its output is flattened channel-major. Dense-only
    networks are `mlp_apply`. Cached per architecture (including each convolution's input
    size, which the tuple itself does not carry).
    """
    if all(not layer.is_convolution for layer in layers):
        return mlp_apply(tuple(layer.activation for layer in layers))
    return _conv_apply(tuple((tuple(layer), getattr(layer, "input_hw", None))
                             for layer in layers))


@functools.cache
def _conv_apply(key: tuple) -> Apply:
    layers = [Conv2d(*fields, input_hw=hw) if hw is not None else Layer(*fields)
              for fields, hw in key]
    acts = [_ACTIVATIONS[layer.activation] for layer in layers]

    def apply(params: Sequence[tuple[Array, Array]], inputs: Array) -> Array:
        a = inputs
        for (w, b), act, layer in zip(params, acts, layers, strict=True):
            if layer.is_convolution:
                image = a.reshape(a.shape[0], *layer.input_shape)
                kernel = w.reshape(layer.c_out, layer.c_in, *layer.kernel)
                s = jax.lax.conv_general_dilated(
                    image, kernel, layer.stride, [(p, p) for p in layer.padding],
                    dimension_numbers=("NCHW", "OIHW", "NCHW")) + b[None, :, None, None]
                a = act(s.reshape(a.shape[0], -1))
            else:
                a = act(a @ w.T + b)
        return a

    return apply


def canonical_vector(params: Sequence[tuple[Array, Array]]) -> Array:
    """`[(W, b), ...]` (params or a vector like them) -> canonical `(n,)` vector."""
    return jnp.concatenate([jnp.concatenate([w, b[:, None]], axis=1).T.reshape(-1)
                            for w, b in params])


def from_problem(problem: Problem, dtype: str = "float64") -> tuple[Objective, list, Batch]:
    """Convert a protocol `Problem` to `(objective, params, batch)` in `dtype`.

    Raises:
        ValueError: for an unknown dtype, or float64 without `jax_enable_x64`.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    if dtype == "float64" and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError("dtype: float64 needs jax.config.update('jax_enable_x64', True) first")
    objective = Objective(network_apply(problem.layers), problem.loss, problem.reduction)
    labels = Loss(problem.loss).has_class_labels
    targets = to_device(problem.targets, np.int32 if labels else dtype)
    batch = Batch(to_device(problem.inputs, dtype), targets)
    return objective, device_params(problem.layers, problem.params, dtype), batch


def to_device(array: Any, dtype: Any) -> Array:
    """A host array as a device array of `dtype`, cast on the host.

    Outside a trace, `jnp.asarray(x, dtype)` compiles a conversion (in JAX 0.10 a `stage`) per
    shape and dtype; `jax.device_put` of the cast array compiles nothing.
    """
    return jax.device_put(np.asarray(array, dtype))


def device_params(layers: Sequence[Layer], theta: Any, dtype: Any) -> list[tuple[Array, Array]]:
    """Canonical host `theta` -> `[(W, b), ...]` on the device, unstacked on the host.

    The same as `mlp_params`, which is for traced `theta`: eagerly its slices compile each.
    """
    return [(to_device(w, dtype), to_device(b, dtype)) for w, b in unflatten(layers, theta)]
