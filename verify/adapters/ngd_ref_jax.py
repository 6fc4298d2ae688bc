"""`ngd-ref-jax`: the project's own JAX implementation behind the protocol (PROTOCOL s5).

The harness validates `ngd_ref.jax` exactly as it validates anyone else's port: this class
only translates a `Problem` into `ngd_ref.jax` terms (`from_problem`: the canonical MLP, its
params pytree and the batch, in the adapter's dtype) and calls the public functions.

Compilation is grouped per problem: one jitted call computes every dense quantity (loss,
gradient, the four matrices from products with the basis vectors, the exact diagonals), one
computes the four products for a vector; results are cached per problem. `cg` runs the jitted
`ngd_ref.jax.cg_solve` with the caller's numpy `matvec`/`precond` reached through
`jax.pure_callback`, compiled once per vector length.

To extend (K-FAC, PROTOCOL s9 methods), add methods that call `self._prepared(problem)` for
`(objective, params, batch)` and return numpy arrays.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ngd_ref import Problem
from ngd_ref import jax as nj
from verify.adapters._ngd_ref_jax_sampled import SampledJaxMixin

__all__ = ["NgdRefJax", "NgdRefJaxFloat32"]

jax.config.update("jax_enable_x64", True)  # float64 needs it; float32 arrays stay float32

_KINDS = ("hessian", "ggn", "fisher", "empirical_fisher")


@functools.partial(jax.jit, static_argnames=("objective", "layers"))
def _dense_quantities(objective: nj.Objective, layers, params, batch) -> dict[str, jax.Array]:
    """Loss, gradient, the four matrices (columns `C e_i`) and the exact diagonals."""
    loss, grad = nj.value_and_gradient(objective, params, batch)
    flat = nj.canonical_vector(params)
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    out = {"loss": loss, "gradient": nj.canonical_vector(grad)}
    for kind in _KINDS:
        op = nj.curvature_operator(objective, params, batch, kind)
        columns = jax.vmap(
            lambda e, op=op: nj.canonical_vector(op(nj.mlp_params(layers, e))))(basis)
        out[kind] = (columns + columns.T) / 2  # columns.T is C; symmetrize the rounding
    out["hessian_diag"] = nj.canonical_vector(nj.hessian_diag(objective, params, batch))
    out["ggn_diag"] = nj.canonical_vector(nj.ggn_diag(objective, params, batch))
    out["empirical_fisher_diag"] = nj.canonical_vector(
        nj.empirical_fisher_diag(objective, params, batch))
    return out


@functools.partial(jax.jit, static_argnames=("objective", "layers"))
def _products(objective: nj.Objective, layers, params, batch, v) -> dict[str, jax.Array]:
    tree = nj.mlp_params(layers, v)
    return {kind: nj.canonical_vector(nj.curvature_vp(objective, params, batch, tree, kind))
            for kind in _KINDS}


@jax.jit
def _damped_solve(matrix: jax.Array, gradient: jax.Array, damping: jax.Array) -> jax.Array:
    return -jnp.linalg.solve(matrix + damping * jnp.eye(matrix.shape[0], dtype=matrix.dtype),
                             gradient)


@functools.partial(jax.jit, static_argnames=("objective", "layers"))
def _lbfgs_step(objective: nj.Objective, layers, params, batch, s_stack, y_stack, lr, gamma):
    """`(theta', s, y)`: `theta' = theta - lr H_k g`, `y` from the raw gradient `g`."""
    g = nj.canonical_vector(nj.gradient(objective, params, batch))
    theta = nj.canonical_vector(params)
    new = theta - lr * nj.lbfgs_direction(g, s_stack, y_stack, gamma)
    moved = nj.canonical_vector(nj.gradient(objective, nj.mlp_params(layers, new), batch))
    return new, new - theta, moved - g


# -- cg with host callables ----------------------------------------------------------------------
_HOST: dict[str, Callable[[np.ndarray], Any]] = {}


@contextlib.contextmanager
def _host_operators(matvec: Callable, precond: Callable | None) -> Iterator[None]:
    _HOST["matvec"], _HOST["precond"] = matvec, precond or (lambda r: r)
    try:
        yield
    finally:
        _HOST.clear()


def _host_call(name: str, v: np.ndarray) -> np.ndarray:
    return np.asarray(_HOST[name](np.array(v)), dtype=v.dtype)


@functools.partial(jax.jit, static_argnames=("history", "preconditioned"))
def _cg_host(b, x0, tol, maxiter, *, history: int, preconditioned: bool):
    shape = jax.ShapeDtypeStruct(b.shape, b.dtype)

    def via_host(name):
        return lambda v: jax.pure_callback(functools.partial(_host_call, name), shape, v)

    precond = via_host("precond") if preconditioned else None
    return nj.cg_solve(via_host("matvec"), b, x0, tol=tol, maxiter=maxiter, precond=precond,
                       history=history).x


class NgdRefJax(SampledJaxMixin):
    """`ngd_ref.jax` in float64 through PROTOCOL section 5."""

    name = "ngd-ref-jax"
    dtype = "float64"

    # -- translation ---------------------------------------------------------------------------
    def _prepared(self, problem: Problem) -> tuple[nj.Objective, Any, nj.Batch]:
        """`(objective, params, batch)` of the problem in this adapter's dtype."""
        return _prepare(problem, self.dtype)

    def _dense(self, problem: Problem) -> dict[str, np.ndarray]:
        return _dense_cached(problem, self.dtype)

    def _vector(self, v: Any) -> jax.Array:
        return jnp.asarray(np.asarray(v, dtype=np.float64), self.dtype)

    def _product(self, kind: str, problem: Problem, v: Any) -> np.ndarray:
        objective, params, batch = self._prepared(problem)
        out = _products(objective, problem.layers, params, batch, self._vector(v))
        return np.asarray(out[kind])

    # -- PROTOCOL s5 ---------------------------------------------------------------------------
    def loss(self, problem: Problem) -> float:
        """`h(theta)`."""
        return float(self._dense(problem)["loss"])

    def gradient(self, problem: Problem) -> np.ndarray:
        """`grad h`."""
        return self._dense(problem)["gradient"]

    def hessian(self, problem: Problem) -> np.ndarray:
        """Dense `H` from Hessian-vector products with the basis."""
        return self._dense(problem)["hessian"]

    def ggn(self, problem: Problem) -> np.ndarray:
        """Dense `G` from GGN-vector products with the basis."""
        return self._dense(problem)["ggn"]

    def fisher(self, problem: Problem) -> np.ndarray:
        """Dense true Fisher from exact Fisher-vector products with the basis."""
        return self._dense(problem)["fisher"]

    def empirical_fisher(self, problem: Problem) -> np.ndarray:
        """Dense `EF` from empirical-Fisher-vector products with the basis."""
        return self._dense(problem)["empirical_fisher"]

    def hvp(self, problem: Problem, v: Any) -> np.ndarray:
        """`H v`."""
        return self._product("hessian", problem, v)

    def ggn_vp(self, problem: Problem, v: Any) -> np.ndarray:
        """`G v`."""
        return self._product("ggn", problem, v)

    def fisher_vp(self, problem: Problem, v: Any) -> np.ndarray:
        """`F v`."""
        return self._product("fisher", problem, v)

    def empirical_fisher_vp(self, problem: Problem, v: Any) -> np.ndarray:
        """`EF v`."""
        return self._product("empirical_fisher", problem, v)

    def hessian_diag(self, problem: Problem) -> np.ndarray:
        """Exact `diag(H)`."""
        return self._dense(problem)["hessian_diag"]

    def ggn_diag(self, problem: Problem) -> np.ndarray:
        """Exact `diag(G)`."""
        return self._dense(problem)["ggn_diag"]

    def empirical_fisher_diag(self, problem: Problem) -> np.ndarray:
        """Exact `diag(EF)`."""
        return self._dense(problem)["empirical_fisher_diag"]

    def damped_update(self, problem: Problem, curvature: str, damping: float) -> np.ndarray:
        """`-(C + damping I)^{-1} grad h` by a dense solve of the JAX-built matrix."""
        quantities = self._dense(problem)
        matrix = jnp.asarray(quantities[curvature])
        return np.asarray(_damped_solve(matrix, jnp.asarray(quantities["gradient"]),
                                        jnp.asarray(damping, matrix.dtype)))

    def cg(self, matvec: Callable, b: Any, x0: Any = None, tol: float = 1e-10,
           maxiter: int | None = None, precond: Callable | None = None) -> np.ndarray:
        """`ngd_ref.jax.cg_solve` on the caller's operator (PROTOCOL s5 signature)."""
        b = self._vector(b)
        n = b.shape[0]
        x0 = jnp.zeros_like(b) if x0 is None else self._vector(x0)
        maxiter = 10 * n if maxiter is None else int(maxiter)
        with _host_operators(matvec, precond):
            x = _cg_host(b, x0, jnp.asarray(tol, b.dtype), jnp.asarray(maxiter, jnp.int32),
                         history=10 * n + 1, preconditioned=precond is not None)
            return np.asarray(x)

    # -- PROTOCOL s9 (the seeds' other second-order methods; ngd_ref.{newton,quasi_newton,...}) --
    def _matrix(self, m: Any) -> jax.Array:
        return jnp.asarray(np.asarray(m, dtype=np.float64), self.dtype)

    def trust_region_update(self, problem: Problem, damping: float) -> np.ndarray:
        """`-(|H| + damping I)^{-1} grad h` (`ngd_ref.jax.trust_region_update`)."""
        objective, params, batch = self._prepared(problem)
        return np.asarray(nj.canonical_vector(
            nj.trust_region_update(objective, params, batch, damping)))

    def bfgs_update(self, B: Any, s: Any, y: Any) -> np.ndarray:
        """BFGS update of the Hessian approximation (`ngd_ref.jax.bfgs_update`)."""
        return np.asarray(nj.bfgs_update(self._matrix(B), self._vector(s), self._vector(y)))

    def _pair_stacks(self, s_list: Any, y_list: Any, n: int) -> tuple[jax.Array, jax.Array]:
        shape = (len(s_list), n)
        return (self._matrix(np.reshape(np.asarray(s_list, dtype=np.float64), shape)),
                self._matrix(np.reshape(np.asarray(y_list, dtype=np.float64), shape)))

    def lbfgs_direction(self, g: Any, s_list: Any, y_list: Any, gamma: float = 1.0) -> np.ndarray:
        """`H_k g` by the two-loop recursion (`ngd_ref.jax.lbfgs_direction`; oldest first)."""
        g = self._vector(g)
        return np.asarray(nj.lbfgs_direction(g, *self._pair_stacks(s_list, y_list, g.shape[0]),
                                             gamma))

    def lbfgs_step(self, problem: Problem, s_list: Any, y_list: Any, lr: float,
                   gamma: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One L-BFGS iteration `(theta', s, y)` (protocol extension; jitted `_lbfgs_step`)."""
        objective, params, batch = self._prepared(problem)
        stacks = self._pair_stacks(s_list, y_list, problem.n_params)
        dtype = stacks[0].dtype
        out = _lbfgs_step(objective, problem.layers, params, batch, *stacks,
                          jnp.asarray(lr, dtype), jnp.asarray(gamma, dtype))
        return tuple(np.asarray(part) for part in out)

    def hutchinson_diag(self, matvec: Callable, n: int, num_samples: int, seed: int) -> np.ndarray:
        """`ngd_ref.jax.hutchinson_diag` on the caller's numpy `matvec` (host callback)."""
        dtype = np.dtype(self.dtype)

        def host(z: jax.Array) -> jax.Array:
            return jax.pure_callback(
                lambda v: np.asarray(matvec(np.asarray(v, dtype=np.float64)), dtype=dtype),
                jax.ShapeDtypeStruct((n,), dtype), z)

        return np.asarray(nj.hutchinson_diag(host, jnp.zeros(n, dtype), int(num_samples),
                                             jax.random.PRNGKey(seed)))

    def inverse_root(self, M: Any, p: int, ridge: float = 0.0) -> np.ndarray:
        """`(M + ridge I)^{-1/p}` by eigendecomposition (`ngd_ref.jax.inverse_root`)."""
        return np.asarray(nj.inverse_root(self._matrix(M), int(p), ridge))

    def shampoo_direction(self, G: Any, L: Any, R: Any, eps: float) -> np.ndarray:
        """`(L + eps I)^{-1/4} G (R + eps I)^{-1/4}` (`ngd_ref.jax.shampoo_direction`)."""
        return np.asarray(nj.shampoo_direction(self._matrix(G), self._matrix(L), self._matrix(R),
                                               eps))

    def kfac_factors(self, problem: Problem, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """K-FAC factors `[(A_l, S_l), ...]` (PROTOCOL s4), exact expectations, in JAX."""
        factors = nj.kfac_factors(problem, kind, dtype=self.dtype)
        return [(np.asarray(a), np.asarray(s)) for a, s in factors]

    def kfac_solve(self, problem: Problem, v: Any, damping: float, method: str,
                   kind: str = "fisher") -> np.ndarray:
        """Block-diagonal damped K-FAC solve (eq. 23 `eigen` or eq. 24 `factored`), in JAX."""
        return np.asarray(nj.kfac_solve(problem, np.asarray(v, dtype=np.float64), damping,
                                        method, kind, dtype=self.dtype))

    def lowrank_ggn_update(self, problem: Problem, damping: float) -> np.ndarray:
        """`-(G + damping I)^{-1} grad h` in output space (`ngd_ref.jax.lowrank_ggn_update`)."""
        objective, params, batch = self._prepared(problem)
        return np.asarray(nj.canonical_vector(
            nj.lowrank_ggn_update(objective, params, batch, damping)))


class NgdRefJaxFloat32(NgdRefJax):
    """`ngd_ref.jax` in float32 (the same code; tolerances follow float32's unit roundoff)."""

    name = "ngd-ref-jax-float32"
    dtype = "float32"


@functools.lru_cache(maxsize=256)
def _prepare(problem: Problem, dtype: str):
    return nj.from_problem(problem, dtype)


@functools.lru_cache(maxsize=256)
def _dense_cached(problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    objective, params, batch = _prepare(problem, dtype)
    out = _dense_quantities(objective, problem.layers, params, batch)
    return {key: np.asarray(value) for key, value in out.items()}
