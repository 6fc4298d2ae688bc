"""The canonical parameter layout (PROTOCOL section 1) and conversions from users' layouts.

Canonical: for each layer, `vec(Wbar_l)` with `Wbar_l = [W_l  b_l]` of shape
`(n_out, n_in + 1)` and `vec` stacking columns (Fortran order), layers concatenated. In this
layout `vec(A X B) = (B^T (x) A) vec(X)` (Grosse ch. 4, eq. 16) and a layer's K-FAC block is
`A_l (x) S_l` (PROTOCOL section 4).

Supported foreign layouts:
    * PyTorch: `weight` of shape `(out, in)` and `bias` `(out,)`, e.g. `nn.Linear`;
    * Flax/Haiku/kfac-jax: `kernel` (or `w`) of shape `(in, out)` and `bias` (or `b`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ngd_ref._problem import ProblemError
from ngd_ref._spec import Layer

__all__ = [
    "flatten",
    "from_flax",
    "from_torch",
    "layer_slices",
    "to_flax",
    "to_torch",
    "unflatten",
]


def layer_slices(layers: Sequence[Layer]) -> list[slice]:
    """The slice of the canonical vector holding each layer's `vec([W b])`."""
    slices, start = [], 0
    for layer in layers:
        stop = start + layer.n_params
        slices.append(slice(start, stop))
        start = stop
    return slices


def unflatten(layers: Sequence[Layer], params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split canonical `params` into per-layer `(W (n_out, n_in), b (n_out,))` views.

    For a convolution (PROTOCOL s12) `W` is `(c_out, c_in k_h k_w)`, i.e. the kernel
    `(c_out, c_in, k_h, k_w)` reshaped row-major.
    """
    params = np.asarray(params)
    expected = sum(layer.n_params for layer in layers)
    if params.shape != (expected,):
        raise ProblemError(f"params: expected shape ({expected},), got {params.shape}")
    out = []
    for layer, sl in zip(layers, layer_slices(layers), strict=True):
        wbar = params[sl].reshape(layer.weight_shape, order="F")
        out.append((wbar[:, :-1], wbar[:, -1]))
    return out


def flatten(weights_and_biases: Sequence[tuple[Any, Any]]) -> np.ndarray:
    """Per-layer `(W (n_out, n_in), b (n_out,))` -> canonical `(n,)` float64 vector."""
    blocks = []
    for index, (weight, bias) in enumerate(weights_and_biases):
        weight, bias = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ProblemError(
                f"layer {index}: expected W (n_out, n_in) and b (n_out,), got "
                f"{weight.shape} and {bias.shape}"
            )
        blocks.append(np.column_stack([weight, bias]).reshape(-1, order="F"))
    return np.concatenate(blocks)


def from_torch(state: Mapping[str, Any] | Sequence[tuple[Any, Any]]) -> np.ndarray:
    """PyTorch layout -> canonical vector.

    Args:
        state: either a sequence of `(weight (out, in), bias (out,))` pairs, or a state dict
            (`model.state_dict()` of a stack of `nn.Linear`) whose `*.weight`/`*.bias` entries
            appear in layer order. Tensors are converted with `np.asarray` (call `.detach()`
            first if they require grad).
    """
    pairs = (
        _pairs_from_mapping(state, ("weight",), ("bias",)) if isinstance(state, Mapping) else state
    )
    return flatten([(np.asarray(w), np.asarray(b)) for w, b in pairs])


def to_torch(layers: Sequence[Layer], params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Canonical vector -> `[(weight (out, in), bias (out,)), ...]` (PyTorch `nn.Linear`)."""
    return [(w.copy(), b.copy()) for w, b in unflatten(layers, params)]


def from_flax(params: Mapping[str, Any] | Sequence[tuple[Any, Any]]) -> np.ndarray:
    """Flax/Haiku/kfac-jax layout -> canonical vector.

    Args:
        params: a sequence of `(kernel (in, out), bias (out,))` pairs, or a pytree mapping
            whose leaves-dicts hold `kernel`/`w` and `bias`/`b` (e.g. Flax's
            `{"params": {"Dense_0": {"kernel", "bias"}, ...}}` or Haiku's
            `{"linear": {"w", "b"}, "linear_1": ...}`), layers in insertion order.
    """
    pairs: Sequence[tuple[Any, Any]]
    if isinstance(params, Mapping):
        pairs = _pairs_from_mapping(params, ("kernel", "w"), ("bias", "b"))
    else:
        pairs = params
    return flatten([(np.asarray(k).T, np.asarray(b)) for k, b in pairs])


def to_flax(layers: Sequence[Layer], params: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Canonical vector -> `[{"kernel": (in, out), "bias": (out,)}, ...]` (Flax `nn.Dense`)."""
    return [{"kernel": w.T.copy(), "bias": b.copy()} for w, b in unflatten(layers, params)]


def _pairs_from_mapping(
    tree: Mapping[str, Any], weight_keys: tuple[str, ...], bias_keys: tuple[str, ...]
) -> list[tuple[Any, Any]]:
    """Collect (weight, bias) pairs from a nested mapping or a flat `prefix.weight` dict."""
    if "params" in tree and isinstance(tree["params"], Mapping) and len(tree) == 1:
        tree = tree["params"]
    leaves = {key: value for key, value in tree.items() if not isinstance(value, Mapping)}
    nested: dict[str, Any]
    if leaves:  # flat state dict such as {"0.weight": ..., "0.bias": ...}
        prefixes: list[str] = []
        for key in leaves:
            prefix, _, leaf = key.rpartition(".")
            if leaf in weight_keys and prefix not in prefixes:
                prefixes.append(prefix)
        nested = {p: {k.rpartition(".")[2]: v
                      for k, v in leaves.items() if k.rpartition(".")[0] == p}
                  for p in prefixes}
    else:
        nested = dict(tree)
    pairs = []
    for name, leaf in nested.items():
        weight = next((leaf[k] for k in weight_keys if k in leaf), None)
        bias = next((leaf[k] for k in bias_keys if k in leaf), None)
        if weight is None or bias is None:
            raise ProblemError(
                f"params[{name!r}]: expected keys {weight_keys[0]!r} and {bias_keys[0]!r}, got "
                f"{sorted(leaf)}"
            )
        pairs.append((weight, bias))
    if not pairs:
        raise ProblemError("params: found no layers (expected weight/kernel and bias entries)")
    return pairs
