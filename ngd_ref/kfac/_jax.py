"""K-FAC statistics and damped solves in JAX: the twin of `ngd_ref.kfac._dense`.

Conventions are PROTOCOL s4's (Grosse ch. 4 s5.2, seed 002): per dense layer l,

    A_l = (1/B) sum_b abar_b abar_b^T,     S_l = c sum_b M_b,    block ~ A_l (x) S_l,

with `abar = [a_{l-1}; 1]` and `M_b` by kind and estimator:

* `Estimator.EXACT` (every kind): `M_b = D_b^T Mid_b D_b` with `D_b = dz_b/ds_l` obtained from
  C instrumented VJPs (one per output unit) and `Mid_b = F_R,b` (fisher), `H_L,b` (ggn); the
  empirical kind needs no expectation. Matches the dense reference to rounding.
* `Estimator.SAMPLED` (Grosse s5.4, s5.8, the pullback sampling trick): draw `y ~ r(.|z_b)`
  and backpropagate the pseudo-gradient `Dz = dL(y, z_b)/dz` once; `E[Dz Dz^T] = F_R`, so
  `E[Ds Ds^T] = D^T F_R D` and `S_l` is unbiased for the fisher kind (and for ggn when z are
  natural parameters, where `H_L = F_R`, Martens s9).
* `empirical` kind: `Ds = dL(y_b, z_b)/ds_l` at the observed target (Martens s7).

The pseudo-gradients `Ds_l` come from Grosse s5.8's instrumented VJP: the network adds a
zero "dummy" to every pre-activation, `s_l <- s_l + 0`, and the VJP with respect to the dummies
is exactly `dL/ds_l`. A network is any function that routes each dense layer through a `tap`
(`DenseNetwork`); `mlp_network` (the protocol MLP) and `flax_network` (any Flax module whose
dense layers are `nn.Dense`, instrumented by `nn.intercept_methods`) are provided.

Damped solves (Grosse eq. 23 and eq. 24) act on layer-shaped `V` (n_out x (n_in + 1),
`[dW db]`): `eigen`: `Q_S [(Q_S^T V Q_A) / (d_S d_A^T + lambda)] Q_A^T`; `factored`:
`(S + sqrt(l)/pi I)^{-1} V (A + pi sqrt(l) I)^{-1}`, `pi` the trace-norm split.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ngd_ref._activations_jax import ACTIVATIONS_JAX
from ngd_ref._layout import flatten, unflatten
from ngd_ref._losses_jax import JaxLoss, get_jax_loss
from ngd_ref._problem import Problem
from ngd_ref._spec import Loss
from ngd_ref._validation import as_member, check_damping
from ngd_ref.curvature._jax import device_params, to_device
from ngd_ref.kfac._dense import DampingMethod, KfacApprox, KfacKind
from ngd_ref.kfac._jax_conv import conv_kfac_factors

__all__ = [
    "ACTIVATIONS_JAX",
    "DenseNetwork",
    "Estimator",
    "Tap",
    "damped_solve_layers",
    "factored_pi",
    "flax_network",
    "kfac_factors",
    "kfac_solve",
    "kfac_statistics",
    "homogeneous",
    "instrumented_vjp",
    "mlp_network",
    "problem_network",
    "pseudo_gradient_factors",
]

Array = jax.Array
Layers = list[tuple[Array, Array]]
# tap(index, a_in (B, n_in), s (B, n_out)) -> s: every dense layer must route its output through it.
Tap = Callable[[int, Array, Array], Array]


class NetworkApply(Protocol):
    """`(params, x, tap=no tap) -> z`: a `DenseNetwork`'s forward pass (the tap is optional)."""

    def __call__(self, params: Any, x: Array, tap: Tap = ...) -> Array: ...


class Estimator(str, enum.Enum):
    """How `S_l` is estimated: exact expectation, or one pullback-sampling-trick draw each."""

    EXACT = "exact"
    SAMPLED = "sampled"


class DenseNetwork(NamedTuple):
    """A network of dense layers, instrumented for K-FAC.

    Attributes:
        apply: `(params, x (B, n_0), tap) -> z (B, C)`; must compute every dense layer as
            `s = tap(l, a_prev, a_prev @ W.T + b)` for l = 0, 1, ... in order.
        get_layers: `params -> [(W (n_out, n_in), b (n_out,)), ...]` (also applied to gradients).
        set_layers: `(params, layers) -> params` of the same structure (inverse of `get_layers`).
    """

    apply: NetworkApply
    get_layers: Callable[[Any], Layers]
    set_layers: Callable[[Any, Layers], Any]


