"""A correct, self-contained numpy port of the whole protocol: the base of every mutant.

`NumpyPort` is written the way a third party would write a port -- its own forward pass,
backpropagated Jacobians, hand-derived loss derivatives and a forward-over-backward Hessian
-- in the precision named by its `dtype` class attribute (`NumpyPort32` computes in float32
throughout). It shares no code with the dense reference (`ngd_ref.dense`), so the controls
test the oracle's tolerances on genuinely independent arithmetic.

Every mutant of the corpus subclasses it and overrides exactly one *hook* (a small private
method such as `_scale`, `_loss_hessian`, `_kron_solve`), so each mutant carries one bug
and nothing else. Mathematics (seed 002 = Grosse ch. 4, seed 003 = Martens):

* `G = c sum_b J_b^T H_L,b J_b`, `F = c sum_b J_b^T F_R,b J_b`, `EF = c sum_b g_b g_b^T`
  (Martens s3, s5, s7; PROTOCOL s3), with `J_b` from backpropagation of every output.
* `H`: the per-example gradient `J_b^T dL/dz` differentiated in forward mode along all n
  directions at once (Pearlmutter's R-op applied to every basis vector).
* K-FAC: `A_l = mean_b abar abar^T`, `S_l = c sum_b M_b` (Grosse eqs. 16-19; PROTOCOL s4),
  solves by eigendecomposition (eq. 23) and factored Tikhonov damping with pi (eq. 24).
* CG: Hestenes-Stiefel preconditioned CG (Grosse s4).
* L-BFGS: the two-loop recursion (Nocedal & Wright Algorithm 7.4) and one fixed-step
  iteration `lbfgs_step` (the protocol extension; docs/protocol.md "Extensions").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special

from verify.mutants._port_conv import (
    ConvHessianMixin,
    geometry,
    kfac_statistics,
    patch_matrix,
    scatter_cotangents,
)
from verify.mutants._port_sampled import SampledPortMixin
from verify.mutants._port_trajectory import TrajectoryPort

__all__ = ["NumpyPort", "NumpyPort32"]

#: `np.dtype(name).type` of the usual names (`_dt` is read on every cast)
_SCALAR_TYPES: dict[str, type[np.floating[Any]]] = {"float64": np.float64, "float32": np.float32}


class NumpyPort(TrajectoryPort, SampledPortMixin, ConvHessianMixin):
    """A correct port in numpy at precision `dtype` (PROTOCOL s5, s9 and the extensions).

    Convolutions (PROTOCOL s12) by its own im2col (`verify.mutants._port_conv`): a layer's
    trace entry holds the patch matrix `Pbar` (`(T, patch + 1)`) instead of `abar`.
    """

    name = "numpy-port"
    dtype = "float64"
    layer_kinds = ("dense", "conv2d")

    # -- precision and data ----------------------------------------------------------------
    @property
    def _dt(self) -> type[np.floating[Any]]:
        return _SCALAR_TYPES.get(self.dtype) or np.dtype(self.dtype).type

    def _cast(self, array) -> np.ndarray:
        return np.asarray(array, dtype=self._dt)

    def _scale(self, problem) -> float:
        """The reduction constant c (1/B for mean, 1 for sum)."""
        return 1.0 / problem.batch_size if problem.reduction == "mean" else 1.0  # PROTOCOL s1

    def _geometry(self, problem):
        """Each layer's shapes and im2col index (`verify.mutants._port_conv.geometry`)."""
        return geometry(problem)

    def _layer_offsets(self, problem) -> list[int]:
        offsets, start = [], 0
        for g in self._geometry(problem):
            offsets.append(start)
            start += (g.patch + 1) * g.rows
        return offsets

    def _wbar(self, problem, theta: np.ndarray, index: int) -> np.ndarray:
        """Layer `index`'s `[W b]`, `(n_out, n_in + 1)`, from the column-major block."""
        g, start = self._geometry(problem)[index], self._layer_offsets(problem)[index]
        block = theta[start : start + (g.patch + 1) * g.rows]
        return block.reshape((g.rows, g.patch + 1), order="F")

    def _vec(self, matrix: np.ndarray) -> np.ndarray:
        """Column-major vec of a `(n_out, n_in + 1)` block."""
        return matrix.reshape(-1, order="F")

    # -- activations -----------------------------------------------------------------------
    def _pre_activation_cotangents(self, activation: str, s, a, g_a, dg_a, ds, da):
        """`(g_s, dg_s)`: the cotangent at the pre-activation s and its tangents.

        From the cotangent `g_a` at the activation a and its tangents `dg_a` (softmax couples
        the outputs; elementwise activations use `phi'` and `phi''`).
        """
        if activation == "softmax":
            centred = g_a - a @ g_a
            g_s = a * centred
            dg_s = da * centred[:, None] + a[:, None] * (dg_a - (g_a @ da + a @ dg_a)[None, :])
        else:
            _, d1, d2 = self._act(activation, s)
            g_s = d1 * g_a
            dg_s = d1[:, None] * dg_a + (d2 * g_a)[:, None] * ds
        return g_s, dg_s

    def _act(self, name: str, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Elementwise `(phi(s), phi'(s), phi''(s))` (not for softmax)."""
        one = self._dt(1)
        if name == "identity":
            return s, np.ones_like(s), np.zeros_like(s)
        if name == "tanh":
            t = np.tanh(s)
            d = one - t * t
            return t, d, -2 * t * d
        if name == "sigmoid":
            p = scipy.special.expit(s).astype(self._dt)
            d = p * (one - p)
            return p, d, d * (one - 2 * p)
        if name == "relu":
            return np.maximum(s, 0), (s > 0).astype(self._dt), np.zeros_like(s)
        if name == "softplus":
            p = scipy.special.expit(s).astype(self._dt)
            return np.logaddexp(self._dt(0), s), p, p * (one - p)
        raise ValueError(f"activation: unsupported {name!r}")

    @staticmethod
    def _softmax(s: np.ndarray) -> np.ndarray:
        e = np.exp(s - np.max(s, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)

    # -- forward and Jacobians -------------------------------------------------------------
    def _forward(self, problem, theta: np.ndarray, x: np.ndarray):
        """One example: per layer `(abar, s, a)`."""
        out, a = [], x
        shapes = self._geometry(problem)
        for index, (layer, g) in enumerate(zip(problem.layers, shapes, strict=True)):
            if g.index is None:
                abar = np.concatenate([a, np.ones(1, self._dt)])
                s = self._wbar(problem, theta, index) @ abar
            else:  # s[o T + t] = Pbar[t] . Wbar[o]: channel-major (PROTOCOL s12)
                abar = np.hstack([patch_matrix(g, a), np.ones((g.positions, 1), self._dt)])
                s = (abar @ self._wbar(problem, theta, index).T).T.reshape(-1)
            a = (
                self._softmax(s)
                if layer.activation == "softmax"
                else self._act(layer.activation, s)[0]
            )
            out.append((abar, s, a))
        return out

    def _backward(self, problem, theta, trace, g_out: np.ndarray) -> list[np.ndarray]:
        """Backpropagate output cotangents `g_out` (k, C) to `(k, n_out)` per layer (dL/ds_l)."""
        g_a, out = g_out, [np.empty(0)] * len(trace)
        for index in reversed(range(len(trace))):
            layer = problem.layers[index]
            abar, s, a = trace[index]
            if layer.activation == "softmax":
                g_s = a * (g_a - (g_a @ a)[:, None])
            else:
                g_s = g_a * self._act(layer.activation, s)[1]
            out[index] = g_s
            g = self._geometry(problem)[index]
            w = self._wbar(problem, theta, index)[:, : g.patch]
            if g.index is None:
                g_a = g_s @ w
            else:  # the patch cotangents, summed into the input pixels
                patches = np.einsum("krt,ri->kti", g_s.reshape(len(g_s), g.rows, -1), w)
                g_a = scatter_cotangents(g, patches)
        return out

    def _jacobian(self, problem, theta, trace) -> np.ndarray:
        """`J = dz/dtheta` (C, n): row c is the gradient of output c."""
        c_out = problem.output_dim
        blocks = [
            np.einsum("ci,j->cji", d, abar).reshape(c_out, -1) if abar.ndim == 1 else
            np.einsum("crt,tj->cjr", d.reshape(c_out, -1, abar.shape[0]), abar).reshape(
                c_out, -1)
            for d, (abar, _, _) in zip(
                self._backward(problem, theta, trace, np.eye(c_out, dtype=self._dt)),
                trace,
                strict=True,
            )
        ]
        return np.concatenate(blocks, axis=1)

    #: the losses this port implements (its loss formulas below branch on these names, the
    #: protocol's strings, as a user's port would; the last branch is gaussian_logvar)
    SUPPORTED_LOSSES = ("mse", "softmax_cross_entropy", "sigmoid_cross_entropy", "poisson",
                        "nll_probs", "gaussian_logvar")

    def _traces(self, problem):
        """Per example `(trace, z, y)` at the problem's parameters, in `dtype` (no Jacobian).

        Raises:
            ValueError: for a loss outside `SUPPORTED_LOSSES` (never computed as another).
        """
        if problem.loss not in self.SUPPORTED_LOSSES:
            raise ValueError(f"loss: this port implements {', '.join(self.SUPPORTED_LOSSES)}; "
                             f"got {problem.loss!r}")
        theta = self._cast(problem.params)
        targets = (
            problem.targets if problem.targets.dtype.kind == "i" else self._cast(problem.targets)
        )
        for x, y in zip(self._cast(problem.inputs), targets, strict=True):
            trace = self._forward(problem, theta, x)
            yield trace, trace[-1][2], y

    def _examples(self, problem):
        """Per example `(trace, J, z, y)` at the problem's parameters, in `dtype`."""
        theta = self._cast(problem.params)
        for trace, z, y in self._traces(problem):
            yield trace, self._jacobian(problem, theta, trace), z, y

    # -- losses (PROTOCOL s2) --------------------------------------------------------------
    def _loss_value(self, problem, z, y):
        half = self._dt(0.5)
        if problem.loss == "mse":
            return half * np.sum((y - z) ** 2)
        if problem.loss == "softmax_cross_entropy":
            m = np.max(z)
            return m + np.log(np.sum(np.exp(z - m))) - z[y]
        if problem.loss == "sigmoid_cross_entropy":
            return np.sum(np.logaddexp(self._dt(0), z) - y * z)
        if problem.loss == "poisson":
            return np.sum(np.exp(z) - y * z + self._cast(scipy.special.gammaln(y + 1)))
        if problem.loss == "nll_probs":
            return -np.log(z[y])
        mu, s = np.split(z, 2)
        return np.sum(
            half * (y - mu) ** 2 * np.exp(-s) + half * s + self._dt(0.5 * math.log(2 * math.pi))
        )

    def _loss_grad(self, problem, z, y) -> np.ndarray:
        """`dL/dz` (C,)."""
        if problem.loss == "mse":
            return z - y
        if problem.loss == "softmax_cross_entropy":
            return self._softmax(z) - np.eye(z.shape[0], dtype=self._dt)[y]
        if problem.loss == "sigmoid_cross_entropy":
            return scipy.special.expit(z).astype(self._dt) - y
        if problem.loss == "poisson":
            return np.exp(z) - y
        if problem.loss == "nll_probs":
            return -np.eye(z.shape[0], dtype=self._dt)[y] / z[y]
        mu, s = np.split(z, 2)
        e = np.exp(-s)
        return np.concatenate([(mu - y) * e, self._dt(0.5) - self._dt(0.5) * (y - mu) ** 2 * e])

    def _loss_hessian(self, problem, z, y) -> np.ndarray:
        """`H_L = d^2 L/dz^2` (C, C)."""
        c_out = z.shape[0]
        if problem.loss == "mse":
            return np.eye(c_out, dtype=self._dt)
        if problem.loss == "softmax_cross_entropy":
            p = self._softmax(z)
            return np.diag(p) - np.outer(p, p)
        if problem.loss == "sigmoid_cross_entropy":
            p = scipy.special.expit(z).astype(self._dt)
            return np.diag(p * (1 - p))
        if problem.loss == "poisson":
            return np.diag(np.exp(z))
        if problem.loss == "nll_probs":
            e = np.eye(c_out, dtype=self._dt)[y]
            return np.outer(e, e) / z[y] ** 2
        mu, s = np.split(z, 2)
        e = np.exp(-s)
        return np.block(
            [
                [np.diag(e), np.diag((y - mu) * e)],
                [np.diag((y - mu) * e), np.diag(self._dt(0.5) * (y - mu) ** 2 * e)],
            ]
        )

    def _output_fisher(self, problem, z) -> np.ndarray:
        """`F_R = E_{y~r(.|z)}[dL/dz dL/dz^T]` in closed form (C, C)."""
        if problem.loss in ("mse", "softmax_cross_entropy", "sigmoid_cross_entropy", "poisson"):
            # natural parameters: F_R = H_L, which does not depend on y (Martens s9)
            return self._loss_hessian(
                problem, z, 0 if problem.loss == "softmax_cross_entropy" else z
            )
        if problem.loss == "nll_probs":
            return np.diag(1 / z)
        mu, s = np.split(z, 2)
        return np.diag(np.concatenate([np.exp(-s), np.full_like(s, 0.5)]))

    # -- objective ---------------------------------------------------------------------------
    def loss(self, problem):
        """`h = c sum_b L_b`."""
        c = self._dt(self._scale(problem))
        return c * sum(self._loss_value(problem, z, y) for _, _, z, y in self._examples(problem))

    def _per_example_gradients(self, problem) -> np.ndarray:
        return np.stack(
            [j.T @ self._loss_grad(problem, z, y) for _, j, z, y in self._examples(problem)]
        )

    def gradient(self, problem) -> np.ndarray:
        """`grad h = c sum_b J_b^T dL/dz`."""
        return self._dt(self._scale(problem)) * np.sum(self._per_example_gradients(problem), axis=0)

    # -- curvature matrices ----------------------------------------------------------------
    def _gauss_newton(self, problem, middle: Callable) -> np.ndarray:
        c = self._dt(self._scale(problem))
        return c * sum(j.T @ middle(z, y) @ j for _, j, z, y in self._examples(problem))

    def ggn(self, problem) -> np.ndarray:
        """`G = c sum_b J_b^T H_L,b J_b`."""
        return self._gauss_newton(problem, lambda z, y: self._loss_hessian(problem, z, y))

    def fisher(self, problem) -> np.ndarray:
        """`F = c sum_b J_b^T F_R,b J_b`."""
        return self._gauss_newton(problem, lambda z, y: self._output_fisher(problem, z))

    def empirical_fisher(self, problem) -> np.ndarray:
        """`EF = c sum_b g_b g_b^T`."""
        g = self._per_example_gradients(problem)
        return self._dt(self._scale(problem)) * (g.T @ g)

    def hessian(self, problem) -> np.ndarray:
        """`H`: forward-over-backward of the per-example gradient, along every direction."""
        theta = self._cast(problem.params)
        c = self._dt(self._scale(problem))
        total = sum(
            (
                self._example_hessian(problem, theta, trace, j, z, y)
                for trace, j, z, y in self._examples(problem)
            ),
            start=np.zeros((theta.shape[0],) * 2, self._dt),
        )
        total = c * total
        return (total + total.T) / 2

    def _example_hessian(self, problem, theta, trace, jac, z, y) -> np.ndarray:
        if any(abar.ndim == 2 for abar, _, _ in trace):
            return self._example_hessian_patches(problem, theta, trace, jac, z, y)
        n = theta.shape[0]
        offsets = self._layer_offsets(problem)
        # forward tangents of every pre-activation and homogeneous input along all n directions
        d_in = np.zeros((problem.layers[0].n_in, n), self._dt)
        tangents = []
        for index, layer in enumerate(problem.layers):
            abar, s, a = trace[index]
            dabar = np.vstack([d_in, np.zeros((1, n), self._dt)])
            ds = self._wbar(problem, theta, index) @ dabar
            for j in range(layer.n_in + 1):
                cols = np.arange(
                    offsets[index] + j * layer.n_out, offsets[index] + (j + 1) * layer.n_out
                )
                ds[np.arange(layer.n_out), cols] += abar[j]
            if layer.activation == "softmax":
                d_in = a[:, None] * (ds - a @ ds)
            else:
                d_in = self._act(layer.activation, s)[1][:, None] * ds
            tangents.append((dabar, ds, d_in))
        g_a = self._loss_grad(problem, z, y)
        dg_a = self._loss_hessian(problem, z, y) @ jac
        out = np.zeros((n, n), self._dt)
        for index in reversed(range(len(problem.layers))):
            layer = problem.layers[index]
            abar, s, a = trace[index]
            dabar, ds, da = tangents[index]
            g_s, dg_s = self._pre_activation_cotangents(layer.activation, s, a, g_a, dg_a, ds,
                                                        da)
            block = abar[:, None, None] * dg_s[None] + dabar[:, None, :] * g_s[None, :, None]
            out[offsets[index] : offsets[index] + block.shape[0] * block.shape[1]] = block.reshape(
                -1, n
            )
            w = self._wbar(problem, theta, index)[:, : layer.n_in]
            dw_term = np.zeros((layer.n_in, n), self._dt)
            for j in range(layer.n_in):
                start = offsets[index] + j * layer.n_out
                dw_term[j, start : start + layer.n_out] = g_s
            g_a, dg_a = w.T @ g_s, w.T @ dg_s + dw_term
        return out

    # -- products and diagonals --------------------------------------------------------------
    def hvp(self, problem, v):
        """`H v`."""
        return self.hessian(problem) @ self._cast(v)

    def ggn_vp(self, problem, v):
        """`G v = c sum_b J_b^T (H_L,b (J_b v))` without forming G."""
        v = self._cast(v)
        c = self._dt(self._scale(problem))
        return c * sum(
            j.T @ (self._loss_hessian(problem, z, y) @ (j @ v))
            for _, j, z, y in self._examples(problem)
        )

    def fisher_vp(self, problem, v):
        """`F v` without forming F."""
        v = self._cast(v)
        c = self._dt(self._scale(problem))
        return c * sum(
            j.T @ (self._output_fisher(problem, z) @ (j @ v))
            for _, j, z, _ in self._examples(problem)
        )

    def empirical_fisher_vp(self, problem, v):
        """`EF v = c sum_b g_b (g_b . v)`."""
        g = self._per_example_gradients(problem)
        return self._dt(self._scale(problem)) * (g.T @ (g @ self._cast(v)))

    def hessian_diag(self, problem):
        """`diag(H)`."""
        return np.diag(self.hessian(problem)).copy()

    def ggn_diag(self, problem):
        """`diag(G) = c sum_b sum_{ij} J_bi H_L,ij J_bj` entrywise."""
        c = self._dt(self._scale(problem))
        return c * sum(
            np.einsum("in,ij,jn->n", j, self._loss_hessian(problem, z, y), j)
            for _, j, z, y in self._examples(problem)
        )

    def empirical_fisher_diag(self, problem):
        """`diag(EF) = c sum_b g_b^2`."""
        return self._dt(self._scale(problem)) * np.sum(
            self._per_example_gradients(problem) ** 2, axis=0
        )

    # -- damped updates (Grosse eq. 5, 13) ---------------------------------------------------
    def _damped_matrix(self, matrix: np.ndarray, damping: float) -> np.ndarray:
        return matrix + self._dt(damping) * np.eye(matrix.shape[0], dtype=self._dt)

    def damped_update(self, problem, curvature, damping):
        """`-(C + damping I)^{-1} grad h`."""
        matrix = getattr(self, str(curvature))(problem)
        return -np.linalg.solve(self._damped_matrix(matrix, damping), self.gradient(problem))

    # -- K-FAC (PROTOCOL s4; Grosse s5) ------------------------------------------------------
    def _kfac_middle(self, problem, kind, z, y) -> np.ndarray:
        if kind == "fisher":
            return self._output_fisher(problem, z)
        if kind == "ggn":
            return self._loss_hessian(problem, z, y)
        g = self._loss_grad(problem, z, y)
        return np.outer(g, g)

    def kfac_factors(self, problem, kind, approx="expand"):
        """`[(A_l, S_l)]`, `A_l = mean_b abar abar^T`, `S_l = c sum_b D_b^T M_b D_b`.

        A convolution's terms are s12's `approx` ("expand" or "reduce", `kfac_statistics`).
        """
        theta = self._cast(problem.params)
        c = self._dt(self._scale(problem))
        factors: list[list[Any]] = [[0, 0] for _ in problem.layers]
        for trace, z, y in self._traces(problem):
            ds = self._backward(problem, theta, trace, np.eye(problem.output_dim, dtype=self._dt))
            middle = self._kfac_middle(problem, kind, z, y)
            for index, ((abar, _, _), d) in enumerate(zip(trace, ds, strict=True)):
                if abar.ndim == 2:
                    a_term, s_term = kfac_statistics(abar, d, middle, d.shape[1] // len(abar),
                                                     approx)
                else:
                    a_term, s_term = np.outer(abar, abar), d.T @ middle @ d
                factors[index][0] = factors[index][0] + a_term
                factors[index][1] = factors[index][1] + s_term
        batch = self._dt(problem.batch_size)
        return [(a / batch, c * s) for a, s in factors]

    def _factors_with(self, problem, kind, approx):
        """`kfac_factors` with s12's `approx` passed only where it is not the default."""
        if approx == "expand":
            return self.kfac_factors(problem, kind)
        return self.kfac_factors(problem, kind, approx=approx)

    def _pi(self, a: np.ndarray, s: np.ndarray):
        return np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(s) / s.shape[0]))

    def _kron_solve(self, a, s, v_block, damping, method):
        """Solve `(A (x) S + damping term) x = vec(V)` for one layer, `V` is `dim S x dim A`."""
        v = v_block.reshape((s.shape[0], a.shape[0]), order="F")
        if method == "eigen":
            la, qa = np.linalg.eigh(a)
            ls, qs = np.linalg.eigh(s)
            inner = (qs.T @ v @ qa) / (np.outer(ls, la) + self._dt(damping))
            return self._vec(qs @ inner @ qa.T)
        pi = self._pi(a, s)
        root = np.sqrt(self._dt(damping))
        a_d = a + pi * root * np.eye(a.shape[0], dtype=self._dt)
        s_d = s + root / pi * np.eye(s.shape[0], dtype=self._dt)
        return self._vec(np.linalg.solve(s_d, np.linalg.solve(a_d.T, v.T).T))

    def kfac_solve(self, problem, v, damping, method, kind="fisher", approx="expand"):
        """Block-diagonal K-FAC damped solve, `method` "eigen" or "factored"."""
        v = self._cast(v)
        out, start = [], 0
        for a, s in self._factors_with(problem, kind, approx):
            size = a.shape[0] * s.shape[0]
            out.append(self._kron_solve(a, s, v[start : start + size], damping, method))
            start += size
        return np.concatenate(out)

    # -- conjugate gradient (Grosse s4) ------------------------------------------------------
    def _cg_beta(self, rho_new, rho_old):
        return rho_new / rho_old

    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        """Preconditioned CG: stop at `||b - A x|| <= tol ||b||` or after `maxiter` iterations."""
        b = self._cast(b)
        x = np.zeros_like(b) if x0 is None else self._cast(x0).copy()
        maxiter = 10 * b.shape[0] if maxiter is None else maxiter
        apply_m = (lambda r: r) if precond is None else (lambda r: self._cast(precond(r)))
        r = b - self._cast(matvec(x))
        threshold = tol * np.linalg.norm(b)
        z = apply_m(r)
        p, rho = z, r @ z
        for _ in range(maxiter):
            if np.linalg.norm(r) <= threshold:
                break
            ap = self._cast(matvec(p))
            alpha = rho / (p @ ap)
            x = x + alpha * p
            r = r - alpha * ap
            z = apply_m(r)
            rho_new = r @ z
            p = z + self._cg_beta(rho_new, rho) * p
            rho = rho_new
        return x

    # -- section 9 methods -------------------------------------------------------------------
    def trust_region_update(self, problem, damping):
        """`-(|H| + damping I)^{-1} grad h` with `|H| = Q |Lambda| Q^T`."""
        lam, q = np.linalg.eigh(self.hessian(problem))
        return -(q @ ((q.T @ self.gradient(problem)) / (np.abs(lam) + self._dt(damping))))

    def bfgs_update(self, B, s, y):
        """`B + y y^T/(y^T s) - B s s^T B/(s^T B s)`."""
        B, s, y = self._cast(B), self._cast(s), self._cast(y)
        bs = B @ s
        return B + np.outer(y, y) / (y @ s) - np.outer(bs, bs) / (s @ bs)

    def lbfgs_direction(self, g, s_list, y_list, gamma=1.0):
        """`H_k g` by the two-loop recursion (pairs oldest first)."""
        q = self._cast(g).copy()
        pairs = [(self._cast(s), self._cast(y)) for s, y in zip(s_list, y_list, strict=True)]
        alphas = []
        for s, y in reversed(pairs):
            alpha = (s @ q) / (y @ s)
            alphas.append(alpha)
            q = q - alpha * y
        r = self._dt(gamma) * q
        for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
            r = r + s * (alpha - (y @ r) / (y @ s))
        return r

    def lbfgs_step(self, problem, s_list, y_list, lr, gamma=1.0):
        """One L-BFGS iteration: `(theta', s, y)`, `y` from the raw gradient at `theta`."""
        theta = self._cast(problem.params)
        g = self.gradient(problem)
        new_params = theta - self._dt(lr) * self.lbfgs_direction(g, s_list, y_list, gamma)
        moved = problem.replace(params=new_params.astype(np.float64))
        return new_params, new_params - theta, self.gradient(moved) - g

    def hutchinson_diag(self, matvec, n, num_samples, seed):
        """Mean over Rademacher `z` of `z * matvec(z)`."""
        total = np.zeros(n, self._dt)
        for z in self._probes(self._rng(seed), n, num_samples):
            total = total + z * self._cast(matvec(z))
        return total / self._dt(num_samples)

    def inverse_root(self, M, p, ridge=0.0):
        """`(M + ridge I)^{-1/p}` by eigendecomposition."""
        lam, q = np.linalg.eigh(self._cast(M) + self._dt(ridge) * np.eye(len(M), dtype=self._dt))
        return (q * lam ** self._dt(-1.0 / p)) @ q.T

    def shampoo_direction(self, G, L, R, eps):
        """`(L + eps I)^{-1/4} G (R + eps I)^{-1/4}`."""
        return self.inverse_root(L, 4, eps) @ self._cast(G) @ self.inverse_root(R, 4, eps)

    def lowrank_ggn_update(self, problem, damping):
        """`-(G + damping I)^{-1} grad h` by push-through in the `B*C` output space.

        With `U = sqrt(c) [J_b]` stacked and `H_L` block-diagonal,
        `(U^T H_L U + lam I)^{-1} g = (g - U^T (I + H_L U U^T / lam)^{-1} H_L U g / lam) / lam`.
        """
        examples = list(self._examples(problem))
        c = self._dt(self._scale(problem))
        u = np.sqrt(c) * np.concatenate([j for _, j, _, _ in examples])
        h = scipy.linalg.block_diag(
            *[self._loss_hessian(problem, z, y) for _, _, z, y in examples]
        ).astype(self._dt)
        g = self.gradient(problem)
        lam = self._dt(damping)
        inner = np.eye(u.shape[0], dtype=self._dt) + h @ (u @ u.T) / lam
        return -(g - u.T @ np.linalg.solve(inner, h @ (u @ g)) / lam) / lam


class NumpyPort32(NumpyPort):
    """The same correct port computing in float32 throughout."""

    name = "numpy-port-float32"
    dtype = "float32"
