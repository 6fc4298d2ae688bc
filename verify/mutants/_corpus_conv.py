"""Convolution mutants (PROTOCOL s12, issue 17): the bug classes of real conv K-FAC ports.

Each mutant changes one thing of the numpy port's convolution code (`_port_conv`): the im2col
index map (`_geometry`), how a dense layer reads a convolution's output, the kernel layout,
or one term of K-FAC expand/reduce. Dense layers are untouched, so every kill comes from a
convolutional problem of the quick zoo (`ngd_ref.zoo.QUICK_CONV`), by the check named in the
description. The bugs: LBANN's missing transpose, BackPACK/curvlinops' expand-vs-reduce and
powers-of-T confusions (curvlinops issue 82), and the layout slips of a hand-written im2col.
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import numpy as np

from verify.mutants import BugClass, register_mutant
from verify.mutants._port import NumpyPort
from verify.mutants._port_conv import Geometry

__all__: list[str] = []

BOTH = ("float64", "float32")
_KFAC = ("kfac_factors",)
_FUNCTION = ("loss", "gradient")


def _mutant(name: str, description: str, *capabilities: str):
    return register_mutant(name, BugClass.CONVOLUTION, description, capabilities=capabilities,
                           dtypes=BOTH)


class _IndexMutant(NumpyPort):
    """Base: every convolution's im2col index replaced by `_index(geometry, layer, shape)`."""

    def _index(self, g: Geometry, layer, in_shape: tuple[int, int, int]) -> np.ndarray:
        raise NotImplementedError

    def _geometry(self, problem):
        out, shape = [], problem.input_shape
        for g, layer in zip(super()._geometry(problem), problem.layers, strict=True):
            if g.index is None:
                out.append(g)
                continue
            out.append(dataclasses.replace(g, index=self._index(g, layer, tuple(shape))))
            shape = (g.rows, *_output_hw(layer, shape))
        return tuple(out)


def _output_hw(layer, shape) -> tuple[int, int]:
    return tuple((size + 2 * p - k) // s + 1 for size, p, k, s in
                 zip(shape[1:], layer.padding, layer.kernel, layer.stride, strict=True))


def _patch_permutation(layer, order: str) -> np.ndarray:
    """Columns of a `(c, u, v)` row-major patch re-read in another order of the same axes."""
    c, (k_h, k_w) = layer.c_in, layer.kernel
    grid = np.arange(c * k_h * k_w).reshape(c, k_h, k_w)
    if order == "channels-last":  # (u, v, c): an NHWC unfold
        return grid.transpose(1, 2, 0).reshape(-1)
    if order == "kernel-column-major":  # (c, v, u)
        return grid.transpose(0, 2, 1).reshape(-1)
    return grid[:, ::-1, ::-1].reshape(-1)  # "flipped": a true convolution


@_mutant("conv-patches-channels-last",
         "im2col patches in (kernel row, kernel column, channel) order (an NHWC unfold) while "
         "the weights are (channel, row, column); killed by loss_matches_reference", *_FUNCTION)
class ConvPatchesChannelsLast(_IndexMutant):
    def _index(self, g, layer, in_shape):
        return g.index[:, _patch_permutation(layer, "channels-last")]


@_mutant("conv-patch-order-column-major",
         "the kernel offsets of a patch enumerated column-major ((c, v, u), a transposed "
         "kernel); killed by loss_matches_reference", *_FUNCTION)
class ConvPatchOrderColumnMajor(_IndexMutant):
    def _index(self, g, layer, in_shape):
        return g.index[:, _patch_permutation(layer, "kernel-column-major")]


@_mutant("conv-flipped-kernel",
         "a convolution (kernel flipped) instead of PROTOCOL s12's cross-correlation; killed "
         "by loss_matches_reference", *_FUNCTION)
class ConvFlippedKernel(_IndexMutant):
    def _index(self, g, layer, in_shape):
        return g.index[:, _patch_permutation(layer, "flipped")]


@_mutant("conv-stride-on-kernel-offsets",
         "the stride applied to the kernel offsets too (x[i s + u s], a dilation by the "
         "stride); killed by loss_matches_reference on a stride-2 convolution", *_FUNCTION)
class ConvStrideOnKernelOffsets(_IndexMutant):
    def _index(self, g, layer, in_shape):
        c, height, width = in_shape
        (k_h, k_w), (s_h, s_w), (p_h, p_w) = layer.kernel, layer.stride, layer.padding
        out_h, out_w = _output_hw(layer, in_shape)
        index = np.full_like(g.index, c * height * width)
        for i in range(out_h):
            for j in range(out_w):
                col = 0
                for ch in range(c):
                    for u in range(k_h):
                        for v in range(k_w):
                            row, column = (i + u) * s_h - p_h, (j + v) * s_w - p_w
                            if 0 <= row < height and 0 <= column < width:
                                index[i * out_w + j, col] = (ch * height + row) * width + column
                            col += 1
        return index