def _no_tap(index: int, a: Array, s: Array) -> Array:
    return s


def mlp_network(activations: Sequence[str]) -> DenseNetwork:
    """Build the protocol MLP (PROTOCOL s1); params are a list of `(W (n_out, n_in), b)`."""
    for index, name in enumerate(activations):
        if name not in ACTIVATIONS_JAX:
            raise ValueError(f"activations[{index}]: unknown activation {name!r}; expected one of "
                             f"{', '.join(ACTIVATIONS_JAX)}")
    acts = tuple(ACTIVATIONS_JAX[name] for name in activations)

    def apply(params, x, tap=_no_tap):
        a = x
        for index, ((w, b), act) in enumerate(zip(params, acts, strict=True)):
            a = act(tap(index, a, a @ w.T + b))
        return a

    return DenseNetwork(apply, lambda params: list(params),
                        lambda params, layers: [tuple(layer) for layer in layers])


def problem_network(problem: Problem, dtype=jnp.float64) -> tuple[DenseNetwork, Layers]:
    """Return the protocol MLP of `problem` and its parameters as JAX arrays of `dtype`."""
    return (mlp_network([layer.activation for layer in problem.layers]),
            device_params(problem.layers, problem.params, dtype))


def flax_network(module) -> DenseNetwork:
    """Instrument a Flax `linen` module whose trainable layers are `nn.Dense` (with bias).

    Every `nn.Dense` call is intercepted (`flax.linen.intercept_methods`): its input and output
    pass through the tap, so Grosse s5.8's zero dummies are added without touching the model.
    Layers are numbered in call order; `get_layers` returns `W = kernel^T`. Parameters that
    belong to no `nn.Dense` are not supported (K-FAC here knows only dense layers).
    """
    import flax.linen as nn

    paths: list[tuple[str, ...]] = []

    def apply(params, x, tap=_no_tap):
        counter = iter(range(1 << 30))
        seen: list[tuple[str, ...]] = []

        def interceptor(next_fun, args, kwargs, context):
            if not isinstance(context.module, nn.Dense) or context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            seen.append(tuple(context.module.path))
            return tap(next(counter), args[0], next_fun(*args, **kwargs))

        with nn.intercept_methods(interceptor):
            z = module.apply(params, x)
        if not paths:
            paths.extend(seen)
        return z

    def _locate(params):
        if not paths:
            raise ValueError("params: call network.apply once (e.g. the first statistics "
                             "update) before get_layers, so the Dense layers are known")
        tree = params["params"] if "params" in params else params
        return tree

    def get_layers(params):
        tree = _locate(params)
        out = []
        for path in paths:
            leaf = tree
            for name in path:
                leaf = leaf[name]
            out.append((leaf["kernel"].T, leaf["bias"]))
        return out

    def set_layers(params, layers):
        tree = jax.tree_util.tree_map(lambda v: v, _locate(params))
        tree = _unfreeze(tree)
        for path, (w, b) in zip(paths, layers, strict=True):
            leaf = tree
            for name in path:
                leaf = leaf[name]
            leaf["kernel"], leaf["bias"] = w.T, b
        return {"params": tree} if "params" in params else tree

    return DenseNetwork(apply, get_layers, set_layers)


def _unfreeze(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {key: _unfreeze(value) for key, value in tree.items()}
    return tree


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def instrumented_vjp(network: DenseNetwork, params, x: Array):
    """Forward pass with zero dummies on the pre-activations (Grosse s5.8).

    Returns:
        `(z, inputs, vjp)`: outputs `(B, C)`, the layer inputs `a_{l-1}` `(B, n_in)` per layer,
        and `vjp(dz) -> (param cotangent, [Ds_l (B, n_out), ...])`.
    """
    shapes: list[tuple[int, ...]] = []

    def probe(index, a, s):
        shapes.append(s.shape)
        return s

    jax.eval_shape(lambda p: network.apply(p, x, probe), params)
    dummies = [jnp.zeros(shape, x.dtype) for shape in shapes]

    def forward(p, dummy):
        inputs: list[Array] = []

        def tap(index, a, s):
            inputs.append(a)
            return s + dummy[index]

        return network.apply(p, x, tap), inputs

    (z, inputs), vjp_fn = jax.vjp(forward, params, dummies)

    def vjp(dz):
        zeros = [jnp.zeros_like(a) for a in inputs]
        return vjp_fn((dz, zeros))

    return z, inputs, vjp


def homogeneous(a: Array) -> Array:
    """`abar = [a, 1]` row-wise, `(B, n_in + 1)`."""
    return jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)


