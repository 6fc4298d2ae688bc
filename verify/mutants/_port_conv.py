"""Convolutions (PROTOCOL s12) in the independent numpy port: its own im2col and derivatives.

Written from the protocol text alone, as a third party would (no `ngd_ref` geometry such as
`Conv2d.patch_index` is used): a layer is recognised as a convolution by its `kernel` field,
and the spatial sizes follow from `problem.input_shape` and the fields of the layers before.

A convolution with `T = H' W'` positions is a dense map of its *patch matrix*: the rows of
`P` (`T x c_in k_h k_w`) are the im2col patches (entries in (channel, kernel row, kernel
column) order, zero where they fall in the padding), `Pbar = [P 1]`, and the pre-activations
are `S = Pbar Wbar^T` (`T x c_out`), flattened channel-major (`s[o T + t]`). Its adjoint
(the input cotangent) is the scatter-add of the patch cotangents. A dense layer is the case
`T = 1`, `P = a^T` (`index is None`). With `J_{b,t} = dz/ds_{l,t}` (PROTOCOL s12):

* K-FAC expand: `A_l = (1/B) sum_b Pbar_b^T Pbar_b`, `S_l = c (1/T) sum_{b,t} J_{b,t}^T M_b
  J_{b,t}`; reduce: `A_l = (1/B) sum_b pbar_b pbar_b^T` with the mean row `pbar_b`,
  `S_l = c sum_b Jb^T M_b Jb`, `Jb = sum_t J_{b,t}`.
* The Hessian: forward tangents of every patch matrix and pre-activation along all n
  directions, then the backward pass differentiated (Pearlmutter's R-op on the basis), the
  same scheme as the port's dense `_example_hessian` with the sum over positions.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import numpy.typing as npt

from verify.mutants._port_base import PortPrimitives

__all__ = ["Geometry", "geometry", "kfac_statistics", "patch_matrix", "scatter_cotangents",
           "scatter_tangents"]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One layer's shapes: `Wbar` is `rows x (patch + 1)`; `index` gathers the patches.

    Attributes:
        rows: output channels (a dense layer's `n_out`).
        patch: entries of a patch (a dense layer's `n_in`).
        positions: T (1 for a dense layer).
        in_size: the flattened input's size.
        index: `(T, patch)` flat input indices, `in_size` for a padding zero; None (dense).
    """

    rows: int
    patch: int
    positions: int
    in_size: int
    index: npt.NDArray[np.intp] | None


def _im2col_index(channels: int, height: int, width: int, kernel, stride, padding
                  ) -> tuple[npt.NDArray[np.intp], int, int]:
    """The `(T, c k_h k_w)` gather index of one convolution, and `(H', W')`."""
    (k_h, k_w), (s_h, s_w), (p_h, p_w) = (tuple(int(v) for v in pair)
                                          for pair in (kernel, stride, padding))
    out_h, out_w = (height + 2 * p_h - k_h) // s_h + 1, (width + 2 * p_w - k_w) // s_w + 1
    pad = channels * height * width
    index = np.full((out_h * out_w, channels * k_h * k_w), pad, dtype=np.intp)
    for i in range(out_h):
        for j in range(out_w):
            column = 0
            for c in range(channels):
                for u in range(k_h):
                    for v in range(k_w):
                        row, col = i * s_h + u - p_h, j * s_w + v - p_w
                        if 0 <= row < height and 0 <= col < width:
                            index[i * out_w + j, column] = (c * height + row) * width + col
                        column += 1
    index.setflags(write=False)
    return index, out_h, out_w


def _describe(layer) -> tuple:
    """A layer as plain ints: `(c_out, kernel, stride, padding)` or `(n_out, n_in)`."""
    if hasattr(layer, "kernel"):  # PROTOCOL s12: a convolution has a `kernel` field
        return (int(layer.c_out), *(tuple(int(v) for v in pair)
                                    for pair in (layer.kernel, layer.stride, layer.padding)))
    return (int(layer.n_out), int(layer.n_in))


@functools.lru_cache(maxsize=64)
def _geometry(input_shape: tuple | None, layers: tuple) -> tuple[Geometry, ...]:
    out, shape = [], input_shape
    for layer in layers:
        if len(layer) == 4:
            c_out, kernel, stride, padding = layer
            if shape is None:
                raise ValueError("a convolution needs a (C, H, W) input: the problem's "
                                 "input_shape, or a convolution before it")
            channels, height, width = shape
            index, out_h, out_w = _im2col_index(channels, height, width, kernel, stride,
                                                padding)
            out.append(Geometry(c_out, index.shape[1], index.shape[0],
                                channels * height * width, index))
            shape = (c_out, out_h, out_w)
        else:
            n_out, n_in = layer
            out.append(Geometry(n_out, n_in, 1, n_in, None))
            shape = None
    return tuple(out)


def geometry(problem) -> tuple[Geometry, ...]:
    """Every layer's `Geometry` (a function of the shapes only, never of values or names)."""
    shape = problem.input_shape
    key = None if shape is None else tuple(int(v) for v in shape)
    return _layers_geometry(key, tuple(problem.layers))


@functools.lru_cache(maxsize=256)
def _layers_geometry(input_shape: tuple | None, layers: tuple) -> tuple[Geometry, ...]:
    # the port asks for it several times per call: describe each layer once per architecture
    return _geometry(input_shape, tuple(_describe(layer) for layer in layers))


