"""A problem in the terms a JAX user writes: a Flax-layout params pytree and a loss function.

Shared by the `optax` and `kfac-jax` adapters. Parameters are `[{"kernel": (n_in, n_out),
"bias": (n_out,)}, ...]` (`ngd_ref.to_flax`), the network is `a = phi(a_prev @ kernel + bias)`
and the objective is `h = c sum_b L(y_b, z_b)` with the per-example losses of
`ngd_ref._losses_jax` (PROTOCOL s2), `c = 1/B` or 1. Converting results back to the
canonical layout goes through `ngd_ref.from_flax`, so no number is touched on the way. A
convolution (PROTOCOL s12) is `{"kernel": (k_h, k_w, c_in, c_out), "bias": (c_out,)}` on
NCHW images (`verify.adapters._jax_conv`), its output flattened channel-major.
Float64 needs a 64-bit context (`verify.adapters._x64`; the adapters' methods run in one):
this module leaves JAX's global flag alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ngd_ref import Conv2d, Layer, Problem, flatten, unflatten
from ngd_ref._losses_jax import get_jax_loss
from verify.adapters._jax_conv import conv_preactivation, hwio_kernel, weight_matrix

__all__ = ["JaxModel", "activation", "jax_model"]


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function `phi` of PROTOCOL s1."""
    return {
        "identity": lambda s: s,
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "relu": jax.nn.relu,
        "softplus": jax.nn.softplus,
        "softmax": jax.nn.softmax,
    }[name]


@dataclasses.dataclass(frozen=True)
class JaxModel:
    """A problem as JAX arrays and functions (float64).

    Attributes:
        params: Flax-layout pytree.
        inputs: `(B, n_in)`.
        targets: as in the problem.
        apply: `(params, inputs) -> outputs (B, C)`.
        loss: `(params, inputs, targets) -> h`.
        per_example_loss: `(y, z) -> L` for one example.
        scale: the reduction constant c.
    """

    problem: Problem
    params: Any
    inputs: jax.Array
    targets: jax.Array
    apply: Callable[..., jax.Array]
    loss: Callable[..., jax.Array]
    per_example_loss: Callable[..., jax.Array]
    scale: float

    def canonical(self, tree: Any) -> np.ndarray:
        """A params-shaped pytree -> canonical `(n,)` vector."""
        return flatten([(_weight(layer, t["kernel"]), np.asarray(t["bias"]))
                        for layer, t in zip(self.problem.layers, tree, strict=True)])

    def tree(self, vector: np.ndarray) -> Any:
        """Canonical `(n,)` vector -> params-shaped pytree."""
        return _tree(self.problem, vector)

    def from_raveled(self, flat: jax.Array) -> np.ndarray:
        """A vector in `ravel_pytree(params)` order -> canonical."""
        _, unravel = ravel_pytree(self.params)
        return self.canonical(unravel(flat))

    def to_raveled(self, vector: np.ndarray) -> jax.Array:
        """Canonical -> `ravel_pytree(params)` order."""
        return ravel_pytree(self.tree(vector))[0]


def _weight(layer: Layer | Conv2d, kernel: Any) -> np.ndarray:
    """A layer's kernel -> `W (n_out, n_in)` of PROTOCOL s1 (s12 for a convolution)."""
    return weight_matrix(layer, kernel) if layer.is_convolution else np.asarray(kernel).T


def _tree(problem: Problem, vector: np.ndarray) -> list[dict[str, jax.Array]]:
    """Canonical `(n,)` vector -> `[{"kernel", "bias"}, ...]` (HWIO kernels for convolutions)."""
    return [{"kernel": jnp.asarray(hwio_kernel(layer, w) if layer.is_convolution else w.T),
             "bias": jnp.asarray(b)}
            for layer, (w, b) in zip(problem.layers, unflatten(problem.layers,
                                                               np.asarray(vector)), strict=True)]


def _preactivation(layer: Layer | Conv2d, params: dict[str, Any], a: jax.Array) -> jax.Array:
    """`s` of one layer on the flattened input `a`, flattened (channel-major for a conv)."""
    if layer.is_convolution:
        _, s, _ = conv_preactivation(layer, params["kernel"], params["bias"], a)
        return s.reshape(a.shape[0], -1)
    return a @ params["kernel"] + params["bias"]


def jax_model(problem: Problem) -> JaxModel:
    """Translate a problem (PROTOCOL s1-s2, s12) into a JAX model and loss."""
    acts = [activation(layer.activation) for layer in problem.layers]
    per_example = get_jax_loss(problem.loss).value
    scale = problem.scale

    def apply(params, inputs):
        a = inputs
        for layer, prm, phi in zip(problem.layers, params, acts, strict=True):
            a = phi(_preactivation(layer, prm, a))
        return a

    def loss(params, inputs, targets):
        z = apply(params, inputs)
        return scale * jnp.sum(jax.vmap(per_example)(targets, z))

    params = _tree(problem, problem.params)
    return JaxModel(problem, params, jnp.asarray(problem.inputs), jnp.asarray(problem.targets),
                    apply, loss, per_example, scale)
