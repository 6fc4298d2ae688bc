"""Patch matrices of a layer (PROTOCOL s12): im2col and its adjoint, on any array type.

A layer maps its flattened input `a` to pre-activations `S = Wbar Abar` with the homogeneous
patch matrix `Abar = [P; 1^T]`, `P` of shape `(patch_size, T)`: for a convolution `P` is the
im2col matrix (`Conv2d.patch_index`), for a dense layer (`T = 1`) it is the input itself as one
column. Both functions work on float64 arrays and on numpy object arrays of mpmath numbers (a
gather by an index array with a zero entry appended for the padding, and a scatter-add), and
carry any trailing axes along (tangents in n parameter directions).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse

from ngd_ref._backend import Backend
from ngd_ref._spec import Conv2d, Layer

__all__ = ["patches", "patches_adjoint", "weighted_patches_adjoint"]


def patches(layer: Layer | Conv2d, a: np.ndarray, bk: Backend) -> np.ndarray:
    """`P`, `(patch_size, T, *rest)`, from the flattened input `a`, `(input_size, *rest)`."""
    if not layer.is_convolution:
        return a[:, None]
    padded = np.concatenate([a, bk.zeros((1, *a.shape[1:]))])
    return padded[layer.patch_index]


def patches_adjoint(layer: Layer | Conv2d, g: np.ndarray, bk: Backend) -> np.ndarray:
    """The adjoint of `patches`: `g` `(patch_size, T, *rest)` -> `(input_size, *rest)`.

    `sum_{k,t} g[k, t] e_{index[k, t]}`: every patch entry's cotangent is added to the input
    entry it was read from (the padding entry is dropped).
    """
    if not layer.is_convolution:
        return g[:, 0]
    rest = g.shape[2:]
    if g.dtype != object:  # float64: one sparse product instead of an unbuffered add.at
        flat = g.reshape(layer.patch_size * layer.n_positions, -1)
        return (_scatter(tuple(layer), layer.input_hw) @ flat).reshape(layer.input_size, *rest)
    out = bk.zeros((layer.input_size + 1, *rest))
    np.add.at(out, layer.patch_index.reshape(-1), g.reshape(-1, *rest))
    return out[: layer.input_size]


def weighted_patches_adjoint(layer: Layer | Conv2d, w: np.ndarray, g: np.ndarray,
                             bk: Backend) -> np.ndarray:
    """`patches_adjoint(layer, W^T G)`: the cotangent of a layer's input from `G = dL/dS`.

    `w` is the weight matrix `W` `(c_out, patch_size)` (no bias column) and `g` is `G`,
    `(c_out, T, *rest)`; the result is `(input_size, *rest)`, i.e. `M^T vec(G)` with
    `M = d vec_rows(S) / d a` the layer's input Jacobian (PROTOCOL s12: `S = W P + b 1^T`, so
    `dS = W dP` and the adjoint of `dP = patches(da)` is `patches_adjoint`). In float64 a
    convolution's `M^T = S_adj (W^T (x) I_T)` is formed as one sparse matrix (`S_adj` the 0/1
    matrix of `patches_adjoint`): one sparse product with inner dimension `c_out T`, instead
    of a dense product with inner dimension `c_out` and a `(patch_size, T, *rest)`
    intermediate. On object arrays (mpmath) the two steps run as written.
    """
    rows, rest = w.shape[0], g.shape[2:]
    if not layer.is_convolution or g.dtype == object:
        weighted = (w.T @ g.reshape(rows, -1)).reshape(w.shape[1], layer.n_positions, *rest)
        return patches_adjoint(layer, weighted, bk)
    spread = scipy.sparse.kron(scipy.sparse.csr_matrix(w.T), scipy.sparse.eye(layer.n_positions),
                               format="csr")                    # (patch_size T, c_out T)
    operator = _scatter(tuple(layer), layer.input_hw) @ spread  # (input_size, c_out T)
    flat = g.reshape(rows * layer.n_positions, -1)
    return (operator @ flat).reshape(layer.input_size, *rest)


@functools.lru_cache(maxsize=64)
def _scatter(fields: tuple, input_hw: tuple[int, int]) -> scipy.sparse.csr_matrix:
    """The 0/1 matrix of `patches_adjoint`, `(input_size, patch_size T)` (padding dropped)."""
    layer = Conv2d(*fields, input_hw=input_hw)
    index = layer.patch_index.reshape(-1)
    inside = index < layer.input_size
    columns = np.arange(index.shape[0])[inside]
    return scipy.sparse.csr_matrix((np.ones(columns.shape[0]), (index[inside], columns)),
                                   shape=(layer.input_size, index.shape[0]))
