"""`ngd-ref-jax`: the project's own JAX implementation behind the protocol (PROTOCOL s5).

The harness validates `ngd_ref.jax` exactly as it validates anyone else's port: this class
only translates a `Problem` into `ngd_ref.jax` terms and calls the public functions. It is
also the cross-validation of `ngd-verify run` (`verify._main_job`): the harness checking
`NgdRefJax` and `NgdRefJaxFloat32` on the zoo, and, with `devices=N`, the same with the
batch sharded over N devices.

Compilation is shared across problems (`verify.adapters._jax_frames`): the adapter embeds
each problem in a padded universal MLP, one per *frame* of problems, and compiles each of
its kernels once per (frame, dtype, mesh) with XLA's `-O0` and no fusion emitters
(`_COMPILER_OPTIONS`); the results are read off at the problem's own coordinates. Built
with `problems=` (as `ngd-verify run` does) it plans the frames over them (the full zoo: 3
frames); built with no arguments (as `ngd-verify check` does) every problem gets a frame of
its own. A network with convolutions (PROTOCOL s12) is no MLP: it is its own frame
(`_jax_frames.own_embedding`: its `ngd_ref.jax.network_apply`, compiled per architecture).
The kernels, called once per problem (per vector for the products):

* `_quantities`: `h`, `grad h` and the exact diagonals of G, F, EF;
* `_hessian_diag`: the exact `diag(H)` by n HVPs;
* `_matrices`: H, G, F, EF from products with the basis vectors;
* `_products`: the four curvature-vector products of one vector;
* `_cg_dense`: `ngd_ref.jax.cg_solve` on a materialized operator `v -> A v`, for `cg` and
  `damped_update`;
* `_hutchinson_dense`: `ngd_ref.jax.hutchinson_diag` on a materialized operator.

`damped_update` solves `(C + lambda I) x = -grad h` by `_cg_dense` on `C` materialized from n
`_products` calls (the columns `C e_i`, cached per problem, computed once for all four
curvatures and every damping); where CG does not converge (an indefinite, nonsingular
`H + lambda I`, or the indefinite GGN of `gaussian_logvar`) by LU on the same matrix. A CG
program per frame on the linearized operator (`curvature_operator`, the curvature chosen by
`lax.switch`) cost 33 s of tracing and compilation over the zoo's 24 frames and dtypes,
against ~2 s for the products; `curvature_operator` itself is checked by the matrix
capabilities (`_matrices`) and the Hessian-free trajectories of `ngd-verify check`.

`cg` runs the jitted `ngd_ref.jax.cg_solve` on the caller's operator materialized: the
columns `matvec(e_i)` (and `precond(e_i)`), n host calls, then `v -> A v` inside the
program. PROTOCOL s5's operators are linear (CG needs it), so this is the same operator; a
product through `jax.pure_callback` instead cost ~0.2 ms per CG iteration in JAX's callback
machinery, against microseconds for the columns. The system is padded to a length bucket
(an identity block with zero right-hand side: exact zeros, so the iterates are unchanged)
and compiled once per (bucket, dtype, preconditioned).

JAX's global state is left alone: every method runs inside `jax.enable_x64(True)` (a
thread-local context, `verify.adapters._x64`), so float64 works without flipping the global
flag; float32 arrays stay float32.

To extend (K-FAC, PROTOCOL s9 methods), add methods that call `self._prepared(problem)` for
`(objective, params, batch)` and return numpy arrays.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ngd_ref import Problem, flatten
from ngd_ref import jax as nj
from verify._tolerance import unit_roundoff
from verify.adapters._jax_frames import Embedded, FramePlan
from verify.adapters._ngd_ref_jax_sampled import SampledJaxMixin
from verify.adapters._ngd_ref_jax_trajectory import TrajectoryJax
from verify.adapters._x64 import in_x64, x64

__all__ = ["NgdRefJax", "NgdRefJaxFloat32"]

_KINDS = ("hessian", "ggn", "fisher", "empirical_fisher")

#: XLA options for the frame kernels: LLVM -O0 and no fusion emitters cut the CPU compile
#: time ~4x (measured: 4.5 s -> 1.0 s for the HVP of the C = 3 frame); the kernels run in
#: milliseconds either way. One LLVM module per program instead of XLA's default split for
#: parallel code generation: ~30% less compile CPU for programs this small (the float64
#: frame kernels of the zoo: 10.3 -> 6.7 CPU s). Rounding stays within the policy (the
#: order of operations of each reduction is XLA's choice in any case).
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                     "xla_cpu_parallel_codegen_split_count": 1}


def _kernel(one: Callable[..., Any]) -> Any:
    """Jit `one(objective, params, batch, *data, mesh=)` (objective and mesh static)."""
    return jax.jit(one, static_argnames=("objective", "mesh"),
                   compiler_options=_COMPILER_OPTIONS)


def _flat(tree: Any) -> jax.Array:
    return ravel_pytree(tree)[0]


def _operator(objective, params, batch, kind: str, mesh) -> Callable[[Any], Any]:
    """`v -> C v` on params pytrees: linearized once without a mesh, `curvature_vp` on one."""
    if mesh is None:
        return nj.curvature_operator(objective, params, batch, kind)
    return functools.partial(nj.curvature_vp, objective, params, batch, curvature=kind,
                             mesh=mesh)


@_kernel
def _quantities(objective, params, batch, *, mesh) -> dict[str, jax.Array]:
    """`h`, `grad h` and the exact diagonals of G, F and EF."""
    loss, grad = nj.value_and_gradient(objective, params, batch, mesh=mesh)
    diagonals = nj.exact_diagonals(objective, params, batch, mesh=mesh)
    return {"loss": loss, "gradient": _flat(grad),
            **{f"{kind}_diag": _flat(diagonal) for kind, diagonal in diagonals.items()}}


@_kernel
def _hessian_diag(objective, params, batch, *, mesh) -> dict[str, jax.Array]:
    """The exact `diag(H)` by n HVPs (`ngd_ref.jax.hessian_diag` has no mesh)."""
    del mesh
    return {"hessian_diag": _flat(nj.hessian_diag(objective, params, batch))}


@_kernel
def _matrices(objective, params, batch, *, mesh) -> dict[str, jax.Array]:
    """The four matrices' rows `(C e_i)^T` over the universal basis."""
    flat, unravel = ravel_pytree(params)
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    out = {}
    for kind in _KINDS:
        op = _operator(objective, params, batch, kind, mesh)
        out[kind] = jax.vmap(lambda e, op=op: _flat(op(unravel(e))))(basis)
    return out


