"""Cross-validation of the JAX implementation (`ngd_ref.jax`) against the dense reference.

Part of `ngd-verify run` (PROTOCOL s6). For every problem, in float64 and in float32:

* loss, gradient; the four products `hvp`, `ggn_vp`, `fisher_vp`, `empirical_fisher_vp` on
  two probe vectors; the exact diagonals of G, F and EF (diag(H) is n HVPs, `hessian_diag`:
  covered by the `hvp` checks and by the harness);
* CG iterate by iterate: iterates k = 1..min(n, 6) of CG on the linearized Fisher operator
  plus damping, plain, Jacobi-preconditioned and from a nonzero `x0`, against
  `krylov_optimal_iterate` (the A-norm-optimal point of `x0 + K_k`, Grosse ch. 4 s4), while
  the exact residual is still informative (as in `verify.harness._cg`); the iterates come
  from one `ngd_ref.jax.cg_iterates` run, whose k-th iterate equals (bitwise, both jitted)
  `cg_solve(..., tol=0, maxiter=k).x` (tests/test_crossval.py checks it);
* damped updates `-(C + lambda I)^{-1} grad h` by `cg_solve` on the linearized operator, for
  C = G (not for `gaussian_logvar`, whose G is indefinite), F and EF;
* with `devices > 1`: the same computations with the batch sharded over the devices, checked
  against the unsharded ones (`jax_<capability>_<dtype>_sharded<N>`).

Tolerances are the harness's (`verify._policy`): rounding tolerances relative to the
computation's magnitude, solve tolerances with the condition number.

Few, small compilations (issue 4). Problems are grouped into *frames* by output size C (a
group of `mse` problems whose last activation maps 0 to 0 joins the next larger C: the
extra outputs are exact zeros). Every problem of a frame is embedded in one "universal" MLP:
layers padded with zero weights (so the function, and every derivative with respect to the
problem's own parameters, is unchanged), missing layers replaced by identity layers, the
activation of each layer chosen by one-hot parameter weights among those that occur there
in the frame, batches padded with weight-0 examples (`Batch.weights`). The loss is a
runtime choice too: `_universal_loss` is a `JaxLoss` whose value and closed-form output
products `lax.switch` over the library's own per-loss functions (`ngd_ref._losses_jax`) on
an index the model copies from an extra input column to an extra output column (constant
in the parameters, so its rows of `J` vanish). Four small jitted kernels -- value, gradient
and the four products; the exact diagonals; the CG iterates (one `cg_iterates` run per
variant); the damped solves (one vmapped `cg_solve` over G, F, EF whose operators share one
network linearization, `_kind_operator`) -- are compiled once per (frame, dtype) with XLA's
`-O0` and no fusion emitters (`_COMPILER_OPTIONS`) and called once per problem. Results
are read off at each problem's own coordinates; the curvature operators are restricted to
them by a mask (`P C P^T`). Full zoo: 3 frames (C = 3, 4, 6) x 2 dtypes x 4 kernels = 24
compilations; quick zoo: 2 frames, 16 compilations.

Cost, cold (no persistent compilation cache, `NGD_VERIFY_CACHE=off`), on the 2-core
development machine with other jobs running (load ~2): `ngd-verify run` 30 s in all
(cross-validation ~25 s: 3183 checks), `ngd-verify run --quick` 19 s (cross-validation
~15 s: 448 checks); before this design, 566 s for the quick cross-validation alone. About
half of each kernel's cost is Python tracing, half XLA compilation; running them is
milliseconds. Everything runs on every zoo problem; nothing is restricted to a subset.
Compiled kernels are also kept in JAX's persistent compilation cache (`$NGD_VERIFY_CACHE`,
default `~/.cache/ngd-verify/jax`; `NGD_VERIFY_CACHE=off` disables it).
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

from ngd_ref import LOSSES, Loss, Problem, unflatten
from ngd_ref import jax as nj
from ngd_ref.curvature._dense import Curvature
from ngd_ref.curvature._jax import _ACTIVATIONS, _gauss_newton_operator, _middle
from ngd_ref.dense import dense, krylov_optimal_iterate
from verify._policy import tolerance_policy
from verify._report import CheckResult, Status
from verify._tolerance import compare, solve_rtol, unit_roundoff
from verify.harness._cg import MAX_ITERATES
from verify.identities._common import default_damping, problem_rng

__all__ = ["crossvalidate"]

DTYPES = ("float64", "float32")
_ACT_NAMES = tuple(_ACTIVATIONS)
_PRODUCTS = {"hessian": "hvp", "ggn": "ggn_vp", "fisher": "fisher_vp",
             "empirical_fisher": "empirical_fisher_vp"}
_DIAGONALS = {"ggn": "ggn_diag", "fisher": "fisher_diag",
              "empirical_fisher": "empirical_fisher_diag"}
_CG_VARIANTS = ("plain", "preconditioned", "x0")
_UPDATES = ("ggn", "fisher", "empirical_fisher")
_NUM_PROBES = 2


# ---------------------------------------------------------------------------------------------
# The universal model and loss of a frame
# ---------------------------------------------------------------------------------------------
@functools.cache
def _universal_apply(activations: tuple[tuple[str, ...], ...]):
    """MLP whose layer-l activation is `sum_k mix_l[k] phi_k` over `activations[l]`.

    With a one-hot `mix_l` this is exactly the chosen `phi` (a layer with one candidate
    applies it directly). The last input column (the loss index) is copied to an extra
    last output column. Only the activations that occur at a layer in the frame are
    candidates there: every candidate enlarges the compiled programs.
    """
    def apply(params: dict[str, Any], inputs: jax.Array) -> jax.Array:
        a = inputs[:, :-1]
        for (w, b), mix, names in zip(params["layers"], params["mix"], activations, strict=True):
            s = a @ w.T + b
            a = (_ACTIVATIONS[names[0]](s) if len(names) == 1 else
                 sum(mix[k] * _ACTIVATIONS[name](s) for k, name in enumerate(names)))
        return jnp.concatenate([a, inputs[:, -1:]], axis=1)

    return apply


def _target(loss: str, y: jax.Array) -> jax.Array:
    """Return the loss's own target from the universal `(C,)` float target."""
    if Loss(loss).has_class_labels:
        return y[0].astype(jnp.int32)
    return y[: y.shape[0] // 2] if loss == Loss.GAUSSIAN_LOGVAR.value else y


def _branch(method: str, index: int, loss: str, switched: bool) -> Callable[..., jax.Array]:
    """`(chosen, y, z, *rest) -> JaxLoss.<method>` of `loss`, branch `index` of the switch.

    Under `vmap` (over examples and problems) `lax.switch` evaluates every branch and
    selects; a branch that is not chosen gets `y = 0` and `z = 1/C` (valid for every loss: a
    label, a count, a probability vector), so no branch produces an inf/NaN that would leak
    into derivatives (`0 * inf`). The chosen branch sees its operands unchanged.
    """
    function = getattr(nj.get_jax_loss(loss), method)

    def run(chosen, y, z, *rest):
        own = chosen == index
        if switched:
            z = jnp.where(own, z, jnp.full_like(z, 1.0 / z.shape[0]))
        if method == "fisher_vp":  # F_R(z) does not depend on the target
            return function(z, *rest)
        y = jnp.where(own, y, jnp.zeros_like(y)) if switched else y
        return function(_target(loss, y), z, *rest)

    return run


@functools.cache
def _universal_loss(losses: tuple[str, ...]) -> nj.JaxLoss:
    """Build the `JaxLoss` over outputs `(z, k)` that is `losses[k]` (the library's functions).

    The model copies the loss index `k` into its last output, which does not depend on the
    parameters: its rows of `J` vanish, and the products below leave it out (0).
    """
    def switch(method: str, y, z, *rest):
        chosen = z[-1].astype(jnp.int32)
        branches = [_branch(method, k, loss, len(losses) > 1) for k, loss in enumerate(losses)]
        return jax.lax.switch(chosen, branches, chosen, y, z[:-1], *rest)

    def value(y, z):
        return switch("value", y, z)

    def hessian_vp(y, z, u):
        return jnp.concatenate([switch("hessian_vp", y, z, u[:-1]), jnp.zeros_like(u[-1:])])

    def fisher_vp(z, u):
        return jnp.concatenate([switch("fisher_vp", None, z, u[:-1]), jnp.zeros_like(u[-1:])])

    def sample(key, z):
        raise NotImplementedError("the cross-validation's universal loss samples no targets")

    return nj.JaxLoss("universal:" + ",".join(losses), value, hessian_vp, fisher_vp, sample)



def _layer_activations(problem: Problem, depth: int) -> list[str]:
    """List the activation of each universal layer: own hidden, identity layers, own last."""
    own = [layer.activation for layer in problem.layers]
    return own[:-1] + ["identity"] * (depth - len(own)) + own[-1:]


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The universal architecture for C outputs: sizes, batch and candidate activations."""

    outputs: int
    depth: int
    n_in: int
    hidden: int
    batch: int
    activations: tuple[tuple[str, ...], ...]  # per layer, in `_ACTIVATIONS` order
    losses: tuple[str, ...]                    # in `LOSSES` order

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> _Frame:
        depth = max(len(p.layers) for p in problems)
        widths = [w for p in problems
                  for w in [p.layers[0].n_in] + [lay.n_out for lay in p.layers[:-1]]]
        used = [set(names) for names in zip(*(_layer_activations(p, depth) for p in problems),
                                             strict=True)]
        return cls(max(p.output_dim for p in problems), depth,
                   max(p.layers[0].n_in for p in problems), max(widths),
                   max(p.batch_size for p in problems),
                   tuple(tuple(a for a in _ACT_NAMES if a in names) for names in used),
                   tuple(loss for loss in LOSSES if loss in {p.loss for p in problems}))

    @functools.cached_property
    def objective(self) -> nj.Objective:
        """The universal model and loss, `h = sum_b w_b L_b` (weights carry c and padding)."""
        return nj.Objective(_universal_apply(self.activations), _universal_loss(self.losses),
                            "sum")

    def shapes(self) -> list[tuple[int, int]]:
        """`(n_out, n_in)` per universal layer."""
        ins = [self.n_in] + [self.hidden] * (self.depth - 1)
        outs = [self.hidden] * (self.depth - 1) + [self.outputs]
        return list(zip(outs, ins, strict=True))


@dataclasses.dataclass(frozen=True)
class _Embedded:
    """A problem inside its frame (float64 numpy leaves)."""

    params: dict[str, Any]       # universal params
    index: np.ndarray            # (n,) flat universal position of each canonical parameter
    size: int                    # N, the number of universal parameters
    inputs: np.ndarray           # (B, n_in + 1): the last column is the loss index
    targets: np.ndarray          # (B, C) universal float targets
    weights: np.ndarray          # (B,) c, then 0 for padding

    def flat(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Place a canonical vector at the problem's universal positions, `fill` elsewhere."""
        out = np.full(values.shape[:-1] + (self.size,), fill)
        out[..., self.index] = values
        return out


def _embed(problem: Problem, frame: _Frame) -> _Embedded:
    layers = [[np.zeros(shape), np.zeros(shape[0])] for shape in frame.shapes()]
    ids = [[np.full(shape, -1), np.full(shape[0], -1)] for shape in frame.shapes()]
    mix = [np.array([float(name == act) for name in names])
           for act, names in zip(_layer_activations(problem, frame.depth), frame.activations,
                                 strict=True)]
    own = len(problem.layers)
    positions = list(range(own - 1)) + [frame.depth - 1]
    for pos in range(own - 1, frame.depth - 1):  # identity layers carry the signal through
        out, inp = frame.shapes()[pos]
        layers[pos][0] = np.eye(out, inp)
    start = 0
    for layer, pos, (w, b) in zip(problem.layers, positions,
                                  unflatten(problem.layers, problem.params), strict=True):
        layers[pos][0][: layer.n_out, : layer.n_in] = w
        layers[pos][1][: layer.n_out] = b
        count = (layer.n_in + 1) * layer.n_out
        canon = np.arange(start, start + count).reshape(layer.n_in + 1, layer.n_out).T
        ids[pos][0][: layer.n_out, : layer.n_in] = canon[:, : layer.n_in]
        ids[pos][1][: layer.n_out] = canon[:, layer.n_in]
        start += count
    tree = {"layers": [tuple(pair) for pair in layers], "mix": mix}
    id_tree = {"layers": [tuple(pair) for pair in ids], "mix": [np.full(m.shape, -1) for m in mix]}
    flat_ids = np.concatenate([leaf.ravel() for leaf in jax.tree.leaves(id_tree)])
    index = np.empty(problem.n_params, dtype=np.int64)
    index[flat_ids[flat_ids >= 0]] = np.nonzero(flat_ids >= 0)[0]
    inputs = np.zeros((frame.batch, frame.n_in + 1))
    inputs[: problem.batch_size, : problem.layers[0].n_in] = problem.inputs
    inputs[:, -1] = frame.losses.index(problem.loss)
    targets = np.zeros((frame.batch, frame.outputs))
    if Loss(problem.loss).has_class_labels:
        targets[: problem.batch_size, 0] = problem.targets
    else:
        targets[: problem.batch_size, : problem.targets.shape[1]] = problem.targets
    weights = np.zeros(frame.batch)
    weights[: problem.batch_size] = problem.scale
    return _Embedded(tree, index, flat_ids.shape[0], inputs, targets, weights)


def _updates(problem: Problem) -> tuple[str, ...]:
    """Curvatures whose damped update is checked: G is indefinite for `gaussian_logvar`."""
    return _UPDATES[1:] if problem.loss == Loss.GAUSSIAN_LOGVAR.value else _UPDATES


# ---------------------------------------------------------------------------------------------
# Kernels: one small jitted program each, vmapped over the stacked problems of a frame
# ---------------------------------------------------------------------------------------------
def _flat(tree) -> jax.Array:
    return jax.flatten_util.ravel_pytree(tree)[0]


#: XLA options for the kernels: LLVM -O0 and no fusion emitters cut the CPU compile time
#: ~4x (measured: 4.5 s -> 1.0 s for the HVP of the C = 3 frame); the kernels run in
#: milliseconds either way. Rounding stays within the policy (the order of operations of
#: each reduction is XLA's choice in any case).
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _kernel(one: Callable[..., dict[str, jax.Array]]):
    """Jit `one(objective, params, batch, *data, mesh=)` (objective and mesh static)."""
    return functools.partial(jax.jit, static_argnames=("objective", "mesh"),
                             compiler_options=_COMPILER_OPTIONS)(one)


@_kernel
def _products_kernel(objective, params, batch, probes, *, mesh):
    """`h`, `grad h` and the four products on each probe."""
    unravel = jax.flatten_util.ravel_pytree(params)[1]
    loss, grad = nj.value_and_gradient(objective, params, batch, mesh=mesh)
    out = {"loss": loss, "gradient": _flat(grad)}
    for kind in _PRODUCTS:
        out[kind] = jax.vmap(lambda v, kind=kind: _flat(nj.curvature_vp(
            objective, params, batch, unravel(v), kind, mesh=mesh)))(probes)
    return out


@_kernel
def _diagonals_kernel(objective, params, batch, *, mesh):
    """Compute the exact diagonals of G, F and EF."""
    return {"ggn_diag": _flat(nj.ggn_diag(objective, params, batch, mesh=mesh)),
            "fisher_diag": _flat(nj.fisher_diag(objective, params, batch, mesh=mesh)),
            "empirical_fisher_diag": _flat(nj.empirical_fisher_diag(objective, params, batch,
                                                                    mesh=mesh))}


def _restricted(objective, params, batch, mask, kind: str, mesh):
    """`v -> P C P^T v` on flat vectors (C linearized once without a mesh)."""
    unravel = jax.flatten_util.ravel_pytree(params)[1]
    if mesh is None:
        op = nj.curvature_operator(objective, params, batch, kind)
    else:
        op = functools.partial(nj.curvature_vp, objective, params, batch, curvature=kind,
                               mesh=mesh)
    return lambda v: mask * _flat(op(unravel(mask * v)))


def _negative_gradient(objective, params, batch, mask, mesh):
    return -mask * _flat(nj.gradient(objective, params, batch, mesh=mesh))


@_kernel
def _cg_kernel(objective, params, batch, mask, diag_inv, x0, mu, *, mesh):
    """CG iterates 0..MAX_ITERATES on `P F P^T + mu I`: plain, Jacobi, from x0 (one run each)."""
    fisher = _restricted(objective, params, batch, mask, "fisher", mesh)
    neg_g = _negative_gradient(objective, params, batch, mask, mesh)

    def iterates(start, diagonal):  # M = 1 * I for the unpreconditioned variants: exact
        return nj.cg_iterates(lambda v: fisher(v) + mu * v, neg_g, start,
                              maxiter=MAX_ITERATES, precond=lambda r: diagonal * r)

    ones = jnp.ones_like(neg_g)
    out = jax.vmap(iterates)(jnp.stack([jnp.zeros_like(neg_g), jnp.zeros_like(neg_g), x0]),
                             jnp.stack([ones, diag_inv, ones]))
    return {"cg_" + name: out[i, 1:] for i, name in enumerate(_CG_VARIANTS)}


def _kind_operator(objective, params, batch, which, mesh):
    """`v -> C v` for `C` = `_UPDATES[which]` (a traced index), on parameter pytrees.

    Without a mesh the kinds share one linearization of the network: the library's
    Gauss-Newton operator `v -> sum_b w_b J_b^T M_b J_b v` (the one `curvature_operator`
    builds) with the kind's middle `M_b` chosen by `lax.switch` -- a third of the program of
    three operators. With a mesh: `curvature_vp` of the kind, sharded.
    """
    if mesh is None:
        middles = [_middle(objective.loss, Curvature(kind)) for kind in _UPDATES]
        return _gauss_newton_operator(
            objective, params, batch.inputs, batch.targets, batch.weights,
            lambda y, z, u: jax.lax.switch(which, middles, y, z, u))
    products = [functools.partial(nj.curvature_vp, objective, params, batch, curvature=kind,
                                  mesh=mesh) for kind in _UPDATES]
    return lambda v: jax.lax.switch(which, products, v)


@_kernel
def _damped_kernel(objective, params, batch, mask, dampings, *, mesh):
    """`-(P C P^T + lambda I)^{-1} P grad h` by `cg_solve` for C in G, F, EF (one vmapped CG)."""
    unravel = jax.flatten_util.ravel_pytree(params)[1]
    neg_g = _negative_gradient(objective, params, batch, mask, mesh)

    def solve(which, damping):
        op = _kind_operator(objective, params, batch, which, mesh)
        return nj.cg_solve(lambda v: mask * _flat(op(unravel(mask * v))) + damping * v, neg_g,
                           tol=10 * unit_roundoff(str(neg_g.dtype)),
                           maxiter=10 * neg_g.shape[0]).x

    solutions = jax.vmap(solve)(jnp.arange(len(_UPDATES)), dampings)
    return {"update_" + kind: solutions[i] for i, kind in enumerate(_UPDATES)}


# ---------------------------------------------------------------------------------------------
# Reference data, runs and comparisons
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Case:
    """A problem, its embedding, and the probe data and exact CG iterates it is checked with."""

    problem: Problem
    embedded: _Embedded
    probes: np.ndarray           # (_NUM_PROBES, n)
    x0: np.ndarray               # (n,)
    a: np.ndarray                # F + mu I
    mu: float
    dampings: tuple[float, ...]  # one per _UPDATES
    optimal: dict[str, list[np.ndarray]]   # variant -> exact iterates 1..k (informative ones)
    residuals: dict[str, list[float]]      # variant -> ||b - A x_j||, j = 0..k


def _case(problem: Problem, frame: _Frame, seed: int) -> _Case:
    rng = problem_rng(problem, f"crossval-{seed}")
    probes = rng.standard_normal((_NUM_PROBES, problem.n_params))
    x0 = rng.standard_normal(problem.n_params)
    mu = default_damping(problem, "crossval-cg")
    a = dense(problem).fisher + mu * np.eye(problem.n_params)
    b_vec = -dense(problem).gradient
    optimal: dict[str, list[np.ndarray]] = {}
    residuals: dict[str, list[float]] = {}
    for variant in _CG_VARIANTS:
        start = x0 if variant == "x0" else None
        precond = np.diag(1.0 / np.diag(a)) if variant == "preconditioned" else None
        residuals[variant] = [float(np.linalg.norm(b_vec - a @ (x0 if start is not None
                                                                 else 0 * x0)))]
        optimal[variant] = []
        for k in range(1, min(problem.n_params, MAX_ITERATES) + 1):
            optimal[variant].append(krylov_optimal_iterate(a, b_vec, start, k, precond=precond))
            residuals[variant].append(float(np.linalg.norm(b_vec - a @ optimal[variant][-1])))
    dampings = tuple(default_damping(problem, f"crossval-{kind}") for kind in _UPDATES)
    return _Case(problem, _embed(problem, frame), probes, x0, a, mu, dampings, optimal, residuals)


def _run(frame: _Frame, cases: Sequence[_Case], dtype: str,
         mesh) -> list[dict[str, np.ndarray]]:
    """Run the four kernels on each case of one frame (compiled once); host outputs."""
    outs = []
    for case in cases:
        e = case.embedded

        def cast(tree: Any) -> Any:
            return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), tree)

        params, mask = cast(e.params), cast(e.flat(np.ones(case.problem.n_params)))
        batch = nj.Batch(cast(e.inputs), cast(e.targets), cast(e.weights))
        kernels = (
            (_products_kernel, (cast(e.flat(case.probes)),)),
            (_diagonals_kernel, ()),
            (_cg_kernel, (mask, cast(e.flat(1.0 / np.diag(case.a), 1.0)), cast(e.flat(case.x0)),
                          cast(case.mu))),
            (_damped_kernel, (mask, cast(np.asarray(case.dampings)))),
        )
        out: dict[str, Any] = {}
        for kernel, args in kernels:
            out |= kernel(frame.objective, params, batch, *args, mesh=mesh)
            if mesh is not None:
                # One sharded program at a time: XLA's in-process CPU collectives deadlock
                # (a psum rendezvous missing a thread) when several are in flight at once.
                jax.block_until_ready(out)
        outs.append(out)
    return [{key: np.asarray(value) for key, value in out.items()} for out in outs]


