"""Cross-validation of the JAX implementation (`ngd_ref.jax`) against the dense reference.

Part of `ngd-verify run` (PROTOCOL s6). For every problem, in float64 and in float32:

* loss, gradient; the four products `hvp`, `ggn_vp`, `fisher_vp`, `empirical_fisher_vp` on
  two probe vectors; the exact diagonals of G, F and EF;
* CG iterate by iterate: `cg_solve` with `tol=0, maxiter=k` for k = 1..min(n, 6) on the
  linearized Fisher operator plus damping, plain, Jacobi-preconditioned and from a nonzero
  `x0`, against `krylov_optimal_iterate` (the A-norm-optimal point of `x0 + K_k`, Grosse
  ch. 4 s4), while the exact residual is still informative (as in `verify.harness._cg`);
* damped updates `-(C + lambda I)^{-1} grad h` by `cg_solve` on the linearized operator;
* with `devices > 1`: the same computations with the batch sharded over the devices, checked
  against the unsharded ones (`jax_<capability>_<dtype>_sharded<N>`).

Tolerances are the harness's (`verify.harness._budget`): rounding tolerances relative to the
computation's magnitude, solve tolerances with the condition number.

Compilation is grouped: problems with the same loss and output size are embedded in one
"universal" MLP -- layers padded with zero weights (so the function, and every derivative
with respect to the problem's own parameters, is unchanged), missing layers replaced by
identity layers, activations selected by one-hot parameter weights -- and batches padded
with weight-0 examples (`Batch.weights`). One jitted kernel per (group, dtype) then serves
every problem of the group; results are read off at the problem's own coordinates, and the
curvature operators are restricted to them by a mask (`P C P^T`).

Cost (a known gap): each kernel takes ~4 s to trace and ~15 s to compile on the 2-core
development machine (load ~6), so the quick zoo (7 groups x 2 dtypes) took 566 s cold and
106 s with the persistent compilation cache warm -- far above the one-minute goal for the
whole zoo. Compiled kernels are kept in JAX's persistent compilation cache
(`$NGD_VERIFY_CACHE`, default `~/.cache/ngd-verify/jax`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ngd_ref import Problem
from ngd_ref import jax as nj
from ngd_ref.curvature._jax import _ACTIVATIONS
from ngd_ref.dense import dense, krylov_optimal_iterate
from verify._report import CheckResult, Status
from verify._tolerance import compare, solve_rtol, unit_roundoff
from verify.harness._budget import budget
from verify.harness._cg import MAX_ITERATES
from verify.identities._common import default_damping, problem_rng

__all__ = ["crossvalidate"]

DTYPES = ("float64", "float32")
_ACT_NAMES = tuple(_ACTIVATIONS)
_PRODUCTS = {"hessian": "hvp", "ggn": "ggn_vp", "fisher": "fisher_vp",
             "empirical_fisher": "empirical_fisher_vp"}
# diag(H) is n HVPs (`hessian_diag`): covered by the `hvp` checks and by the harness.
_DIAGONALS = {"ggn": "ggn_diag", "fisher": "fisher_diag",
              "empirical_fisher": "empirical_fisher_diag"}
_CG_VARIANTS = ("plain", "preconditioned", "x0")
_NUM_PROBES = 2


def _universal_apply(params: dict[str, Any], inputs: jax.Array) -> jax.Array:
    """MLP whose layer-l activation is `sum_k mix_l[k] phi_k` (one-hot `mix_l`: exactly phi)."""
    a = inputs
    for (w, b), mix in zip(params["layers"], params["mix"], strict=True):
        s = a @ w.T + b
        a = sum(mix[k] * _ACTIVATIONS[name](s) for k, name in enumerate(_ACT_NAMES))
    return a


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The universal architecture of a group: depth, input width, hidden width, outputs, batch."""

    loss: str
    outputs: int
    depth: int
    n_in: int
    hidden: int
    batch: int

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> _Frame:
        depth = max(len(p.layers) for p in problems)
        widths = [w for p in problems
                  for w in [p.layers[0].n_in] + [lay.n_out for lay in p.layers[:-1]]]
        return cls(problems[0].loss, problems[0].output_dim, depth,
                   max(p.layers[0].n_in for p in problems), max(widths),
                   max(p.batch_size for p in problems))

    def shapes(self) -> list[tuple[int, int]]:
        """`(n_out, n_in)` per universal layer."""
        ins = [self.n_in] + [self.hidden] * (self.depth - 1)
        outs = [self.hidden] * (self.depth - 1) + [self.outputs]
        return list(zip(outs, ins, strict=True))