@_kernel
def _products(objective, params, batch, v, *, mesh) -> dict[str, jax.Array]:
    """`C v` for the four curvatures."""
    tree = ravel_pytree(params)[1](v)
    products = nj.curvature_products(objective, params, batch, tree, _KINDS, mesh=mesh)
    return {kind: _flat(products[kind]) for kind in _KINDS}


# -- host callables ------------------------------------------------------------------------------
#: the smallest padded `cg` length (`_bucket`)
_MIN_BUCKET = 64
#: one sharded program at a time across threads: XLA's in-process CPU collectives deadlock
#: (a rendezvous missing a thread) when several are in flight at once
_SHARDED_LOCK = threading.Lock()


def _bucket(n: int) -> int:
    """The padded length of a CG vector: a power of two, at least `_MIN_BUCKET`."""
    return max(_MIN_BUCKET, 1 << (n - 1).bit_length())


def _columns(function: Callable, n: int) -> np.ndarray:
    """`[f(e_1) ... f(e_n)]` of a linear operator on R^n (n host calls), in float64."""
    return np.stack([np.asarray(function(column), dtype=np.float64) for column in np.eye(n)],
                    axis=1)


def _padded(matrix: np.ndarray, size: int) -> np.ndarray:
    """`matrix` with an identity block to `size x size`."""
    out = np.eye(size, dtype=matrix.dtype)
    n = matrix.shape[0]
    out[:n, :n] = matrix
    return out