def _result(check: str, capability: str, problem: Problem, comparison, what: str) -> CheckResult:
    status = Status.PASS if comparison.passed else Status.FAIL
    return CheckResult(check, capability, problem.name, status, comparison.error,
                       comparison.tolerance, f"{what}: {comparison.describe()}")


def _check_problem(case: _Case, dtype: str, out: dict[str, np.ndarray], suffix: str = "",
                   against: dict[str, np.ndarray] | None = None) -> list[CheckResult]:
    """Compare the kernels' outputs with the reference (or, for sharding, with `against`)."""
    problem = case.problem
    b = tolerance_policy(problem, dtype)
    ref = b.ref
    results: list[CheckResult] = []

    def own(values):
        return np.asarray(values, dtype=np.float64)[..., case.embedded.index]

    def add(capability: str, key: str, actual, reference, tolerance: float, magnitude: float,
            what: str, index: Any = None):
        expected = reference
        if against is not None:
            expected = np.asarray(against[key], np.float64) if key == "loss" else own(against[key])
            expected = expected if index is None else expected[index]
        results.append(_result(f"jax_{capability}_{dtype}{suffix}", capability, problem,
                               compare(actual, expected, tolerance=tolerance, magnitude=magnitude),
                               what))

    add("loss", "loss", np.asarray(out["loss"], np.float64), ref.loss, b.rtol, b.loss_magnitude,
        "h = c sum_b L_b")
    add("gradient", "gradient", own(out["gradient"]), ref.gradient, b.rtol,
        float(np.linalg.norm(b.gradient_magnitude)), "grad h")
    for kind, capability in _PRODUCTS.items():
        matrix, mag = ref.matrix(kind), b.matrix_magnitude(kind)
        for j, v in enumerate(case.probes):
            add(capability, kind, own(out[kind])[j], matrix @ v, b.rtol,
                float(np.linalg.norm(mag @ np.abs(v))), f"{kind} x probe {j}", index=j)
    for kind, capability in _DIAGONALS.items():
        add(capability, capability, own(out[capability]), np.diag(ref.matrix(kind)), b.rtol,
            float(np.linalg.norm(np.diag(b.matrix_magnitude(kind)))), f"exact diag({kind})")
    results += _check_cg(case, dtype, out, own, suffix, against)
    for kind, damping in zip(_UPDATES, case.dampings, strict=True):
        if kind not in _updates(problem):
            continue
        tolerance, _ = b.solve_tolerance(ref.matrix(kind), b.matrix_magnitude(kind), damping,
                                         ref.gradient, b.gradient_magnitude)
        add("damped_update", "update_" + kind, own(out["update_" + kind]),
            ref.damped_update(kind, damping), tolerance, 0.0,
            f"-({kind} + {damping:.3g} I)^-1 grad h by CG on the linearized operator")
    return results