def _output_middles(loss: JaxLoss, kind: KfacKind, y: Array, z: Array) -> Array:
    """Dense per-example `F_R` or `H_L`, `(B, C, C)` (columns from the closed-form products)."""
    eye = jnp.eye(z.shape[1], dtype=z.dtype)
    if kind is KfacKind.FISHER:
        return jax.vmap(lambda zb: jax.vmap(lambda u: loss.fisher_vp(zb, u))(eye))(z)
    return jax.vmap(lambda yb, zb: jax.vmap(lambda u: loss.hessian_vp(yb, zb, u))(eye))(y, z)


def kfac_statistics(network: DenseNetwork, params, x: Array, y: Array, loss: str | JaxLoss,
                    kind: KfacKind | str = "fisher", *, estimator: Estimator | str = "exact",
                    key: Array | None = None, scale: float | None = None) -> Layers:
    """K-FAC factors `[(A_l, S_l), ...]` of one batch (PROTOCOL s4).

    Args:
        network: the instrumented network.
        params: its parameters.
        x: inputs `(B, n_0)`.
        y: targets (per the loss).
        loss: a protocol loss name or a `JaxLoss`.
        kind: `fisher`, `ggn` or `empirical`.
        estimator: `exact` (expectations in closed form, C VJPs) or `sampled` (the pullback
            sampling trick: one VJP of a sampled pseudo-gradient; fisher kind, or ggn for
            natural-parameter losses). Ignored for `empirical`.
        key: PRNG key, required by `sampled`.
        scale: the reduction constant `c` (default `1/B`, the mean).

    Returns:
        Per layer `(A_l (n_in+1, n_in+1), S_l (n_out, n_out))`.
    """
    kind = as_member(KfacKind, kind, "kind")
    estimator = as_member(Estimator, estimator, "estimator")
    jloss = get_jax_loss(loss)
    batch = x.shape[0]
    c = 1.0 / batch if scale is None else scale
    z, inputs, vjp = instrumented_vjp(network, params, x)
    a_factors = [homogeneous(a).T @ homogeneous(a) / batch for a in inputs]
    s_factors = pseudo_gradient_factors(vjp, z, y, jloss, kind, estimator, key, c)
    return list(zip(a_factors, s_factors, strict=True))


def pseudo_gradient_factors(vjp, z: Array, y: Array, loss: JaxLoss, kind: KfacKind,
                            estimator: Estimator, key: Array | None, c) -> list[Array]:
    """Compute `S_l = c sum_b M_b` from an instrumented VJP (see the module docstring)."""
    if kind is KfacKind.EMPIRICAL or estimator is Estimator.SAMPLED:
        if kind is KfacKind.EMPIRICAL:
            targets = y
        else:
            if key is None:
                raise ValueError("key: the sampled estimator needs a PRNG key")
            if kind is KfacKind.GGN and not _natural(loss):
                raise ValueError(f"estimator: 'sampled' estimates the GGN only when H_L = F_R "
                                 f"(natural parameters); loss {loss.name!r} is not; use 'exact'")
            targets = jax.vmap(loss.sample)(jax.random.split(key, z.shape[0]), z)
        ds = vjp(jax.vmap(jax.grad(loss.value, argnums=1))(targets, z))[1]
        return [c * d.T @ d for d in ds]
    middles = _output_middles(loss, kind, y, z)
    eye = jnp.eye(z.shape[1], dtype=z.dtype)
    # D_b rows: VJP of the unit cotangent e_k for every example at once -> (C, B, n_out).
    rows = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, z.shape))[1])(eye)
    return [c * jnp.einsum("kbi,bkj,jbl->il", d, middles, d) for d in rows]


def _natural(loss: JaxLoss) -> bool:
    try:
        return Loss(loss.name).outputs_are_natural_parameters
    except ValueError:
        return False