@dataclasses.dataclass(frozen=True)
class _Embedded:
    """A problem inside its group's frame."""

    params: dict[str, Any]       # universal params (float64 numpy leaves)
    index: np.ndarray            # (n,) flat universal position of each canonical parameter
    size: int                    # N, the number of universal parameters
    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray


def _embed(problem: Problem, frame: _Frame) -> _Embedded:
    layers = [[np.zeros(shape), np.zeros(shape[0])] for shape in frame.shapes()]
    ids = [[np.full(shape, -1), np.full(shape[0], -1)] for shape in frame.shapes()]
    mix = [np.zeros(len(_ACT_NAMES)) for _ in layers]
    own = len(problem.layers)
    positions = list(range(own - 1)) + [frame.depth - 1]
    for pos in range(own - 1, frame.depth - 1):  # identity layers carry the signal through
        out, inp = frame.shapes()[pos]
        layers[pos][0] = np.eye(out, inp)
        mix[pos][_ACT_NAMES.index("identity")] = 1.0
    start = 0
    for layer, pos, (w, b) in zip(problem.layers, positions,
                                  _unflatten(problem), strict=True):
        layers[pos][0][: layer.n_out, : layer.n_in] = w
        layers[pos][1][: layer.n_out] = b
        count = (layer.n_in + 1) * layer.n_out
        canon = np.arange(start, start + count).reshape(layer.n_in + 1, layer.n_out).T
        ids[pos][0][: layer.n_out, : layer.n_in] = canon[:, : layer.n_in]
        ids[pos][1][: layer.n_out] = canon[:, layer.n_in]
        mix[pos][_ACT_NAMES.index(layer.activation)] = 1.0
        start += count
    tree = {"layers": [tuple(pair) for pair in layers], "mix": mix}
    id_tree = {"layers": [tuple(pair) for pair in ids], "mix": [np.full(m.shape, -1) for m in mix]}
    flat_ids = np.concatenate([leaf.ravel() for leaf in jax.tree.leaves(id_tree)])
    index = np.empty(problem.n_params, dtype=np.int64)
    index[flat_ids[flat_ids >= 0]] = np.nonzero(flat_ids >= 0)[0]
    pad = frame.batch - problem.batch_size
    inputs = np.zeros((frame.batch, frame.n_in))
    inputs[: problem.batch_size, : problem.layers[0].n_in] = problem.inputs
    targets = np.concatenate([problem.targets, np.zeros((pad,) + problem.targets.shape[1:],
                                                        problem.targets.dtype)])
    weights = np.concatenate([np.full(problem.batch_size, problem.scale), np.zeros(pad)])
    return _Embedded(tree, index, flat_ids.shape[0], inputs, targets, weights)


def _unflatten(problem: Problem):
    from ngd_ref import unflatten

    return unflatten(problem.layers, problem.params)