def _solve_dense(a: np.ndarray, m: np.ndarray | None, b: np.ndarray, x0: np.ndarray | None,
                 tol: float, maxiter: int) -> tuple[np.ndarray, bool]:
    """`(x, converged)` of `_cg_dense` on `A x = b` (preconditioner `M`), in `a`'s dtype.

    The system is padded to `_bucket(n)` (an identity block, zero right-hand side and start:
    exact zeros, so the iterates are unchanged) so that one program serves every length up
    to the bucket. Numpy arguments: jit transfers them in its fast path.
    """
    n, dtype = b.shape[0], a.dtype
    size = _bucket(n)
    vectors = np.zeros((2, size), dtype=dtype)
    vectors[0, :n] = b
    if x0 is not None:
        vectors[1, :n] = x0
    padded_a = _padded(a, size)
    x, converged = _cg_dense(padded_a, padded_a if m is None else _padded(m, size),
                             vectors[0], vectors[1], dtype.type(tol), np.int32(maxiter),
                             history=10 * size + 1, preconditioned=m is not None)
    return np.asarray(x)[:n], bool(converged)


@functools.partial(jax.jit, static_argnames=("history", "preconditioned"),
                   compiler_options=_COMPILER_OPTIONS)
def _cg_dense(a, m, b, x0, tol, maxiter, *, history: int, preconditioned: bool):
    """`ngd_ref.jax.cg_solve` on `v -> A v` (and `r -> M r`) for materialized `A`, `M`."""
    precond = (lambda r: m @ r) if preconditioned else None
    result = nj.cg_solve(lambda v: a @ v, b, x0, tol=tol, maxiter=maxiter, precond=precond,
                         history=history)
    return result.x, result.converged


@functools.partial(jax.jit, static_argnames=("num_samples",),
                   compiler_options=_COMPILER_OPTIONS)
def _hutchinson_dense(a, key, *, num_samples: int):
    """`ngd_ref.jax.hutchinson_diag` on `v -> A v` for a materialized `A`."""
    return nj.hutchinson_diag(lambda v: a @ v, a[0], num_samples, key)


@functools.partial(jax.jit, static_argnames=("objective", "layers"))
def _lbfgs_step(objective: nj.Objective, layers, params, batch, s_stack, y_stack, lr, gamma):
    """`(theta', s, y)`: `theta' = theta - lr H_k g`, `y` from the raw gradient `g`."""
    g = nj.canonical_vector(nj.gradient(objective, params, batch))
    theta = nj.canonical_vector(params)
    new = theta - lr * nj.lbfgs_direction(g, s_stack, y_stack, gamma)
    moved = nj.canonical_vector(nj.gradient(objective, nj.mlp_params(layers, new), batch))
    return new, new - theta, moved - g


