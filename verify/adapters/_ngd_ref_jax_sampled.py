"""`ngd-ref-jax`'s sampled estimators (PROTOCOL s11) and s13 capabilities, as a mixin.

Each method translates the problem (`ngd_ref.jax.from_problem`, the adapter's dtype) and calls
the JAX twin (`ngd_ref/sampled/_jax.py`, re-exported by `ngd_ref.jax`: MC Fisher dense and
diagonal, targets- and sketch-sampled K-FAC `S_l`, per-example gradients, Lanczos),
`ngd_ref.jax.mc_fisher_vp`, `ngd_ref.jax.fisher_diag` and `ngd_ref.jax.kfac_factors` (the
exact `A_l`). The PRNG key is `jax.random.PRNGKey(seed)`. `top_eigenpairs` runs Lanczos on the
JAX curvature operator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ngd_ref import Problem, unflatten
from ngd_ref import jax as nj

__all__ = ["SampledJaxMixin"]


class SampledJaxMixin:
    """PROTOCOL s11 and s13 methods for `NgdRefJax` (needs `_prepared`, `dtype`)."""

    if TYPE_CHECKING:  # provided by `NgdRefJax`
        dtype: str

        def _prepared(self, problem: Problem) -> tuple[nj.Objective, Any, nj.Batch]: ...

        def _cast(self, tree: Any) -> Any: ...

        def _host_vector(self, tree: Any) -> np.ndarray: ...

        def kfac_factors(
            self, problem: Problem, kind: str, approx: str = "expand"
        ) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def _flat(self, problem: Problem):
        """`(objective, theta, batch)`, the canonical `theta` cast on the host.

        (`nj.canonical_vector` on the device params would compile its concatenation eagerly.)
        """
        objective, _, batch = self._prepared(problem)
        return objective, self._cast(np.asarray(problem.params)), batch

    def mc_fisher(self, problem: Problem, num_samples: int, seed: int) -> np.ndarray:
        """`c sum_b (1/S) sum_s gh gh^T`."""
        objective, theta, batch = self._flat(problem)
        return np.asarray(nj.mc_fisher(objective, problem.layers, theta, batch.inputs,
                                       jax.random.PRNGKey(seed), int(num_samples)))

    def mc_fisher_diag(self, problem: Problem, num_samples: int, seed: int) -> np.ndarray:
        """Its diagonal."""
        objective, theta, batch = self._flat(problem)
        return np.asarray(nj.mc_fisher_diag(objective, problem.layers, theta, batch.inputs,
                                            jax.random.PRNGKey(seed), int(num_samples)))

    def mc_fisher_vp(self, problem: Problem, v: Any, num_samples: int, seed: int) -> np.ndarray:
        """`ngd_ref.jax.mc_fisher_vp` (scalable: no Jacobian is formed)."""
        objective, params, batch = self._prepared(problem)
        tree = self._cast(unflatten(problem.layers, np.asarray(v, dtype=np.float64)))
        return self._host_vector(nj.mc_fisher_vp(objective, params, batch, tree,
                                                 jax.random.PRNGKey(seed), int(num_samples)))

    def mc_kfac_factors(self, problem: Problem, num_samples: int, seed: int,
                        estimator: str = "targets") -> list[tuple[np.ndarray, np.ndarray]]:
        """`A_l` exact, `S_l` sampled (`targets`: pullback trick; `sketch`)."""
        if estimator not in ("targets", "sketch"):
            raise ValueError(f"estimator: expected 'targets' or 'sketch', got {estimator!r}")
        objective, theta, batch = self._flat(problem)
        s = nj.mc_kfac_s(objective, problem.layers, theta, batch.inputs,
                         jax.random.PRNGKey(seed), int(num_samples), estimator == "sketch")
        exact = nj.kfac_factors(problem, "fisher", dtype=self.dtype)
        return [(np.asarray(a), np.asarray(sl)) for (a, _), sl in zip(exact, s, strict=True)]

    def hutchinson_trace(self, matvec: Callable, n: int, num_samples: int, seed: int) -> float:
        """Mean of `z^T matvec(z)` over Rademacher probes drawn by JAX."""
        dtype = np.dtype(self.dtype)
        probes = np.asarray(jax.random.rademacher(jax.random.PRNGKey(seed),
                                                  (int(num_samples), int(n)), dtype=dtype))
        total = sum(float(z @ np.asarray(matvec(z.astype(np.float64)), dtype=dtype))
                    for z in probes)
        return dtype.type(total / num_samples)

    def fisher_diag(self, problem: Problem) -> np.ndarray:
        """Exact `diag(F)` (`ngd_ref.jax.fisher_diag`)."""
        objective, params, batch = self._prepared(problem)
        return self._host_vector(nj.fisher_diag(objective, params, batch))

    def per_example_gradients(self, problem: Problem) -> np.ndarray:
        """Rows `grad_theta L(y_b, f(x_b))` (vmapped gradients)."""
        objective, theta, batch = self._flat(problem)
        return np.asarray(nj.per_example_gradients(objective, problem.layers, theta,
                                                   batch.inputs, batch.targets))

    def kfac_factors_separate(self, problem: Problem, kind: str, approx: str = "expand"):
        """Weight and bias blocks from `kfac_factors` (A without / only its homogeneous entry)."""
        return [((a[:-1, :-1], s), (a[-1:, -1:], s))
                for a, s in self.kfac_factors(problem, kind, approx=approx)]

    def top_eigenpairs(self, problem: Problem, curvature: str, k: int):
        """Lanczos on the curvature operator; the k of largest `|lambda|` (ties by value)."""
        objective, params, batch = self._prepared(problem)
        values, vectors = _lanczos(objective, problem.layers, curvature, self.dtype)(
            params, batch, jax.random.PRNGKey(0))
        values, vectors = np.asarray(values), np.asarray(vectors)
        order = np.lexsort((-values, -np.abs(values)))[: int(k)]
        return values[order], vectors[:, order]

    def trace(self, problem: Problem, curvature: str) -> float:
        """`tr C` of the JAX-built dense matrix."""
        return float(np.trace(getattr(self, curvature)(problem)))


@functools.lru_cache(maxsize=64)
def _lanczos(objective, layers, curvature: str, dtype: str):
    """A jitted `(params, batch, key) -> all Ritz pairs` of one curvature (compiled once)."""
    n = sum(layer.n_params for layer in layers)  # any layer kind (PROTOCOL s12)

    @jax.jit
    def run(params, batch, key):
        op = nj.curvature_operator(objective, params, batch, curvature)

        def matvec(q):
            return nj.canonical_vector(op(nj.mlp_params(layers, q)))

        return nj.lanczos(matvec, n, key, jnp.dtype(dtype))

    return run