@functools.partial(jax.jit, static_argnames=("objective", "updates", "mesh"))
def _kernel(objective: nj.Objective, params, batch: nj.Batch, mask, probes, diag_inv, x0, mu,
            dampings, *, updates: tuple[str, ...], mesh) -> dict[str, Any]:
    """Everything the cross-validation compares, for one embedded problem, in one compilation."""
    unravel = jax.flatten_util.ravel_pytree(params)[1]

    def ravel(tree):
        return jax.flatten_util.ravel_pytree(tree)[0]

    out: dict[str, Any] = {}
    loss, grad = nj.value_and_gradient(objective, params, batch, mesh=mesh)
    out["loss"], out["gradient"] = loss, ravel(grad)
    for kind in _PRODUCTS:
        out[kind] = jax.vmap(lambda v, kind=kind: ravel(
            nj.curvature_vp(objective, params, batch, unravel(v), kind, mesh=mesh)))(probes)
    out["ggn_diag"] = ravel(nj.ggn_diag(objective, params, batch, mesh=mesh))
    out["fisher_diag"] = ravel(nj.fisher_diag(objective, params, batch, mesh=mesh))
    out["empirical_fisher_diag"] = ravel(nj.empirical_fisher_diag(objective, params, batch,
                                                                  mesh=mesh))
    neg_g = -mask * out["gradient"]

    def restricted(kind: str):
        """`v -> P C P^T v` on flat vectors (C linearized once without a mesh)."""
        if mesh is None:
            op = nj.curvature_operator(objective, params, batch, kind)
        else:
            op = functools.partial(nj.curvature_vp, objective, params, batch, curvature=kind,
                                   mesh=mesh)
        return lambda v: mask * ravel(op(unravel(mask * v)))

    # CG iterates: every variant and every k in one vmapped loop (one compilation); the
    # unpreconditioned variants use M = 1 * I, which leaves every rounding unchanged.
    fisher_op = restricted("fisher")
    ones, zeros = jnp.ones_like(neg_g), jnp.zeros_like(neg_g)
    starts = jnp.stack([zeros, zeros, x0])
    diagonals = jnp.stack([ones, diag_inv, ones])

    def iterate(start, diagonal, k):
        return nj.cg_solve(lambda v: fisher_op(v) + mu * v, neg_g, start,
                           tol=jnp.zeros((), neg_g.dtype), maxiter=k,
                           precond=lambda r: diagonal * r, history=MAX_ITERATES + 1).x

    ks = jnp.arange(1, MAX_ITERATES + 1)
    iterates = jax.vmap(jax.vmap(iterate, (None, None, 0)), (0, 0, None))(starts, diagonals, ks)
    for index, name in enumerate(_CG_VARIANTS):
        out["cg_" + name] = iterates[index]
    # damped updates: one vmapped CG over the curvature kinds
    operators = [restricted(kind) for kind in updates]

    def solve(which, damping):
        def damped(v):
            products = jnp.stack([op(v) for op in operators])
            return products[which] + damping * v

        return nj.cg_solve(damped, neg_g, tol=10 * unit_roundoff(str(neg_g.dtype)),
                           maxiter=10 * neg_g.shape[0]).x

    solutions = jax.vmap(solve)(jnp.arange(len(updates)), dampings)
    for index, kind in enumerate(updates):
        out["update_" + kind] = solutions[index]
    return out


@dataclasses.dataclass
class _Group:
    frame: _Frame
    problems: list[Problem]

    @functools.cached_property
    def objective(self) -> nj.Objective:
        return nj.Objective(_universal_apply, self.frame.loss, "sum")

    @property
    def updates(self) -> tuple[str, ...]:
        # G is indefinite for gaussian_logvar (H_L is, at observed targets): CG needs SPD.
        kinds = ("fisher", "empirical_fisher")
        return kinds if self.frame.loss == "gaussian_logvar" else ("ggn",) + kinds


def _groups(problems: Sequence[Problem]) -> list[_Group]:
    by_key: dict[tuple[str, int], list[Problem]] = {}
    for problem in problems:
        by_key.setdefault((problem.loss, problem.output_dim), []).append(problem)
    return [_Group(_Frame.of(group), group) for group in by_key.values()]


