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
from ngd_ref._problem import Problem
from ngd_ref._spec import Loss, Reduction

__all__ = ["Curvature", "DenseCurvature", "ExampleTrace", "dense", "network_outputs"]


class Curvature(str, enum.Enum):
    """The curvature matrices of PROTOCOL section 3 (names as in `damped_update`)."""

    HESSIAN = "hessian"
    GGN = "ggn"
    FISHER = "fisher"
    EMPIRICAL_FISHER = "empirical_fisher"


@dataclasses.dataclass(frozen=True)
class ExampleTrace:
    """Forward quantities of one example, with tangents along all parameters.

    Attributes:
        abar: homogeneous layer inputs `[a_{l-1}; 1]`, one `(n_in + 1,)` per layer.
        s: pre-activations `(n_out,)` per layer.
        a: activations `(n_out,)` per layer; `a[-1]` is the output z.
        dabar: `d abar / dtheta`, `(n_in + 1, n)` per layer.
        ds: `d s / dtheta`, `(n_out, n)` per layer.
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


def _affine(wbar: np.ndarray, a_prev: np.ndarray, bk: Backend) -> tuple[np.ndarray, np.ndarray]:
    """A layer's affine rule: `(abar, s)` with `abar = [a_prev; 1]`, `s = Wbar abar`."""
    abar = np.concatenate([a_prev, bk.asarray(np.ones(1))])
    return abar, wbar @ abar


def network_outputs(problem: Problem, theta: np.ndarray, bk: Backend) -> np.ndarray:
    """Network outputs `z_b`, `(B, C)`, at parameters `theta`: the forward pass only.

    The same layer rule as `trace_example` without the tangents (any backend; call inside
    `bk.precision()` for mpmath).
    """
    outputs = []
    for x in bk.asarray(problem.inputs):
        a = x
        for layer, wbar in zip(problem.layers, _weights(problem, theta), strict=True):
            a = get_activation(layer.activation).value(bk, _affine(wbar, a, bk)[1])
        outputs.append(a)
    return np.stack(outputs)


def trace_example(problem: Problem, theta: np.ndarray, x: np.ndarray, bk: Backend) -> ExampleTrace:
    """Forward pass of one example with parameter tangents (forward-mode Jacobian)."""
    n = theta.shape[0]
    a_prev, da_prev = x, bk.zeros((x.shape[0], n))
    out = ExampleTrace([], [], [], [], [], bk.zeros((0, n)))
    for layer, sl, wbar in zip(problem.layers, layer_slices(problem.layers),
                               _weights(problem, theta), strict=True):
        act = get_activation(layer.activation)
        abar, s = _affine(wbar, a_prev, bk)
        dabar = np.concatenate([da_prev, bk.zeros((1, n))])
        # ds = Wbar dabar + (d Wbar/dtheta) abar; the second term is abar^T (x) I in layer l's
        # block.
        ds = wbar @ dabar
        ds[:, sl] = ds[:, sl] + np.kron(abar[None, :], bk.eye(layer.n_out))
        a = act.value(bk, s)
        out.abar.append(abar)
        out.dabar.append(dabar)
        out.s.append(s)
        out.ds.append(ds)
        out.a.append(a)
        a_prev, da_prev = a, act.jacobian_apply(bk, s, a, ds)
    return dataclasses.replace(out, jacobian=da_prev)


def second_order_backward(problem: Problem, theta: np.ndarray, tr: ExampleTrace,
                          r: np.ndarray, dr: np.ndarray,
                          bk: Backend) -> tuple[np.ndarray, np.ndarray]:
    """Backward pass from cotangent `r` (C,) with tangent `dr` (C, n), differentiated.

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
        s, a, abar, dabar, ds = (tr.s[index], tr.a[index], tr.abar[index], tr.dabar[index],
                                 tr.ds[index])
        g_s = act.jacobian_apply(bk, s, a, g_a)
        dg_s = act.jacobian_apply(bk, s, a, dg_a) + act.second_order_apply(bk, s, a, ds, g_a)
        # grad of vec(Wbar) is vec(g_s abar^T); entry (i, j) sits at j * n_out + i.
        vec[sl] = np.multiply.outer(abar, g_s).reshape(-1)
        block = (dg_s[None, :, :] * abar[:, None, None]
                 + np.multiply.outer(dabar, g_s).transpose(0, 2, 1))
        mat[sl] = block.reshape(-1, n)
        if index:
            w = wbar[:, : layer.n_in]
            # d(W^T g_s) = W^T dg_s + (dW)^T g_s; (dW)^T g_s is nonzero in layer l's block only.
            dw_term = bk.zeros((layer.n_in, n))
            for j in range(layer.n_in):
                cols = slice(sl.start + j * layer.n_out, sl.start + (j + 1) * layer.n_out)
                dw_term[j, cols] = g_s
            g_a, dg_a = w.T @ g_s, w.T @ dg_s + dw_term
    return vec, mat


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
        """`h(theta) = c sum_b L(y_b, z_b)`."""
        with self.backend.precision():
            return self.c * sum(self._loss.value(self.backend, y, t.a[-1])
                                for y, t in zip(self.targets, self.traces, strict=True))

    @functools.cached_property
    def gradient(self) -> np.ndarray:
        """`grad h = c sum_b g_b`, `(n,)`."""
        with self.backend.precision():
            return self.c * np.sum(self.per_example_gradients, axis=0)

    # -- the matrices ----------------------------------------------------------------------
    def _sum_second_order(self, cotangents: Sequence[np.ndarray],
                          tangents: Sequence[np.ndarray]) -> np.ndarray:
        """`c sum_b d(J_b^T r_b)/dtheta` with `dr_b = tangents[b] @ J_b`, symmetrized."""
        bk = self.backend
        with bk.precision():
            total = bk.zeros((self.theta.shape[0],) * 2)
            for t, r, m in zip(self.traces, cotangents, tangents, strict=True):
                _, mat = second_order_backward(self.problem, self.theta, t, r, m @ t.jacobian, bk)
                total = total + mat
            total = self.c * total
            return (total + total.T) / 2

    def _sum_gauss_newton(self, middles: Sequence[np.ndarray]) -> np.ndarray:
        """`c sum_b J_b^T M_b J_b`."""
        with self.backend.precision():
            return self.c * sum(t.jacobian.T @ m @ t.jacobian
                                for t, m in zip(self.traces, middles, strict=True))

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
