"""The JAX twin of `ngd_ref.trajectory`: PROTOCOL s10 with every numerical piece in JAX.

`trajectory_jax(problem, batches, method, hyper, dtype=...)` takes the same steps as the dense
reference -- the optimizer state and its discrete decisions are the *same* recurrences
(`_Runner`), so the twin checks the JAX numerics, not a second reading of section 10 -- but
every quantity of a step comes from the JAX twin (`ngd_ref.jax`) in `dtype`: the loss and gradient
(`value_and_gradient`), the exact matrices `H`, `G`, `F`, `EF` (from `curvature_operator`
applied to the basis, jitted once per architecture), the K-FAC factors (`kfac_factors`,
exact expectations) and damped solves (`damped_solve_layers`, eqs. 23-24), CG
(`cg_solve`, `tol=0`), the inverse roots (`inverse_root`) and the two-loop recursion
(`lbfgs_direction`). The host keeps the state in float64.

Why not `ngd_ref.kfac.kfac` (the JAX K-FAC optimizer) or `ngd_ref.jax.hessian_free`: they
differ from section 10 in ways that are not settings (docs/trajectories.md lists them), so
claiming the capability through them would either fail or need patching their numbers.

Needs `jax_enable_x64` for `dtype="float64"` (the caller's choice; this module never changes
JAX's configuration).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ngd_ref import Problem
from ngd_ref.cg._jax import cg_solve
from ngd_ref.curvature._jax import (
    Objective,
    canonical_vector,
    curvature_operator,
    from_problem,
    mlp_params,
    to_device,
    value_and_gradient,
)
from ngd_ref.dense import FLOAT64, Curvature
from ngd_ref.kfac._jax import damped_solve_layers, kfac_factors
from ngd_ref.quasi_newton._jax import lbfgs_direction
from ngd_ref.shampoo._jax import inverse_root
from ngd_ref.trajectory._dense import Method, Trajectory, _check_hyper, _Runner, drive

__all__ = ["trajectory_jax"]

_MATRICES = tuple(c.value for c in Curvature)


@functools.partial(jax.jit, static_argnames=("objective", "layers"))
def _quantities(objective: Objective, layers, params, batch) -> dict[str, jax.Array]:
    """Loss, gradient and the four exact matrices (columns `C e_i`, symmetrized)."""
    loss, grad = value_and_gradient(objective, params, batch)
    flat = canonical_vector(params)
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    out = {"loss": loss, "gradient": canonical_vector(grad)}
    for kind in _MATRICES:
        op = curvature_operator(objective, params, batch, kind)
        columns = jax.vmap(lambda e, op=op: canonical_vector(op(mlp_params(layers, e))))(
            basis)
        out[kind] = (columns + columns.T) / 2
    return out


@functools.partial(jax.jit, static_argnames=("iters",))
def _cg_on_matrix(matrix: jax.Array, rhs: jax.Array, start: jax.Array, iters: int) -> jax.Array:
    """`iters` CG iterations (`tol=0`) on `v -> matrix v`, compiled once per (n, dtype, iters).

    (Eagerly, `cg_solve` on a new closure compiled its loop at every call.)
    """
    return cg_solve(lambda v: matrix @ v, rhs, start, tol=0.0, maxiter=iters).x


class _Point:
    """The JAX quantities of one (parameters, batch): what `_Runner` reads of a reference."""

    def __init__(self, problem: Problem, dtype: str) -> None:
        self.problem = problem
        objective, params, batch = from_problem(problem, dtype)
        out = _quantities(objective, problem.layers, params, batch)
        self._out = {key: np.asarray(value, dtype=np.float64) for key, value in out.items()}
        self.loss = float(self._out["loss"])
        self.gradient = self._out["gradient"]

    def matrix(self, curvature: Curvature | str) -> np.ndarray:
        return self._out[Curvature(curvature).value]


class _JaxRunner(_Runner):
    """`_Runner` with every numerical primitive in JAX at `dtype`."""

    def __init__(self, *args: Any, dtype: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dtype = dtype

    def _jnp(self, x: Any) -> jax.Array:
        return to_device(x, self.dtype)

    def _host(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def at(self, k: int, theta: np.ndarray) -> Any:
        # a `_Point`: it stands where the dense runner has its `DenseCurvature` (duck-typed)
        x, y = self.batches[k]
        moved = self.problem.replace(params=np.asarray(theta, dtype=np.float64),
                                     inputs=np.asarray(x, dtype=np.float64),
                                     targets=np.asarray(y))
        return _Point(moved, self.dtype)

    def trace_rounding(self, ref: Any, kind: str) -> None:
        """Not needed by a port's trajectory (only by the harness's ambiguity test)."""
        return None

    def magnitudes(self, ref: Any) -> tuple[float, float, float]:
        """Not needed by a port's trajectory (only by the harness's ambiguity test)."""
        return 0.0, 0.0, 1.0

    def exponent_range(self, ref: Any) -> float:
        """Not needed by a port's trajectory (only by the harness's range test)."""
        return 0.0

    def _solve(self, system, rhs):
        return self._host(jnp.linalg.solve(self._jnp(system), self._jnp(rhs)))

    def _cg(self, system, rhs, start, iters):
        return self._host(_cg_on_matrix(self._jnp(system), self._jnp(rhs), self._jnp(start),
                                        iters=int(iters)))

    def _factors(self, ref: Any, kind: str) -> list:  # ref: the `_Point` of `at`
        return [(self._host(a), self._host(s))
                for a, s in kfac_factors(ref.problem, kind, dtype=self.dtype,
                                         approx=self.hyper.get("approx", "expand"))]

    def _kfac_solve(self, factors, v, lam, method):
        layers, blocks, start = self.problem.layers, [], 0
        for layer in layers:
            size = layer.n_params
            blocks.append(self._jnp(v[start:start + size].reshape(
                layer.weight_shape, order="F")))
            start += size
        out = damped_solve_layers([(self._jnp(a), self._jnp(s)) for a, s in factors], blocks,
                                     self._jnp(lam), method)
        return np.concatenate([self._host(o).reshape(-1, order="F") for o in out])

    def _root(self, matrix, eps):
        return self._host(inverse_root(self._jnp(matrix), 4, float(eps)))

    def _two_loop(self, g, s_list, y_list, gamma):
        n = g.shape[0]

        def stack(vectors: list) -> jax.Array:
            return self._jnp(np.stack(vectors) if vectors else np.zeros((0, n)))

        return self._host(lbfgs_direction(self._jnp(g), stack(s_list), stack(y_list),
                                             float(gamma)))


def trajectory_jax(problem: Problem, batches: Sequence[tuple[Any, Any]], method: Method | str,
                   hyper: Mapping[str, Any], *, dtype: str = "float64",
                   eps: float | None = None) -> Trajectory:
    """PROTOCOL s10's trajectory with JAX numerics in `dtype` (see the module docstring).

    Args:
        problem: layers, loss, reduction and `theta_0 = problem.params`.
        batches: K `(inputs, targets)` pairs.
        method: a `Method`.
        hyper: the method's keys (`HYPER_KEYS`).
        dtype: `"float64"` (needs `jax_enable_x64`) or `"float32"`.
        eps: eq. 27's machine epsilon (default: that of `dtype`).

    Raises:
        ValueError: as `ngd_ref.trajectory.trajectory`.
    """
    method = Method(method)
    _check_hyper(method, hyper)
    eps = float(np.finfo(np.dtype(dtype)).eps) if eps is None else float(eps)
    theta = np.asarray(problem.params, dtype=np.float64)
    return drive(_JaxRunner(problem, batches, method, hyper, FLOAT64, eps, theta, dtype=dtype))
