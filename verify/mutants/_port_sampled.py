"""The numpy port's sampled estimators (PROTOCOL s11) and s13 capabilities, as a mixin.

Written like a third party would, from the protocol's text only, on `NumpyPort`'s own forward
pass, Jacobians and loss derivatives (no code shared with `ngd_ref`):

* targets `yhat ~ r(.|z_b)` drawn with `numpy.random.default_rng(seed)`, i.i.d. over
  examples and draws (`_sample_targets`); the score `u = dL/dz(yhat, z)` for all draws of an
  example at once (`_scores`);
* `mc_fisher = c sum_b (1/S) G_b^T G_b` with `G_b = U_b J_b` (rows `gh^T`; formed as
  `J_b^T (U_b^T U_b) J_b`, the `(C, C)` Gram first), its product with
  `v` and its diagonal; `mc_kfac_factors`: `A_l` exact, `S_l = c sum_b (1/S) Ds^T Ds` with
  `Ds = U_b (dz/ds_l)` (`targets`) or `W Q_b^T (dz/ds_l)` with Rademacher `W` and
  `Q_b = V sqrt(Lambda)` from `F_R,b = V Lambda V^T` (`sketch`);
* `hutchinson_trace`: the mean of `z^T matvec(z)` over Rademacher probes;
* s13: `fisher_diag`, `per_example_gradients`, `kfac_factors_separate` (the homogeneous
  split of `kfac_factors`), `top_eigenpairs` (`numpy.linalg.eigh`, sorted by `|lambda|`, ties
  by value), `trace`.
Each step is a small hook, so the sampling mutants (`verify.mutants.sampling`) override one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.special

from verify.mutants._port_base import PortPrimitives

__all__ = ["SampledPortMixin"]


class SampledPortMixin(PortPrimitives):
    """Sampled estimators and s13 capabilities for `NumpyPort` (see module docstring)."""

    # -- sampling hooks --------------------------------------------------------------------
    def _rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng(seed)

    def _probabilities(self, problem, z) -> np.ndarray:
        if problem.loss == "nll_probs":
            return z
        return self._softmax(z)

    def _sample_targets(self, problem, z, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` targets from `r(.|z)`: `(size,)` labels or `(size, C_y)`."""
        z64 = np.asarray(z, dtype=np.float64)
        if problem.loss in ("softmax_cross_entropy", "nll_probs"):
            p = np.asarray(self._probabilities(problem, z), dtype=np.float64)
            return rng.choice(p.shape[0], size=size, p=p / p.sum())
        if problem.loss == "sigmoid_cross_entropy":
            return (rng.random((size, z.shape[0])) < scipy.special.expit(z64)).astype(float)
        if problem.loss == "mse":
            return z64 + rng.standard_normal((size, z.shape[0]))
        if problem.loss == "poisson":
            return rng.poisson(np.exp(z64), size=(size, z.shape[0])).astype(float)
        mu, s = np.split(z64, 2)
        return mu + np.exp(s / 2) * rng.standard_normal((size, mu.shape[0]))

    def _scores(self, problem, z, ys) -> np.ndarray:
        """`dL/dz(y_s, z)` for all draws, `(S, C)` (PROTOCOL s2's losses)."""
        ys = np.asarray(ys)
        if problem.loss in ("softmax_cross_entropy", "nll_probs"):
            onehot = np.eye(z.shape[0], dtype=self._dt)[ys]
            if problem.loss == "nll_probs":
                return -onehot / z[None, :]
            return self._softmax(z)[None, :] - onehot
        ys = self._cast(ys)
        if problem.loss == "mse":
            return z[None, :] - ys
        if problem.loss == "sigmoid_cross_entropy":
            return scipy.special.expit(z).astype(self._dt)[None, :] - ys
        if problem.loss == "poisson":
            return np.exp(z)[None, :] - ys
        mu, s = np.split(z, 2)
        e = np.exp(-s)
        r = ys - mu[None, :]
        return np.concatenate([-r * e, self._dt(0.5) - self._dt(0.5) * r * r * e], axis=1)

    def _draws(self, problem, num_samples: int, rng: np.random.Generator):
        """Per example `(trace, J, z, U)`, `U` the `(S, C)` scores at sampled targets."""
        for trace, jac, z, _ in self._examples(problem):
            ys = self._sample_targets(problem, z, rng, num_samples)
            yield trace, jac, z, self._scores(problem, z, ys)

    def _mc_scale(self, problem, num_samples: int):
        return self._dt(self._scale(problem)) / self._dt(num_samples)

    # -- s11 -------------------------------------------------------------------------------
    def mc_fisher(self, problem, num_samples, seed):
        """`c sum_b (1/S) sum_s gh gh^T`."""
        draws = self._draws(problem, num_samples, self._rng(seed))
        # sum_s gh gh^T = J^T (U^T U) J: the (C, C) Gram of the scores first, S C^2 + C n^2
        # operations instead of S n^2
        total = sum(jac.T @ _gram(u) @ jac for _, jac, _, u in draws)
        return self._mc_scale(problem, num_samples) * total

    def mc_fisher_vp(self, problem, v, num_samples, seed):
        """`c sum_b (1/S) sum_s gh (gh^T v)`."""
        v = self._cast(v)
        total = 0
        for _, jac, _, u in self._draws(problem, num_samples, self._rng(seed)):
            total = total + jac.T @ (u.T @ (u @ (jac @ v)))  # G^T (G v), G = U J
        return self._mc_scale(problem, num_samples) * total

    def mc_fisher_diag(self, problem, num_samples, seed):
        """`c sum_b (1/S) sum_s gh * gh`."""
        total = 0
        for _, jac, _, u in self._draws(problem, num_samples, self._rng(seed)):
            # sum_s (u_s J)^2 entrywise = diag(J^T (U^T U) J)
            total = total + np.einsum("ci,cd,di->i", jac, _gram(u), jac)
        return self._mc_scale(problem, num_samples) * total

    def _output_root(self, problem, z) -> np.ndarray:
        """`Q` with `Q Q^T = F_R` (eigen root)."""
        lam, vec = np.linalg.eigh(self._output_fisher(problem, z))
        return vec * np.sqrt(np.clip(lam, 0, None))

    def _sketch_scores(self, problem, z, rng, num_samples: int) -> np.ndarray:
        """`(S, C)` rows `(Q_b w_s)^T` with Rademacher `w_s`."""
        q = self._output_root(problem, z)
        w = rng.choice(np.array([-1.0, 1.0], self._dt), size=(num_samples, q.shape[1]))
        return w @ q.T

    def mc_kfac_factors(self, problem, num_samples, seed, estimator="targets"):
        """`[(A_l, S_l)]`: `A_l` exact, `S_l = c sum_b (1/S) sum_s Ds Ds^T`."""
        if estimator not in ("targets", "sketch"):
            raise ValueError(f"estimator: expected 'targets' or 'sketch', got {estimator!r}")
        if any(hasattr(layer, "kernel") for layer in problem.layers):
            raise NotImplementedError("mc_kfac_factors: convolutions (PROTOCOL s12) are not "
                                      "implemented by this port")
        rng = self._rng(seed)
        theta = self._cast(problem.params)
        eye = np.eye(problem.output_dim, dtype=self._dt)
        factors: list[list[Any]] = [[0, 0] for _ in problem.layers]
        for trace, z, _ in self._traces(problem):
            if estimator == "sketch":
                u = self._sketch_scores(problem, z, rng, num_samples)
            else:
                u = self._scores(problem, z, self._sample_targets(problem, z, rng, num_samples))
            for index, d in enumerate(self._backward(problem, theta, trace, eye)):
                abar = trace[index][0]
                factors[index][0] = factors[index][0] + np.outer(abar, abar)
                factors[index][1] = factors[index][1] + d.T @ _gram(u) @ d
        batch = self._dt(problem.batch_size)
        scale = self._mc_scale(problem, num_samples)
        return [(a / batch, scale * s) for a, s in factors]

    def _probes(self, rng, n: int, count: int) -> np.ndarray:
        """`(count, n)` Rademacher vectors: entries -1 or 1 with probability 1/2 each."""
        return (2 * rng.integers(0, 2, size=(count, n)) - 1).astype(self._dt)

    def hutchinson_trace(self, matvec, n, num_samples, seed):
        """Mean over Rademacher `z` of `z^T matvec(z)`."""
        total = self._dt(0)
        for z in self._probes(self._rng(seed), n, num_samples):
            total = total + z @ self._cast(matvec(z))
        return total / self._dt(num_samples)

    # -- s13 -------------------------------------------------------------------------------
    def fisher_diag(self, problem):
        """`diag(F) = c sum_b diag(J_b^T F_R,b J_b)`."""
        c = self._dt(self._scale(problem))
        return c * sum(np.einsum("ik,ij,jk->k", j, self._output_fisher(problem, z), j)
                       for _, j, z, _ in self._examples(problem))

    def per_example_gradients(self, problem):
        """Rows `g_b = J_b^T dL/dz(y_b)`, unreduced."""
        return self._per_example_gradients(problem)

    def kfac_factors_separate(self, problem, kind, approx="expand"):
        """`[((A_w, S), (A_b, S))]` from `kfac_factors`: A without/with only its last row."""
        return [((a[:-1, :-1], s), (a[-1:, -1:], s))
                for a, s in self._factors_with(problem, kind, approx)]

    def top_eigenpairs(self, problem, curvature, k):
        """The k eigenpairs of largest `|lambda|` (ties: larger value first)."""
        lam, vec = np.linalg.eigh(getattr(self, str(curvature))(problem))
        # PROTOCOL s13: |lambda| equal within rounding of the largest is a tie, broken by value
        # (a Hessian's exact +-l pairs differ by rounding only, e.g. on conv nets)
        tie = 8 * lam.shape[0] * np.finfo(self._dt).eps * float(np.max(np.abs(lam)))
        order, rest = [], list(np.argsort(-np.abs(lam), kind="stable"))
        while rest:
            group = [i for i in rest if abs(lam[rest[0]]) - abs(lam[i]) <= tie]
            order += sorted(group, key=lambda i: -lam[i])
            rest = [i for i in rest if i not in group]
        top = np.array(order[:k], dtype=int)
        return lam[top], vec[:, top]

    def trace(self, problem, curvature):
        """`tr C`."""
        return np.trace(getattr(self, str(curvature))(problem))


def _gram(g: np.ndarray) -> np.ndarray:
    return g.T @ g
