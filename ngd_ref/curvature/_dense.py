"""Dense exact curvature matrices H, G, F, EF (PROTOCOL section 3) -- no autodiff.

Everything is derived by hand from the chain rule and runs on any `Backend` (float64, or
mpmath at 40+ digits to certify the float64 numbers). Per example b the reference computes:

* the forward pass `s_l = Wbar_l abar_{l-1}`, `a_l = phi_l(s_l)` together with the tangents
  of every activation along all n parameter directions at once, giving the output Jacobian
  `J_b = df(x_b)/dtheta` (C x n). In the canonical layout the block of `J_b` for layer l is
  `abar_{l-1}^T (x) dz/ds_l` (Grosse ch. 4 eq. 16), so the bias columns are `dz/ds_l`;
* a backward pass seeded with an output cotangent `r` and its tangent `dr`, differentiated in
  forward mode ("forward-over-backward" written out by hand). Its result is the exact
  `d/dtheta [J_b^T r(theta)] = J_b^T (dr/dtheta) + sum_j r_j d^2 z_j/dtheta^2`.

With `r = dL/dz` and `dr = H_L J_b` that is the per-example Hessian; Martens s3's
decomposition `H = G + c sum_b sum_j [dL/dz_b]_j d^2 z_{b,j}/dtheta^2` is built in.
With `r = E_y[dL/dz]`, `dr = E_y[H_L] J_b` it is `-E_y[Hessian of log r(y|f)]`, the second
form of the Fisher (Martens s5, eq. for F as an expected Hessian).

The matrices, with `c = 1/B` (mean) or 1 (sum):
    H  = c sum_b d^2 L(y_b, f(x_b))/dtheta^2
    G  = c sum_b J_b^T H_L,b J_b                         (Martens s3; Grosse s2.1)
    F  = c sum_b J_b^T F_R,b J_b, F_R = E_y[dL dL^T]     (Martens s5, s9; seeds 000/001)
    EF = c sum_b g_b g_b^T, g_b = J_b^T dL/dz(y_b)       (Martens s7)
Cost: O(n * sum_l n_l^2) per example for J and O(n^2) for the Hessian; about 0.1 s for
n = 1000, B = 16 in float64 (see `ngd-verify bench --dense`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Sequence

import numpy as np

from ngd_ref._activations import get_activation
from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._layout import layer_slices
from ngd_ref._losses import OutputMoments, get_loss
from ngd_ref._patches import patches, patches_adjoint, weighted_patches_adjoint
from ngd_ref._problem import Problem
from ngd_ref._spec import Conv2d, Layer, Loss, Reduction

__all__ = ["Curvature", "DenseCurvature", "ExampleTrace", "dense", "network_outputs",
           "preactivation_jacobian_magnitudes", "preactivation_jacobians"]


class Curvature(str, enum.Enum):
    """The curvature matrices of PROTOCOL section 3 (names as in `damped_update`)."""

    HESSIAN = "hessian"
    GGN = "ggn"
    FISHER = "fisher"
    EMPIRICAL_FISHER = "empirical_fisher"


@dataclasses.dataclass(frozen=True)
class ExampleTrace:
    """Forward quantities of one example, with tangents along all parameters.

    A dense layer's homogeneous input is a vector; a convolution's (PROTOCOL s12) is its
    patch matrix `Abar = [P; 1^T]` with one column per output position (`_patch_view` gives
    every layer's as `(d + 1, T)`, a dense layer being `T = 1`). Pre-activations and
    activations are flat (a convolution's channel-major, `(c_out, T)` row-major).

    Attributes:
        abar: homogeneous layer inputs: `(n_in + 1,)` per dense layer, `(d + 1, T)` per
            convolution (`d = c_in k_h k_w`).
        s: pre-activations `(output_size,)` per layer.
        a: activations `(output_size,)` per layer; `a[-1]` is the output z.
        dabar: `d abar / dtheta`: `(n_in + 1, n)` per dense layer, `(d + 1, T, n)` per
            convolution.
        ds: `d s / dtheta`, `(output_size, n)` per layer.
        jacobian: `J = dz/dtheta`, `(C, n)`.
    """

    abar: list[np.ndarray]
    s: list[np.ndarray]
    a: list[np.ndarray]
    dabar: list[np.ndarray]
    ds: list[np.ndarray]
    jacobian: np.ndarray


def _weights(problem: Problem, theta: np.ndarray) -> list[np.ndarray]:
    """Per-layer `Wbar_l` (`layer.weight_shape`) from canonical `theta` (any backend)."""
    return [
        theta[sl].reshape(layer.weight_shape, order="F")
        for layer, sl in zip(problem.layers, layer_slices(problem.layers), strict=True)
    ]


def _patch_view(layer: Layer | Conv2d, abar: np.ndarray) -> np.ndarray:
    """A trace's `abar` (or `dabar`) of `layer` as patch columns: `(d + 1, T, ...)`."""
    return abar if layer.is_convolution else abar[:, None]


def _affine(wbar: np.ndarray, a_prev: np.ndarray, bk: Backend,
            layer: Layer | Conv2d | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A layer's affine rule: `(abar, s)` with `s = vec_rows(Wbar Abar)`.

    Dense (`layer` None or dense): `abar = [a_prev; 1]`, `s = Wbar abar`. Convolution
    (PROTOCOL s12): `abar = Abar = [P; 1^T]`, `P` the im2col patches of `a_prev`, and `s` the
    `(c_out, T)` product flattened channel-major.
    """
    if layer is None or not layer.is_convolution:
        abar = np.concatenate([a_prev, bk.asarray(np.ones(1))])
        return abar, wbar @ abar
    abar = np.concatenate([patches(layer, a_prev, bk),
                           bk.asarray(np.ones((1, layer.n_positions)))])
    return abar, (wbar @ abar).reshape(-1)


def network_outputs(problem: Problem, theta: np.ndarray, bk: Backend) -> np.ndarray:
    """Network outputs `z_b`, `(B, C)`, at parameters `theta`: the forward pass only.

    The same layer rule as `trace_example` without the tangents (any backend; call inside
    `bk.precision()` for mpmath).
    """
    outputs = []
    for x in bk.asarray(problem.inputs):
        a = x
        for layer, wbar in zip(problem.layers, _weights(problem, theta), strict=True):
            a = get_activation(layer.activation).value(bk, _affine(wbar, a, bk, layer)[1])
        outputs.append(a)
    return np.stack(outputs)


def trace_example(problem: Problem, theta: np.ndarray, x: np.ndarray, bk: Backend) -> ExampleTrace:
    """Forward pass of one example with parameter tangents (forward-mode Jacobian).

    Per layer, with `Abar` the `(d + 1, T)` patch matrix (`T = 1` for a dense layer):
    `dS = Wbar dAbar + dWbar Abar`, where `dWbar Abar` is nonzero in layer l's block only:
    `dS[o, t] / dWbar[o, k] = Abar[k, t]`, i.e. `Abar^T (x) I` (Grosse ch. 4 eq. 16).
    Layer l's input depends on the parameters of the layers before it only, so `dAbar` is
    zero outside the columns `[0, start_l)` (`start_l` the first of layer l's columns) and
    `Wbar dAbar` is computed on those columns alone (exact zeros are not multiplied out).
    """
    n = theta.shape[0]
    a_prev, da_prev = x, bk.zeros((x.shape[0], n))
    out = ExampleTrace([], [], [], [], [], bk.zeros((0, n)))
    for layer, sl, wbar in zip(problem.layers, layer_slices(problem.layers),
                               _weights(problem, theta), strict=True):
        act = get_activation(layer.activation)
        abar, s = _affine(wbar, a_prev, bk, layer)
        rows, positions = wbar.shape[0], layer.n_positions
        cols = _patch_view(layer, abar)                          # (d + 1, T)
        before = slice(0, sl.start)                              # where dAbar may be nonzero
        dabar = bk.zeros((cols.shape[0], positions, n))
        dabar[:-1, :, before] = patches(layer, da_prev[:, before], bk)
        ds = bk.zeros((rows * positions, n))
        width = cols.shape[0] - 1
        prior = dabar[:-1, :, before].reshape(width, positions * sl.start)
        ds[:, before] = (wbar[:, :-1] @ prior).reshape(rows * positions, sl.start)
        own = cols.T[None, :, :, None] * bk.eye(rows)[:, None, None, :]   # [o, t, k, o']
        ds[:, sl] = own.reshape(rows * positions, -1)
        a = act.value(bk, s)
        out.abar.append(abar)
        out.dabar.append(dabar if layer.is_convolution else dabar[:, 0])
        out.s.append(s)
        out.ds.append(ds)
        out.a.append(a)
        a_prev, da_prev = a, bk.zeros((s.shape[0], n))
        upto = slice(0, sl.stop)                                 # dS is zero after layer l
        da_prev[:, upto] = act.jacobian_apply(bk, s, a, ds[:, upto])
    return dataclasses.replace(out, jacobian=da_prev)


def second_order_backward(problem: Problem, theta: np.ndarray, tr: ExampleTrace,
                          r: np.ndarray, dr: np.ndarray,
                          bk: Backend) -> tuple[np.ndarray, np.ndarray]:
    """Backward pass from cotangent `r` (C,) with tangent `dr` (C, n), differentiated.

    Per layer, with `G = dL/dS` `(c_out, T)` and the patch matrix `Abar` `(d + 1, T)`
    (`T = 1` for a dense layer): the gradient of `Wbar` is `G Abar^T` and its tangent
    `dG Abar^T + G dAbar^T`; the cotangent of the layer's input is the adjoint im2col of
    `W^T G` (`patches_adjoint`; the identity for a dense layer), with tangent
    `W^T dG + dW^T G`.

    Returns:
        `(J^T r, d(J^T r)/dtheta)`: the vector `(n,)` and the matrix `(n, n)`
        `J^T dr + sum_j r_j d^2 z_j / dtheta^2` (not symmetrized).
    """
    n = theta.shape[0]
    vec, mat = bk.zeros(n), bk.zeros((n, n))
    g_a, dg_a = r, dr
    layers = problem.layers
    slices = layer_slices(layers)
    weights = _weights(problem, theta)
    for index in reversed(range(len(layers))):
        layer, sl, wbar = layers[index], slices[index], weights[index]
        act = get_activation(layer.activation)
        s, a, ds = tr.s[index], tr.a[index], tr.ds[index]
        cols, dcols = _patch_view(layer, tr.abar[index]), _patch_view(layer, tr.dabar[index])
        rows, positions = wbar.shape[0], layer.n_positions
        g_s = act.jacobian_apply(bk, s, a, g_a)
        dg_s = act.jacobian_apply(bk, s, a, dg_a) + act.second_order_apply(bk, s, a, ds, g_a)
        big_g, big_dg = g_s.reshape(rows, positions), dg_s.reshape(rows, positions, n)
        # grad of vec(Wbar) is vec(G Abar^T); entry (o, k) sits at k * c_out + o.
        vec[sl] = (big_g @ cols.T).reshape(-1, order="F")
        # mat is C-contiguous (allocated above), so its row block reshapes to a view: the
        # products write into mat directly.
        block = mat[sl].reshape(cols.shape[0], rows, n)         # [k, o, m]
        np.matmul(cols, big_dg.transpose(1, 0, 2).reshape(positions, -1),
                  out=block.reshape(cols.shape[0], -1))
        # G dAbar^T: dAbar is zero outside the columns before layer l (see `trace_example`).
        before = slice(0, sl.start)
        block[:-1, :, before] += np.matmul(big_g[None], dcols[:-1, :, before])
        if index:
            w = wbar[:, :-1]
            width = w.shape[1]
            # One adjoint for both: [dG | G] -> [d(W^T G) | W^T G] (before the dW^T G term).
            both = weighted_patches_adjoint(
                layer, w, np.concatenate([big_dg, big_g[:, :, None]], axis=2), bk)
            dg_a, g_a = both[:, :n], both[:, n]
            # d(W^T G) = W^T dG + (dW)^T G; (dW)^T G is nonzero in layer l's block only:
            # [(dW)^T G][j, t] / dW[o, j'] = delta_{j j'} G[o, t] (column sl.start + j' c_out + o).
            own = bk.zeros((width, positions, width, rows))               # [j, t, j', o]
            own[np.arange(width), :, np.arange(width), :] = big_g.T
            own = own.reshape(width, positions, width * rows)
            weights_of_w = slice(sl.start, sl.start + width * rows)
            dg_a[:, weights_of_w] = dg_a[:, weights_of_w] + patches_adjoint(layer, own, bk)
    return vec, mat


def preactivation_jacobians(problem: Problem, theta: np.ndarray, tr: ExampleTrace,
                            bk: Backend) -> list[np.ndarray]:
    """`dz/ds_l`, `(C, output_size_l)` per layer: backpropagation of the C unit cotangents.

    For a convolution the columns are channel-major `(o, t)`: `J_{b,t} = dz/ds_{l,t}` of
    PROTOCOL s12's K-FAC is `out[l].reshape(C, c_out, T)[:, :, t]`, and their sum over t is
    the Jacobian's bias columns of layer l.
    """
    return _unit_backpropagation(problem, _weights(problem, theta), tr.s, tr.a, bk,
                                 magnitude=False)


def preactivation_jacobian_magnitudes(problem: Problem, theta: np.ndarray,
                                      tr: ExampleTrace) -> list[np.ndarray]:
    """`MAG(dz/ds_l)` per layer, float64: `preactivation_jacobians` on absolute values.

    The same backpropagation with `|W_l|` and each activation's `MAG(J_phi)`
    (`Activation.jacobian_magnitude_apply`): the product `MAG(J_phi,L) |W_L| ...
    MAG(J_phi,l)` bounds a correct port's rounding of `dz/ds_l`, which cancels where the
    chain does (two equal rows of `W_L` under a softmax make `dz/ds_l = 0` exactly for
    `l < L`) and where an activation saturates.
    """
    f64 = np.float64
    return _unit_backpropagation(
        problem, [np.abs(np.asarray(w, dtype=f64)) for w in _weights(problem, theta)],
        [np.asarray(s, dtype=f64) for s in tr.s], [np.asarray(a, dtype=f64) for a in tr.a],
        FLOAT64, magnitude=True)


def _unit_backpropagation(problem: Problem, weights: list[np.ndarray], s: list[np.ndarray],
                          a: list[np.ndarray], bk: Backend, *,
                          magnitude: bool) -> list[np.ndarray]:
    """Backpropagate the C unit cotangents: `dz/ds_l` (or its `MAG`) per layer."""
    layers = problem.layers
    g_a = bk.eye(problem.output_dim)                  # column j: the cotangent e_j
    out: list[np.ndarray] = [bk.zeros((0, 0))] * len(layers)
    for index in reversed(range(len(layers))):
        layer, wbar = layers[index], weights[index]
        act = get_activation(layer.activation)
        g_s = (act.jacobian_magnitude_apply(s[index], a[index], g_a) if magnitude
               else act.jacobian_apply(bk, s[index], a[index], g_a))
        out[index] = g_s.T
        if index:
            rows, positions = wbar.shape[0], layer.n_positions
            g_p = (wbar[:, :-1].T @ g_s.reshape(rows, -1)).reshape(-1, positions, g_s.shape[1])
            g_a = patches_adjoint(layer, g_p, bk)
    return out


class DenseCurvature:
    """All dense exact quantities of one problem, computed once and cached.

    Args:
        problem: a validated `Problem`.
        backend: `FLOAT64` (default) or `mp_backend(dps)`; values are arrays of that backend.
        params: optional parameters overriding `problem.params` (canonical layout, any
            backend scalars), e.g. for slope tests along a direction.

    Example:
        >>> from ngd_ref import zoo
        >>> ref = DenseCurvature(zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3"))
        >>> ref.ggn.shape
        (31, 31)
    """

    def __init__(self, problem: Problem, backend: Backend = FLOAT64,
                 params: np.ndarray | None = None) -> None:
        self.problem = problem
        self.backend = backend
        self._loss = get_loss(problem.loss)
        with backend.precision():
            self.theta = backend.asarray(problem.params if params is None else params)
            self.inputs = backend.asarray(problem.inputs)
            labels = Loss(problem.loss).has_class_labels
            self.targets = problem.targets if labels else backend.asarray(problem.targets)
            self.c = (backend.scalar(1) / problem.batch_size
                      if problem.reduction == Reduction.MEAN.value else backend.scalar(1))

    # -- per-example pieces ----------------------------------------------------------------
    @functools.cached_property
    def traces(self) -> list[ExampleTrace]:
        """Forward traces (with parameter tangents) of every example."""
        with self.backend.precision():
            return [trace_example(self.problem, self.theta, x, self.backend) for x in self.inputs]

    @functools.cached_property
    def preactivation_jacobians(self) -> list[list[np.ndarray]]:
        """Per example, per layer: `dz/ds_l`, `(C, output_size_l)` (K-FAC's `J_{b,t}`)."""
        with self.backend.precision():
            return [preactivation_jacobians(self.problem, self.theta, t, self.backend)
                    for t in self.traces]

    @functools.cached_property
    def preactivation_jacobian_magnitudes(self) -> list[list[np.ndarray]]:
        """Per example, per layer: `MAG(dz/ds_l)`, float64 (`preactivation_jacobian_magnitudes`)."""
        return [preactivation_jacobian_magnitudes(self.problem, self.theta, t)
                for t in self.traces]

    @functools.cached_property
    def jacobian_magnitudes(self) -> np.ndarray:
        """`MAG(J_b)`, `(B, C, n)` float64: the Jacobian's chain rule on absolute values.

        Layer l's block of `J_b` is `sum_t Abar_t^T (x) J_{b,t}` (`T = 1` for a dense layer,
        Grosse ch. 4 eq. 16), so its magnitude is `sum_t |Abar_t|^T (x) MAG(J_{b,t})` with the
        chain's `MAG(J_{b,t})` (`preactivation_jacobian_magnitudes`); `>= |J_b|` entrywise.
        """
        out = np.zeros((self.problem.batch_size, self.problem.output_dim, self.theta.shape[0]))
        slices = layer_slices(self.problem.layers)
        for b, (trace, mags) in enumerate(zip(self.traces, self.preactivation_jacobian_magnitudes,
                                              strict=True)):
            for index, (layer, sl) in enumerate(zip(self.problem.layers, slices, strict=True)):
                cols = np.abs(np.asarray(_patch_view(layer, trace.abar[index]), dtype=np.float64))
                per_t = mags[index].reshape(-1, layer.weight_shape[0], layer.n_positions)
                out[b, :, sl] = np.einsum("kt,cot->cko", cols, per_t).reshape(out.shape[1], -1)
        return out

    @property
    def outputs(self) -> np.ndarray:
        """Network outputs `z_b`, `(B, C)`."""
        return np.stack([t.a[-1] for t in self.traces])

    @property
    def jacobians(self) -> np.ndarray:
        """Output Jacobians `J_b = dz_b/dtheta`, `(B, C, n)`."""
        return np.stack([t.jacobian for t in self.traces])

    @functools.cached_property
    def loss_grads(self) -> np.ndarray:
        """`dL/dz` at the observed targets, `(B, C)`."""
        with self.backend.precision():
            return np.stack([self._loss.grad(self.backend, y, t.a[-1])
                             for y, t in zip(self.targets, self.traces, strict=True)])

    @functools.cached_property
    def loss_hessians(self) -> np.ndarray:
        """`H_L,b = d^2 L/dz^2` at the observed targets, `(B, C, C)`."""
        with self.backend.precision():
            return np.stack([self._loss.hessian(self.backend, y, t.a[-1])
                             for y, t in zip(self.targets, self.traces, strict=True)])

    @functools.cached_property
    def output_moments(self) -> list[OutputMoments]:
        """Exact expectations over `y ~ r(.|z_b)` per example (see `_losses`)."""
        with self.backend.precision():
            return [self._loss.moments(self.backend, t.a[-1]) for t in self.traces]

    @property
    def output_fishers(self) -> np.ndarray:
        """`F_R,b = E_y[dL/dz dL/dz^T]`, `(B, C, C)`."""
        return np.stack([m.fisher for m in self.output_moments])

    @functools.cached_property
    def per_example_gradients(self) -> np.ndarray:
        """`g_b = J_b^T dL/dz(y_b)` (unscaled by c), `(B, n)`."""
        with self.backend.precision():
            return np.stack([t.jacobian.T @ r
                             for t, r in zip(self.traces, self.loss_grads, strict=True)])

    # -- the objective ---------------------------------------------------------------------
    @functools.cached_property
    def loss(self):
        """`h(theta) = c sum_b L(y_b, z_b)` (the forward pass only: no tangents needed)."""
        with self.backend.precision():
            outputs = network_outputs(self.problem, self.theta, self.backend)
            return self.c * sum(self._loss.value(self.backend, y, z)
                                for y, z in zip(self.targets, outputs, strict=True))

    @functools.cached_property
    def gradient(self) -> np.ndarray:
        """`grad h = c sum_b g_b`, `(n,)`."""
        with self.backend.precision():
            return self.c * np.sum(self.per_example_gradients, axis=0)

    # -- the matrices ----------------------------------------------------------------------
    def _sum_second_order(self, cotangents: Sequence[np.ndarray] | np.ndarray,
                          tangents: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """`c sum_b d(J_b^T r_b)/dtheta` with `dr_b = tangents[b] @ J_b`, symmetrized."""
        bk = self.backend
        with bk.precision():
            total = bk.zeros((self.theta.shape[0],) * 2)
            for t, r, m in zip(self.traces, cotangents, tangents, strict=True):
                _, mat = second_order_backward(self.problem, self.theta, t, r, m @ t.jacobian, bk)
                total += mat
            total = self.c * total
            return (total + total.T) / 2

    def _sum_gauss_newton(self, middles: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """`c sum_b J_b^T M_b J_b`, as one product `J^T (M J)` of the `(B C, n)` stacks."""
        with self.backend.precision():
            jac = self.jacobians
            stacked = jac.reshape(-1, jac.shape[-1])
            middle = middles if isinstance(middles, np.ndarray) else np.stack(middles)
            return self.c * (stacked.T @ np.matmul(middle, jac).reshape(stacked.shape))

    @functools.cached_property
    def hessian(self) -> np.ndarray:
        """`H`, exact: forward-over-backward through the network (symmetrized)."""
        return self._sum_second_order(self.loss_grads, self.loss_hessians)

    @functools.cached_property
    def ggn(self) -> np.ndarray:
        """`G = c sum_b J_b^T H_L,b J_b` (Martens s3)."""
        return self._sum_gauss_newton(self.loss_hessians)

    @functools.cached_property
    def fisher(self) -> np.ndarray:
        """True Fisher as the expected score outer product (Martens s5).

        Computed as `c sum_b J_b^T F_R,b J_b`.
        """
        return self._sum_gauss_newton(self.output_fishers)

    @functools.cached_property
    def fisher_expected_hessian(self) -> np.ndarray:
        """True Fisher as `-E_y[Hessian of log r(y|f)]`, second-order terms included.

        `c sum_b (J_b^T E[H_L] J_b + sum_j E[dL/dz_j] d^2 z_j/dtheta^2)`; the second term
        vanishes in exact arithmetic because `E[score] = 0` in parameter space (Martens s5).
        """
        moments = self.output_moments
        return self._sum_second_order([m.mean_grad for m in moments],
                                      [m.mean_hessian for m in moments])

    @functools.cached_property
    def empirical_fisher(self) -> np.ndarray:
        """`EF = c sum_b g_b g_b^T` (Martens s7)."""
        g = self.per_example_gradients
        with self.backend.precision():
            return self.c * (g.T @ g)

    def output_hessian_term(self, cotangents: np.ndarray) -> np.ndarray:
        """`c sum_b sum_j r_{b,j} d^2 z_{b,j}/dtheta^2` for cotangents `r` of shape `(B, C)`.

        With `r = dL/dz` this is `H - G` (Martens s3, the second term of the decomposition).
        """
        c_out = self.problem.output_dim
        zero = self.backend.zeros((c_out, c_out))
        return self._sum_second_order(list(cotangents), [zero] * len(cotangents))

    def matrix(self, curvature: Curvature | str) -> np.ndarray:
        """The dense matrix named by `curvature`.

        `curvature` is one of `hessian`, `ggn`, `fisher`, `empirical_fisher`.
        """
        return getattr(self, Curvature(curvature).value)

    def damped_update(self, curvature: Curvature | str, damping: float) -> np.ndarray:
        """`-(C + damping I)^{-1} grad h` (Grosse eq. 5 and eq. 13)."""
        bk = self.backend
        with bk.precision():
            c = self.matrix(curvature)
            lam = bk.scalar(damping)
            return -bk.solve(c + lam * bk.eye(c.shape[0]), self.gradient)


# Small on purpose: the battery and the harness visit one problem at a time, and a generated
# problem's reference (traces with n tangents per activation, n x n matrices) can take tens of
# MB -- a large cache made `--fuzz 300` exhaust memory.
@functools.lru_cache(maxsize=16)
def _cached(problem: Problem, backend_name: str, dps: float) -> DenseCurvature:
    from ngd_ref._backend import mp_backend

    backend = FLOAT64 if backend_name == "float64" else mp_backend(int(dps))
    return DenseCurvature(problem, backend)


def dense(problem: Problem, backend: Backend = FLOAT64) -> DenseCurvature:
    """The (cached) `DenseCurvature` of a problem; problems are immutable, so caching is safe."""
    return _cached(problem, backend.name, backend.dps)