def _check_cg(case: _Case, dtype: str, out, own, suffix: str, against) -> list[CheckResult]:
    n = case.problem.n_params
    kappa = float(np.linalg.cond(case.a))
    informative = unit_roundoff(dtype) ** 0.5
    results = []
    for variant in _CG_VARIANTS:
        residuals = case.residuals[variant]
        for k, optimal in enumerate(case.optimal[variant], start=1):
            if residuals[k - 1] <= informative * residuals[0]:
                break  # the remaining iterates are not determined by the data in this precision
            desired = optimal if against is None else own(against["cg_" + variant])[k - 1]
            tolerance = solve_rtol(dtype, length=n, depth=k,
                                   condition=kappa * residuals[0] / residuals[k - 1])
            comparison = compare(own(out["cg_" + variant])[k - 1], desired, tolerance=tolerance)
            results.append(_result(f"jax_cg_{variant}_{dtype}{suffix}", "cg", case.problem,
                                   comparison, f"CG iterate {k} = A-optimal point of x0 + K_{k} "
                                   f"(Grosse ch. 4 s4; {variant})"))
    return results


def _pads(problem: Problem) -> bool:
    """Whether extra outputs `z = 0`, `y = 0` leave h and its derivatives unchanged.

    True for `mse` (a zero term, a block `H_L = F_R = I` uncoupled from the own outputs)
    when the last activation maps 0 to 0 elementwise (the padded rows get `phi(0)`).
    """
    return problem.loss == Loss.MSE.value and problem.layers[-1].activation in (
        "identity", "tanh", "relu")