def patch_matrix(g: Geometry, a: np.ndarray) -> np.ndarray:
    """`P` (`(T, patch)`), or `(T, patch, n)` for tangents `a` of shape `(in_size, n)`."""
    if g.index is None:
        return a[None]
    padded = np.concatenate([a, np.zeros((1, *a.shape[1:]), a.dtype)])
    return padded[g.index]


def scatter_cotangents(g: Geometry, patches: np.ndarray) -> np.ndarray:
    """`(k, T, patch) -> (k, in_size)`: sum every patch entry into its input pixel."""
    if g.index is None:
        return patches[:, 0]
    out = np.zeros((patches.shape[0], g.in_size + 1), patches.dtype)
    np.add.at(out.T, g.index, np.moveaxis(patches, 0, -1))  # out[:, index] += patches
    return out[:, : g.in_size]


def scatter_tangents(g: Geometry, patches: np.ndarray) -> np.ndarray:
    """`(T, patch, n) -> (in_size, n)`: the same scatter-add for rows of n directions."""
    if g.index is None:
        return patches[0]
    out = np.zeros((g.in_size + 1, patches.shape[2]), patches.dtype)
    np.add.at(out, g.index, patches)
    return out[: g.in_size]


def kfac_statistics(pbar: np.ndarray, jac: np.ndarray, middle: np.ndarray, rows: int,
                    approx: str) -> tuple[np.ndarray, np.ndarray]:
    """One example's `(A, S)` terms of a layer: `Pbar` `(T, patch + 1)`, `J` `(C, rows T)`.

    Raises:
        ValueError: `approx` is neither "expand" nor "reduce".
    """
    positions = pbar.shape[0]
    j = jac.reshape(jac.shape[0], rows, positions)
    if approx == "expand":
        s = np.einsum("crt,cd,dqt->rq", j, middle, j) / pbar.dtype.type(positions)
        return pbar.T @ pbar, s
    if approx == "reduce":
        mean = pbar.mean(axis=0)
        jb = j.sum(axis=2)
        return np.outer(mean, mean), jb.T @ middle @ jb
    raise ValueError(f"approx: expected 'expand' or 'reduce', got {approx!r}")


class ConvHessianMixin(PortPrimitives):
    """`_example_hessian_patches` for `NumpyPort`: the Hessian of a network with convolutions.

    Needs the port's `_geometry`, `_wbar`, `_act`, `_loss_grad`, `_loss_hessian`,
    `_layer_offsets` and `_dt`.
    """

    def _example_hessian_patches(self, problem, theta, trace, jac, z, y) -> np.ndarray:
        """One example's Hessian; the trace holds `(Pbar, s, a)` (`Pbar` 1-D for dense)."""
        n, dt = theta.shape[0], self._dt
        shapes, offsets = self._geometry(problem), self._layer_offsets(problem)
        d_in = np.zeros((shapes[0].in_size, n), dt)
        tangents = []
        for index, g in enumerate(shapes):
            pbar, s, a = trace[index]
            pbar = np.atleast_2d(pbar)
            dpatch = patch_matrix(g, d_in)  # (T, patch, n)
            dpbar = np.concatenate([dpatch, np.zeros((g.positions, 1, n), dt)], axis=1)
            wbar = self._wbar(problem, theta, index)
            ds = np.einsum("rj,tjn->rtn", wbar, dpbar)
            size = g.rows * (g.patch + 1)
            direct = np.zeros((g.rows, g.positions, g.patch + 1, g.rows), dt)
            for r in range(g.rows):  # d s[r, t] / d Wbar[r, j] = Pbar[t, j]
                direct[r, :, :, r] = pbar
            ds[:, :, offsets[index]: offsets[index] + size] += direct.reshape(
                g.rows, g.positions, size)
            ds = ds.reshape(g.rows * g.positions, n)
            if problem.layers[index].activation == "softmax":
                d_in = a[:, None] * (ds - a @ ds)
            else:
                d_in = self._act(problem.layers[index].activation, s)[1][:, None] * ds
            tangents.append((dpbar, ds, d_in))
        g_a = self._loss_grad(problem, z, y)
        dg_a = self._loss_hessian(problem, z, y) @ jac
        out = np.zeros((n, n), dt)
        for index in reversed(range(len(shapes))):
            g, layer = shapes[index], problem.layers[index]
            pbar, s, a = trace[index]
            pbar = np.atleast_2d(pbar)
            dpbar, ds, da = tangents[index]
            g_s, dg_s = self._pre_activation_cotangents(layer.activation, s, a, g_a, dg_a, ds,
                                                        da)
            g_s3 = g_s.reshape(g.rows, g.positions)
            dg_s3 = dg_s.reshape(g.rows, g.positions, n)
            block = (np.einsum("tj,rtn->jrn", pbar, dg_s3)
                     + np.einsum("tjn,rt->jrn", dpbar, g_s3))
            start = offsets[index]
            out[start: start + block.shape[0] * block.shape[1]] = block.reshape(-1, n)
            w = self._wbar(problem, theta, index)[:, : g.patch]
            g_patch = np.einsum("ri,rt->ti", w, g_s3)
            dg_patch = np.einsum("ri,rtn->tin", w, dg_s3)
            for i in range(g.patch):  # d W[r, i] / d theta is a unit vector (column-major vec)
                cols = start + i * g.rows + np.arange(g.rows)
                dg_patch[:, i, cols] += g_s3.T
            g_a = scatter_cotangents(g, g_patch[None])[0]
            dg_a = scatter_tangents(g, dg_patch)
        return out
