"""`optax`: `optax.second_order` (`hvp`, `hessian_diag`, `fisher_diag`) behind the protocol.

Translation (no numbers adjusted): the problem becomes a Flax-layout pytree and a loss
`loss(params, inputs, targets) = c sum_b L(y_b, f(x_b))` (`_jax_model`); vectors go in and
come out through `ravel_pytree`, the order optax uses, and are mapped to the canonical layout.

* `hvp(problem, v)` -> `optax.second_order.hvp(loss, v, params, inputs, targets)`;
* `hessian_diag(problem)` -> `optax.second_order.hessian_diag(loss, params, inputs, targets)`;
* `empirical_fisher_diag(problem)` -> `optax.second_order.fisher_diag(loss, ...)`, documented
  as "the diagonal of the (observed) Fisher information matrix" with the negative log
  likelihood as argument. The closest protocol quantity is `diag(EF) = c sum_b g_b^2`;
  optax computes `(c sum_b g_b)^2`, the square of the batch gradient. The two agree only for
  one example; the disagreement is a finding (docs/findings.md), not patched here.

optax 0.2.7 deprecated the module (removal in 0.2.9); the adapter silences nothing.
"""

from __future__ import annotations

import functools

import numpy as np

from ngd_ref import Problem
from verify.adapters._jax_model import JaxModel, jax_model
from verify.adapters._x64 import in_x64

__all__ = ["Optax"]


@in_x64
class Optax:
    """optax's second-order utilities as a port (float64)."""

    name = "optax"
    dtype = "float64"

    def __init__(self) -> None:
        import optax.second_order  # noqa: F401 -- fail at construction when optax is absent

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _model(problem: Problem) -> JaxModel:
        return jax_model(problem)

    def hvp(self, problem: Problem, v):
        """`H v` by `optax.second_order.hvp` (forward-over-reverse)."""
        from optax import second_order

        m = self._model(problem)
        out = second_order.hvp(m.loss, m.to_raveled(v), m.params, m.inputs, m.targets)
        return m.canonical(out)

    def hessian_diag(self, problem: Problem):
        """`diag(H)` by `optax.second_order.hessian_diag` (one hvp per basis vector)."""
        from optax import second_order

        m = self._model(problem)
        return m.from_raveled(second_order.hessian_diag(m.loss, m.params, m.inputs, m.targets))

    def empirical_fisher_diag(self, problem: Problem):
        """Optax's `fisher_diag` of the objective: `(grad h)^2` (see the module docstring)."""
        from optax import second_order

        m = self._model(problem)
        return np.asarray(m.from_raveled(
            second_order.fisher_diag(m.loss, m.params, m.inputs, m.targets)))