def _result(check: str, capability: str, problem: Problem, comparison, what: str) -> CheckResult:
    status = Status.PASS if comparison.passed else Status.FAIL
    return CheckResult(check, capability, problem.name, status, comparison.error,
                       comparison.tolerance, f"{what}: {comparison.describe()}")


def _inputs(problem: Problem, group: _Group, embedded: _Embedded, dtype: str, seed: int):
    """Arguments of `_kernel` for one problem, and the reference data they imply."""
    ref = dense(problem)
    rng = problem_rng(problem, f"crossval-{seed}")
    probes = rng.standard_normal((_NUM_PROBES, problem.n_params))
    x0 = rng.standard_normal(problem.n_params)
    fisher = ref.fisher
    mu = default_damping(problem, "crossval-cg")
    a = fisher + mu * np.eye(problem.n_params)
    dampings = [default_damping(problem, f"crossval-{kind}") for kind in group.updates]

    def flat(values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        out = np.full(embedded.size, fill)
        out[embedded.index] = values
        return out

    cast = functools.partial(jnp.asarray, dtype=dtype)
    labels = problem.targets.dtype.kind == "i"
    batch = nj.Batch(cast(embedded.inputs),
                     jnp.asarray(embedded.targets, jnp.int32 if labels else dtype),
                     cast(embedded.weights))
    args = (jax.tree.map(cast, embedded.params), batch, cast(flat(np.ones(problem.n_params))),
            cast(np.stack([flat(p) for p in probes])), cast(flat(1.0 / np.diag(a), 1.0)),
            cast(flat(x0)), cast(mu), cast(np.asarray(dampings)))
    return args, {"probes": probes, "x0": x0, "a": a, "mu": mu, "dampings": dampings}


def _check_problem(problem: Problem, dtype: str, out: dict[str, np.ndarray],
                   embedded: _Embedded, data: dict[str, Any], updates: tuple[str, ...],
                   suffix: str = "",
                   against: dict[str, np.ndarray] | None = None) -> list[CheckResult]:
    """Compare the kernel's outputs with the reference (or, for sharding, with `against`)."""
    b = budget(problem, dtype)
    ref = b.ref
    idx = embedded.index
    results: list[CheckResult] = []

    def own(values):
        return np.asarray(values, dtype=np.float64)[..., idx]

    def desired(key: str, reference):
        return reference if against is None else (
            np.asarray(against[key], np.float64) if key == "loss" else own(against[key]))

    def add(capability: str, key: str, actual, reference, tolerance: float, magnitude: float,
            what: str, index: Any = None):
        expected = desired(key, reference)
        if index is not None and against is not None:
            expected = expected[index]
        results.append(_result(f"jax_{capability}_{dtype}{suffix}", capability, problem,
                               compare(actual, expected, tolerance=tolerance, magnitude=magnitude),
                               what))

    add("loss", "loss", np.asarray(out["loss"], np.float64), ref.loss, b.rtol, b.loss_magnitude,
        "h = c sum_b L_b")
    add("gradient", "gradient", own(out["gradient"]), ref.gradient, b.rtol,
        float(np.linalg.norm(b.gradient_magnitude)), "grad h")
    for kind, capability in _PRODUCTS.items():
        matrix, mag = ref.matrix(kind), b.matrix_magnitude(kind)
        for j, v in enumerate(data["probes"]):
            add(capability, kind, own(out[kind])[j], matrix @ v, b.rtol,
                float(np.linalg.norm(mag @ np.abs(v))), f"{kind} x probe {j}", index=j)
    for kind, capability in _DIAGONALS.items():
        add(capability, capability, own(out[capability]), np.diag(ref.matrix(kind)), b.rtol,
            float(np.linalg.norm(np.diag(b.matrix_magnitude(kind)))), f"exact diag({kind})")
    results += _check_cg(problem, dtype, out, own, data, suffix, against)
    for kind, damping in zip(updates, data["dampings"], strict=True):
        tolerance, _ = b.solve_tolerance(ref.matrix(kind), b.matrix_magnitude(kind), damping,
                                         ref.gradient, b.gradient_magnitude)
        add("damped_update", "update_" + kind, own(out["update_" + kind]),
            ref.damped_update(kind, damping), tolerance, 0.0,
            f"-({kind} + {damping:.3g} I)^-1 grad h by CG on the linearized operator")
    return results


def _check_cg(problem: Problem, dtype: str, out, own, data, suffix: str,
              against) -> list[CheckResult]:
    a, n = data["a"], problem.n_params
    b_vec = -dense(problem).gradient
    kappa = float(np.linalg.cond(a))
    informative = unit_roundoff(dtype) ** 0.5
    results = []
    for variant in _CG_VARIANTS:
        x0 = data["x0"] if variant == "x0" else None
        precond = np.diag(1.0 / np.diag(a)) if variant == "preconditioned" else None
        start = np.zeros(n) if x0 is None else x0
        residuals = [float(np.linalg.norm(b_vec - a @ start))]
        for k in range(1, min(n, MAX_ITERATES) + 1):
            if residuals[k - 1] <= informative * residuals[0]:
                break  # the remaining iterates are not determined by the data in this precision
            optimal = krylov_optimal_iterate(a, b_vec, x0, k, precond=precond)
            residuals.append(float(np.linalg.norm(b_vec - a @ optimal)))
            desired = optimal if against is None else own(against["cg_" + variant])[k - 1]
            tolerance = solve_rtol(dtype, length=n, depth=k,
                                   condition=kappa * residuals[0] / residuals[k - 1])
            comparison = compare(own(out["cg_" + variant])[k - 1], desired, tolerance=tolerance)
            results.append(_result(f"jax_cg_{variant}_{dtype}{suffix}", "cg", problem, comparison,
                                   f"CG iterate {k} = A-optimal point of x0 + K_{k} "
                                   f"(Grosse ch. 4 s4; {variant})"))
    return results


def crossvalidate(problems: Sequence[Problem], *, devices: int = 1, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Cross-validate `ngd_ref.jax` against the dense reference on `problems`.

    Args:
        problems: the problems (e.g. the zoo).
        devices: with N > 1, also run every computation with the batch sharded over N devices
            and check it equals the unsharded one.
        seed: seed of the probe vectors.
        progress: called with each problem's name once it is done.

    Returns:
        One `CheckResult` per comparison; capability = the product name (`ggn_vp`, ...),
        check = `jax_<capability>_<dtype>[_sharded<N>]`.
    """
    jax.config.update("jax_enable_x64", True)
    _enable_compilation_cache()
    mesh = nj.batch_mesh(devices) if devices > 1 else None
    results: list[CheckResult] = []
    for group in _groups(problems):
        for problem in group.problems:
            embedded = _embed(problem, group.frame)
            for dtype in DTYPES:
                args, data = _inputs(problem, group, embedded, dtype, seed)
                out = _host(_kernel(group.objective, *args, updates=group.updates, mesh=None))
                results += _check_problem(problem, dtype, out, embedded, data, group.updates)
                if mesh is not None:
                    sharded = _host(_kernel(group.objective, *args, updates=group.updates,
                                            mesh=mesh))
                    results += _check_problem(problem, dtype, sharded, embedded, data,
                                              group.updates, f"_sharded{devices}", against=out)
            if progress is not None:
                progress(problem.name)
    return results


def _enable_compilation_cache() -> None:
    """Persist compiled kernels across runs (JAX's compilation cache), unless already set."""
    if jax.config.jax_compilation_cache_dir:
        return
    path = os.environ.get("NGD_VERIFY_CACHE", os.path.expanduser("~/.cache/ngd-verify/jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _host(out: dict[str, Any]) -> dict[str, np.ndarray]:
    return {key: np.asarray(value) for key, value in out.items()}