@in_x64
class NgdRefJax(TrajectoryJax, SampledJaxMixin):
    """`ngd_ref.jax` in float64 through PROTOCOL section 5.

    Args:
        problems: the problems it will be asked about, to share compilations (optional).
        devices: with N > 1, the batch of every frame computation (loss, gradient, products,
            diagonals of G, F, EF, matrices, damped updates) is sharded over N devices
            (`ngd_ref.jax.batch_mesh`); the name becomes `<name>-sharded<N>`.
    """

    name = "ngd-ref-jax"
    dtype = "float64"
    layer_kinds = ("dense", "conv2d")  # PROTOCOL s12 (a conv net is its own frame)

    def __init__(self, problems: Sequence[Problem] = (), devices: int = 1) -> None:
        self._plan = FramePlan(problems)
        self._mesh = nj.batch_mesh(devices) if devices > 1 else None
        if devices > 1:
            self.name = f"{type(self).name}-sharded{devices}"
        self._cache: dict[tuple[int, str, bool], dict[str, np.ndarray]] = {}
        self._device: dict[int, tuple[Embedded, Any, nj.Batch]] = {}

    # -- translation ---------------------------------------------------------------------------
    def _prepared(self, problem: Problem) -> tuple[nj.Objective, Any, nj.Batch]:
        """`(objective, params, batch)` of the problem in this adapter's dtype."""
        return _prepare(problem, self.dtype)

    def _cast(self, tree: Any) -> Any:
        """The tree's leaves as device arrays of this dtype, cast on the host (`nj.to_device`)."""
        return jax.tree.map(lambda leaf: nj.to_device(leaf, self.dtype), tree)

    def _host_vector(self, tree: Any) -> np.ndarray:
        """A params-like device tree -> canonical vector of this dtype, flattened on the host.

        (`nj.canonical_vector` outside a trace compiles its reshapes and concatenation.)
        """
        return flatten(jax.tree.map(np.asarray, tree)).astype(self.dtype)

    def _framed(self, problem: Problem) -> tuple[Embedded, Any, nj.Batch]:
        """The problem's embedding and its universal params and batch in this dtype (cached)."""
        e = self._plan.embedded(problem)
        if id(e) not in self._device:
            labels = e.targets.dtype.kind == "i"  # int32 labels, as `nj.from_problem` gives
            targets = (nj.to_device(e.targets, np.int32) if labels
                       else self._cast(e.targets))
            batch = nj.Batch(self._cast(e.inputs), targets, self._cast(e.weights))
            self._device[id(e)] = (e, self._cast(e.params), batch)
        return self._device[id(e)]

    def _run(self, kernel: Any, *args: Any, mesh: Any) -> Any:
        """`kernel(*args, mesh=mesh)` on the host (sharded programs one at a time)."""
        with _SHARDED_LOCK if mesh is not None else contextlib.nullcontext():
            return jax.tree.map(np.asarray, kernel(*args, mesh=mesh))

    def _computed(self, kernel: Any, problem: Problem, sharded: bool = True
                  ) -> dict[str, np.ndarray]:
        """A vector-free kernel's host outputs for the problem (cached per embedding)."""
        e, params, batch = self._framed(problem)
        mesh = self._mesh if sharded else None
        key = (id(e), kernel.__name__, mesh is not None)
        if key not in self._cache:
            self._cache[key] = self._run(kernel, e.frame.objective, params, batch, mesh=mesh)
        return self._cache[key]

    def _vector(self, v: Any) -> jax.Array:
        return self._cast(np.asarray(v, dtype=np.float64))

    def _product(self, kind: str, problem: Problem, v: Any) -> np.ndarray:
        e, params, batch = self._framed(problem)
        out = self._run(_products, e.frame.objective, params, batch,
                        e.flat(np.asarray(v, dtype=np.float64)).astype(self.dtype),
                        mesh=self._mesh)
        return e.own(out[kind])

    def _own(self, problem: Problem, kernel: Any, key: str, sharded: bool = True) -> np.ndarray:
        return self._plan.embedded(problem).own(self._computed(kernel, problem, sharded)[key])

    def _matrix_of(self, problem: Problem, kind: str) -> np.ndarray:
        index = self._plan.embedded(problem).index
        rows = self._computed(_matrices, problem)[kind][np.ix_(index, index)]
        return (rows + rows.T) / 2  # rows.T is C; symmetrize the rounding

    # -- PROTOCOL s5 ---------------------------------------------------------------------------
    def loss(self, problem: Problem) -> float:
        """`h(theta)`."""
        return float(self._computed(_quantities, problem)["loss"])

    def gradient(self, problem: Problem) -> np.ndarray:
        """`grad h`."""
        return self._own(problem, _quantities, "gradient")

    def hessian(self, problem: Problem) -> np.ndarray:
        """Dense `H` from Hessian-vector products with the basis."""
        return self._matrix_of(problem, "hessian")

    def ggn(self, problem: Problem) -> np.ndarray:
        """Dense `G` from GGN-vector products with the basis."""
        return self._matrix_of(problem, "ggn")

    def fisher(self, problem: Problem) -> np.ndarray:
        """Dense true Fisher from exact Fisher-vector products with the basis."""
        return self._matrix_of(problem, "fisher")

    def empirical_fisher(self, problem: Problem) -> np.ndarray:
        """Dense `EF` from empirical-Fisher-vector products with the basis."""
        return self._matrix_of(problem, "empirical_fisher")

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
        """Exact `diag(H)` (n HVPs; not sharded)."""
        return self._own(problem, _hessian_diag, "hessian_diag", sharded=False)

    def ggn_diag(self, problem: Problem) -> np.ndarray:
        """Exact `diag(G)`."""
        return self._own(problem, _quantities, "ggn_diag")

    def fisher_diag(self, problem: Problem) -> np.ndarray:
        """Exact `diag(F)` (PROTOCOL s13)."""
        return self._own(problem, _quantities, "fisher_diag")

    def empirical_fisher_diag(self, problem: Problem) -> np.ndarray:
        """Exact `diag(EF)`."""
        return self._own(problem, _quantities, "empirical_fisher_diag")

    def damped_update(self, problem: Problem, curvature: str, damping: float) -> np.ndarray:
        """`-(C + damping I)^{-1} grad h` by `cg_solve` on C from n products (else by LU).

        LU (partial pivoting) serves an indefinite but nonsingular system (PROTOCOL s5 asks
        for any nonsingular one), where CG breaks down.
        """
        dtype = np.dtype(self.dtype)
        system = self._curvature_matrix(problem, curvature) + dtype.type(damping) * np.eye(
            problem.n_params, dtype=dtype)
        neg_g = -self.gradient(problem).astype(dtype)
        x, converged = _solve_dense(system, None, neg_g, None, 10 * unit_roundoff(self.dtype),
                                    10 * problem.n_params)
        return x if converged else np.linalg.solve(system, neg_g)

    def _curvature_matrix(self, problem: Problem, curvature: str) -> np.ndarray:
        """`[C e_1 ... C e_n]` from n `_products` calls (all four curvatures cached at once)."""
        e, params, batch = self._framed(problem)
        key = (id(e), "columns", self._mesh is not None)
        if key not in self._cache:
            columns = [self._run(_products, e.frame.objective, params, batch,
                                 e.flat(column).astype(self.dtype), mesh=self._mesh)
                       for column in np.eye(problem.n_params)]
            self._cache[key] = {kind: np.stack([e.own(c[kind]) for c in columns], axis=1)
                                for kind in _KINDS}
        return self._cache[key][curvature]

    def cg(self, matvec: Callable, b: Any, x0: Any = None, tol: float = 1e-10,
           maxiter: int | None = None, precond: Callable | None = None) -> np.ndarray:
        """`ngd_ref.jax.cg_solve` on the caller's operator, materialized (PROTOCOL s5 signature)."""
        b = np.asarray(b, dtype=np.float64)
        n = b.shape[0]
        dtype = np.dtype(self.dtype)
        a = _columns(matvec, n).astype(dtype)
        m = None if precond is None else _columns(precond, n).astype(dtype)
        start = None if x0 is None else np.asarray(x0, dtype=np.float64).astype(dtype)
        return _solve_dense(a, m, b.astype(dtype), start, tol,
                            10 * n if maxiter is None else int(maxiter))[0]

    # -- not a capability ----------------------------------------------------------------------
    def precompile(self, capabilities: Iterable[str], *, stop: threading.Event | None = None,
                   progress: Callable[[int], None] | None = None) -> None:
        """Trace and compile the kernels behind `capabilities` for the planned problems, in order.

        Not part of the protocol (the harness never calls it): `ngd-verify run` calls it in
        background threads, one adapter per thread, so that compilation overlaps other work.
        For each planned problem whose frame (and batch shape) is new it calls the public
        methods once (and `cg` once per new length bucket); nothing else changes. After
        problem i, `progress(i)` says that every kernel problem i needs is compiled. With
        `stop` set (an interrupt) it returns before the next problem.
        """
        wanted = set(capabilities)
        compiled: set[Any] = set()
        buckets: set[int] = set()
        for index, problem in enumerate(self._plan.problems):
            if stop is not None and stop.is_set():
                return
            e = self._plan.embedded(problem)
            if (e.frame, e.inputs.shape) not in compiled:
                compiled.add((e.frame, e.inputs.shape))
                self._compile_for(problem, wanted)
            if "cg" in wanted and _bucket(problem.n_params) not in buckets:
                buckets.add(_bucket(problem.n_params))
                for precond in (None, np.asarray):
                    self.cg(np.asarray, np.ones(problem.n_params), maxiter=1, precond=precond)
            if progress is not None:
                progress(index)

    def _compile_for(self, problem: Problem, wanted: set[str]) -> None:
        """Call the public methods behind `wanted` once on `problem` (compiling its kernels)."""
        zeros = np.zeros(problem.n_params)
        if wanted & {"loss", "gradient", "ggn_diag", "fisher_diag", "empirical_fisher_diag"}:
            self.loss(problem)
        if wanted & {"hvp", "ggn_vp", "fisher_vp", "empirical_fisher_vp"}:
            self.hvp(problem, zeros)
        if wanted & {"hessian", "ggn", "fisher", "empirical_fisher"}:
            self.hessian(problem)
        if "hessian_diag" in wanted:
            self.hessian_diag(problem)
        if "damped_update" in wanted:
            self.damped_update(problem, "ggn", 1.0)

    # -- PROTOCOL s9 (the seeds' other second-order methods; ngd_ref.{newton,quasi_newton,...}) --
    def _matrix(self, m: Any) -> jax.Array:
        return self._cast(np.asarray(m, dtype=np.float64))

    def trust_region_update(self, problem: Problem, damping: float) -> np.ndarray:
        """`-(|H| + damping I)^{-1} grad h` (`ngd_ref.jax.trust_region_update`)."""
        objective, params, batch = self._prepared(problem)
        return self._host_vector(nj.trust_region_update(objective, params, batch, damping))

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
        new, s, y = (np.asarray(part) for part in out)
        return new, s, y

    def hutchinson_diag(self, matvec: Callable, n: int, num_samples: int, seed: int) -> np.ndarray:
        """`ngd_ref.jax.hutchinson_diag` on the caller's numpy `matvec`, materialized.

        As in `cg`: the columns `matvec(e_i)` (n host calls; PROTOCOL s5's operators are
        linear), then `v -> A v` inside one program compiled per (n, S, dtype)
        (`_hutchinson_dense`). A `jax.pure_callback` per probe instead paid JAX's callback
        machinery up to 2^16 times per check (docs/bench.md, session 14).
        """
        a = _columns(matvec, int(n)).astype(self.dtype)
        return np.asarray(_hutchinson_dense(a, jax.random.PRNGKey(seed),
                                            num_samples=int(num_samples)))

    def inverse_root(self, M: Any, p: int, ridge: float = 0.0) -> np.ndarray:
        """`(M + ridge I)^{-1/p}` by eigendecomposition (`ngd_ref.jax.inverse_root`)."""
        return np.asarray(nj.inverse_root(self._matrix(M), int(p), ridge))

    def shampoo_direction(self, G: Any, L: Any, R: Any, eps: float) -> np.ndarray:
        """`(L + eps I)^{-1/4} G (R + eps I)^{-1/4}` (`ngd_ref.jax.shampoo_direction`)."""
        return np.asarray(nj.shampoo_direction(self._matrix(G), self._matrix(L), self._matrix(R),
                                               eps))

    def kfac_factors(self, problem: Problem, kind: str, approx: str = "expand"
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """K-FAC factors `[(A_l, S_l), ...]` (PROTOCOL s4, s12 `approx`), in JAX."""
        factors = nj.kfac_factors(problem, kind, dtype=self.dtype, approx=approx)
        return [(np.asarray(a), np.asarray(s)) for a, s in factors]

    def kfac_solve(self, problem: Problem, v: Any, damping: float, method: str,
                   kind: str = "fisher", approx: str = "expand") -> np.ndarray:
        """Block-diagonal damped K-FAC solve (eq. 23 `eigen` or eq. 24 `factored`), in JAX."""
        return np.asarray(nj.kfac_solve(problem, np.asarray(v, dtype=np.float64), damping,
                                        method, kind, dtype=self.dtype, approx=approx))

    def lowrank_ggn_update(self, problem: Problem, damping: float) -> np.ndarray:
        """`-(G + damping I)^{-1} grad h` in output space (`ngd_ref.jax.lowrank_ggn_update`)."""
        objective, params, batch = self._prepared(problem)
        return self._host_vector(nj.lowrank_ggn_update(objective, params, batch, damping))


class NgdRefJaxFloat32(NgdRefJax):
    """`ngd_ref.jax` in float32 (the same code; tolerances follow float32's unit roundoff)."""

    name = "ngd-ref-jax-float32"
    dtype = "float32"


@functools.lru_cache(maxsize=256)
def _prepare(problem: Problem, dtype: str):
    with x64():
        return nj.from_problem(problem, dtype)