def _frames(problems: Sequence[Problem]) -> list[tuple[_Frame, list[Problem]]]:
    """Problems grouped by output size C, each group with its universal frame.

    A group whose problems all `_pads` joins the next larger C: a frame costs ~2 s of
    tracing and compilation even when small.
    """
    by_outputs: dict[int, list[Problem]] = {}
    for problem in problems:
        by_outputs.setdefault(problem.output_dim, []).append(problem)
    sizes = sorted(by_outputs)
    for small, large in zip(sizes, sizes[1:], strict=False):
        if all(_pads(problem) for problem in by_outputs[small]):
            by_outputs[large] = by_outputs.pop(small) + by_outputs[large]
    return [(_Frame.of(group), group) for _, group in sorted(by_outputs.items())]


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
    for frame, group in _frames(problems):
        cases = [_case(problem, frame, seed) for problem in group]
        for dtype in DTYPES:
            outs = _run(frame, cases, dtype, None)
            for case, out in zip(cases, outs, strict=True):
                results += _check_problem(case, dtype, out)
            if mesh is not None:
                sharded_outs = _run(frame, cases, dtype, mesh)
                for case, out, sharded in zip(cases, outs, sharded_outs, strict=True):
                    results += _check_problem(case, dtype, sharded, f"_sharded{devices}",
                                              against=out)
        if progress is not None:
            for problem in group:
                progress(problem.name)
    return results


def _enable_compilation_cache() -> None:
    """Persist compiled kernels across runs (JAX's compilation cache), unless already set.

    `NGD_VERIFY_CACHE=off` leaves the cache disabled (cold-start timing, CI).
    """
    path = os.environ.get("NGD_VERIFY_CACHE", os.path.expanduser("~/.cache/ngd-verify/jax"))
    if jax.config.jax_compilation_cache_dir or path == "off":
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