@_mutant("conv-padding-ignored-in-a",
         "K-FAC's A_l built from the unpadded ('valid') patches only, dropping every border "
         "position that touches the padding (the forward pass pads correctly); killed by "
         "kfac_factors_fisher_expand_product on conv-1x4x4-2c-pad-stride-ce-b2", *_KFAC)
class ConvPaddingIgnoredInA(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        out = []
        factors = super().kfac_factors(problem, kind, approx=approx)
        for index, ((a, s), g) in enumerate(zip(factors, self._geometry(problem), strict=True)):
            if g.index is not None and np.any(g.index == g.in_size):
                valid = np.all(g.index < g.in_size, axis=1)  # patches without padding
                a = self._valid_a(problem, index, valid, approx)
            out.append((a, s))
        return out

    def _valid_a(self, problem, index: int, valid: np.ndarray, approx: str) -> np.ndarray:
        """Layer `index`'s A from the positions `valid` only (mean over the batch)."""
        terms = []
        for trace, _, _, _ in self._examples(problem):
            inside = trace[index][0][valid]
            terms.append(inside.T @ inside if approx == "expand" else
                         np.outer(inside.mean(0), inside.mean(0)))
        return functools.reduce(operator.add, terms) / self._dt(problem.batch_size)


@_mutant("conv-output-channels-last",
         "a dense layer after a convolution reads its output flattened position-major "
         "((H', W', C), an NHWC flatten) instead of channel-major; killed by "
         "loss_matches_reference", *_FUNCTION)
class ConvOutputChannelsLast(NumpyPort):
    def _wbar(self, problem, theta, index):
        wbar = super()._wbar(problem, theta, index)
        previous = problem.layers[index - 1] if index else None
        if previous is None or not hasattr(previous, "kernel") or hasattr(
                problem.layers[index], "kernel"):
            return wbar
        g = self._geometry(problem)[index - 1]
        # column k of W multiplies the entry the NHWC flatten puts at k
        order = np.arange(g.rows * g.positions).reshape(g.rows, g.positions).T.reshape(-1)
        return np.hstack([wbar[:, :-1][:, np.argsort(order)], wbar[:, -1:]])


@_mutant("conv-kernel-missing-transpose",
         "a convolution's Wbar unstacked as (c_in k_h k_w + 1) x c_out and used untransposed "
         "(read vec(Wbar^T): LBANN's missing transpose); killed by loss_matches_reference",
         *_FUNCTION)
class ConvKernelMissingTranspose(NumpyPort):
    def _wbar(self, problem, theta, index):
        wbar = super()._wbar(problem, theta, index)
        if not hasattr(problem.layers[index], "kernel"):
            return wbar
        return wbar.reshape(-1, order="F").reshape(wbar.shape)


@_mutant("conv-kfac-expand-reduce-swapped",
         "approx='expand' computes K-FAC-reduce and 'reduce' computes expand; killed by "
         "kfac_factors_fisher_expand_product", *_KFAC)
class ConvKfacSwapped(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        swapped = {"expand": "reduce", "reduce": "expand"}.get(approx, approx)
        return super().kfac_factors(problem, kind, approx=swapped)


@_mutant("conv-kfac-expand-s-not-averaged",
         "expand's S_l summed over the T positions instead of averaged (the power of T in "
         "S wrong, curvlinops issue 82's factor); killed by kfac_factors_fisher_expand_product",
         *_KFAC)
class ConvKfacExpandSSummed(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        factors = super().kfac_factors(problem, kind, approx=approx)
        if approx != "expand":
            return factors
        return [(a, s * self._dt(g.positions))
                for (a, s), g in zip(factors, self._geometry(problem), strict=True)]


@_mutant("conv-kfac-reduce-a-summed",
         "reduce's A_l from the summed patch sum_t abar_t instead of the mean (the power of T "
         "in A wrong, T^2 too large); killed by kfac_factors_fisher_reduce_product", *_KFAC)
class ConvKfacReduceASummed(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        factors = super().kfac_factors(problem, kind, approx=approx)
        if approx != "reduce":
            return factors
        return [(a * self._dt(g.positions) ** 2, s)
                for (a, s), g in zip(factors, self._geometry(problem), strict=True)]


@_mutant("conv-kfac-bias-once-per-example",
         "expand's homogeneous coordinate counted once per example, not once per position "
         "(A_l's bias entry 1 instead of T, its cross terms the mean patch); killed by "
         "kfac_factors_fisher_expand_product", *_KFAC)
class ConvKfacBiasOncePerExample(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        factors = super().kfac_factors(problem, kind, approx=approx)
        if approx != "expand":
            return factors
        out = []
        for (a, s), g in zip(factors, self._geometry(problem), strict=True):
            if g.index is not None:
                a = a.copy()
                t = self._dt(g.positions)
                a[:-1, -1] /= t  # (1/B) sum_b mean_t p_t
                a[-1, :-1] /= t
                a[-1, -1] = 1
            out.append((a, s))
        return out