def kfac_factors(problem: Problem, kind: KfacKind | str, *, dtype=jnp.float64,
                 estimator: Estimator | str = "exact", key: Array | None = None,
                 approx: KfacApprox | str = "expand") -> Layers:
    """`kfac_statistics` of a protocol `Problem` (same signature as the dense twin), jitted.

    One compilation per architecture, loss, kind, estimator and shapes (cached), so the zoo's
    problems of one architecture share it. Problems with convolutions (PROTOCOL s12) take
    `approx` (`expand` or `reduce`, `ngd_ref.kfac._jax_conv`; exact estimator only); for dense
    layers both equal s4's factors.
    """
    kind = as_member(KfacKind, kind, "kind")
    estimator = as_member(Estimator, estimator, "estimator")
    approx = as_member(KfacApprox, approx, "approx")
    if not problem.dense_only:
        if estimator is not Estimator.EXACT:
            raise ValueError("estimator: convolutional problems support 'exact' only")
        return conv_kfac_factors(problem, kind, approx=approx, dtype=dtype)
    if estimator is Estimator.SAMPLED and kind is not KfacKind.EMPIRICAL and key is None:
        raise ValueError("key: the sampled estimator needs a PRNG key")
    _, params = problem_network(problem, dtype)
    x = to_device(problem.inputs, dtype)
    y = to_device(problem.targets, np.int32 if Loss(problem.loss).has_class_labels else dtype)
    fn = _jitted_statistics(tuple(layer.activation for layer in problem.layers), problem.loss,
                            kind, estimator)
    key = jax.random.PRNGKey(0) if key is None else key
    return fn(params, x, y, key, to_device(problem.scale, dtype))


@functools.lru_cache(maxsize=128)
def _jitted_statistics(activations: tuple[str, ...], loss: str, kind: KfacKind,
                       estimator: Estimator):
    network = mlp_network(activations)

    def run(params, x, y, key, scale):
        return kfac_statistics(network, params, x, y, loss, kind, estimator=estimator, key=key,
                               scale=scale)

    return jax.jit(run)


# ---------------------------------------------------------------------------------------------
# Damped solves
# ---------------------------------------------------------------------------------------------
def factored_pi(a: Array, s: Array) -> Array:
    """`pi = sqrt((tr A / dim A) / (tr S / dim S))`; 1 if a trace vanishes (dense twin)."""
    ta, ts = jnp.trace(a) / a.shape[0], jnp.trace(s) / s.shape[0]
    ok = (ta > 0) & (ts > 0)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, ta / jnp.where(ok, ts, 1), 1)), 1)


@functools.partial(jax.jit, static_argnames=("method",))
def damped_solve_layers(factors: Sequence[tuple[Array, Array]], v_layers: Sequence[Array],
                        damping: float | Array, method: DampingMethod | str) -> list[Array]:
    """Per layer `V -> (A (x) S + l I)^{-1} vec(V)` (eq. 23) or its factored form (eq. 24).

    `v_layers[l]` is layer-shaped `(n_out, n_in + 1)` (`[dW db]`); results have the same shape.
    """
    method = as_member(DampingMethod, method, "method")
    out = []
    for (a, s), v in zip(factors, v_layers, strict=True):
        if method is DampingMethod.EIGEN:
            d_a, q_a = jnp.linalg.eigh(a)
            d_s, q_s = jnp.linalg.eigh(s)
            inner = (q_s.T @ v @ q_a) / (d_s[:, None] * d_a[None, :] + damping)
            out.append(q_s @ inner @ q_a.T)
        else:
            pi, root = factored_pi(a, s), jnp.sqrt(damping)
            a_d = a + pi * root * jnp.eye(a.shape[0], dtype=a.dtype)
            s_d = s + root / pi * jnp.eye(s.shape[0], dtype=s.dtype)
            # symmetric, not necessarily positive definite: S of an indefinite H_L (the GGN
            # of gaussian_logvar) leaves S + sqrt(l)/pi I indefinite but nonsingular, where a
            # Cholesky solve returns NaN and the protocol's formula is still defined
            left = jax.scipy.linalg.solve(s_d, v, assume_a="sym")
            out.append(jax.scipy.linalg.solve(a_d, left.T, assume_a="sym").T)
    return out


def kfac_solve(problem: Problem, v, damping: float, method: DampingMethod | str,
               kind: KfacKind | str = "fisher", *, dtype=jnp.float64,
               approx: KfacApprox | str = "expand") -> Array:
    """Block-diagonal damped K-FAC solve of canonical `v` (PROTOCOL s4), exact factors."""
    damping = check_damping(damping, positive=True)
    v = np.asarray(v)
    if v.shape != (problem.n_params,):
        raise ValueError(f"v: expected shape ({problem.n_params},), got {v.shape}")
    factors = kfac_factors(problem, kind, dtype=dtype, approx=approx)
    # `[dW db]` blocks and the result's canonical vector assembled on the host
    v_layers = [to_device(np.column_stack([w, b]), dtype) for w, b in unflatten(problem.layers, v)]
    solved = damped_solve_layers(factors, v_layers, to_device(damping, dtype),
                                 as_member(DampingMethod, method, "method"))
    return to_device(flatten([(x[:, :-1], x[:, -1]) for x in map(np.asarray, solved)]), dtype)
