"""Generating golden fixtures: every expected value from the dense reference in mpmath.

`compute_expected(problem, arguments, backend)` is the one code path behind every leaf of a
fixture (`verify._fixture_format.expected_shapes`); it runs the dense reference, whose
float64 and mpmath backends share their formulas:

* `loss`, `gradient`, `hessian`, `ggn`, `fisher`, `empirical_fisher` (PROTOCOL s3; Martens
  s3, s5, s7, seed 003), their diagonals and products with the stored vector `v`;
* `damped_update.C = -(C + lambda I)^{-1} grad h` (Grosse ch. 4 eq. 5 and eq. 13, seed 002);
* `kfac_factors` and `kfac_solve` (PROTOCOL s4; Grosse s5.2, eq. 23 "eigen" and eq. 24
  "factored");
* `cg.iterates[k-1]`, the k-th iterate of CG on the stored system, and the same with the
  stored diagonal preconditioner (Grosse ch. 4 s4).

`generate_fixture` evaluates it at 50 significant digits (`DPS`) and again at 70
(`CHECK_DPS`); a leaf's certified digits are those on which both agree, normwise
(`ngd_ref._certify.agreement_digits`). Values are written with `STORED_DIGITS` significant
digits, so `digits = min(STORED_DIGITS - 1, certified)`. All arguments (vector, damping, CG
system) are dyadic rationals exact in float64 and float32, chosen deterministically, so a
second generation is byte-identical.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import mpmath
import numpy as np

from ngd_ref import Problem, layer_slices, zoo
from ngd_ref.dense import (
    FLOAT64,
    Backend,
    Curvature,
    DampingMethod,
    DenseCurvature,
    KfacKind,
    agreement_digits,
    cg_iterates,
    dense,
    factored_damping_pi,
    kfac_factors,
    kfac_solve,
    mp_backend,
)
from verify._fixture_format import (
    SCHEMA,
    VECTOR_PRODUCTS,
    Arguments,
    CGSystem,
    LeafPath,
    ToleranceRecord,
    exact_decimal,
    format_decimal,
    tolerance_key,
)
from verify._tolerance import rounding_rtol, solve_rtol

__all__ = [
    "CG_ITERATIONS",
    "CHECK_DPS",
    "CONDITION_DIGITS",
    "DPS",
    "FIXTURE_SPECS",
    "FLUSH_MARGIN",
    "GRID",
    "STORED_DIGITS",
    "FixtureSpec",
    "compute_expected",
    "generate_fixture",
    "make_arguments",
    "policy_tolerance",
    "relu_margin_violations",
    "tolerance_records",
]

DPS = 50
CHECK_DPS = 70
STORED_DIGITS = 25
#: Entries below `||leaf||_F * 10^-(STORED_DIGITS + FLUSH_MARGIN)` are written as 0: they are
#: below the normwise resolution of the file (this only removes rounding noise around exact
#: zeros, e.g. of cancelled sums, from the text).
FLUSH_MARGIN = 5
CG_ITERATIONS = 4
#: The CG matrix and right-hand side are rounded to multiples of 2^-GRID: exact in float64, and
#: in float32 while entries stay below 2^(24 - GRID).
GRID = 16
#: Condition numbers enter the tolerances rounded to this many significant digits, so the
#: text does not depend on the last bits of a LAPACK eigensolver.
CONDITION_DIGITS = 3


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def _dyadic(values: np.ndarray, denominator: int) -> np.ndarray:
    return np.round(values * denominator) / denominator


def _to_grid(x: np.ndarray) -> np.ndarray:
    """Round mpmath numbers to the nearest multiple of 2^-GRID (exactly, ties to even)."""
    scale = mpmath.mpf(2) ** GRID
    return np.vectorize(lambda v: float(int(mpmath.nint(v * scale))) / 2.0**GRID,
                        otypes=[float])(x)


def make_arguments(problem: Problem, *, damping: float, seed: int,
                   iterations: int = CG_ITERATIONS) -> Arguments:
    """Choose the stored vector and CG system deterministically (dyadic, float32-exact).

    * `vector`: normal entries rounded to multiples of 1/16;
    * CG system (the Hessian-free system of Grosse eq. 12-13 with the Fisher, which equals G
      for natural-parameter losses and is positive semidefinite for every loss, while G is
      not for `gaussian_logvar`): `matrix = grid(F) + damping I` and `rhs = grid(-grad h)`,
      `grid` rounding the exact (50-digit) values to multiples of 2^-GRID (rounding keeps the
      matrix symmetric; the damping keeps it positive definite);
    * `x0`: normal entries rounded to multiples of 1/64, scaled by 1/4;
    * `preconditioner`: `d_i = 2^-round(log2 matrix_ii)` (Jacobi, in powers of two).

    Args:
        problem: the fixture's problem.
        damping: a dyadic `lambda > 0` (exactly representable).
        seed: seed of the vector and `x0`.
        iterations: number of CG iterates stored.

    Raises:
        ValueError: for a damping that is not positive or not exact in float32.
    """
    if not damping > 0 or float(np.float32(damping)) != damping:
        raise ValueError(f"damping: expected a positive number exact in float32, got {damping!r}")
    rng = np.random.default_rng(seed)
    n = problem.n_params
    vector = _dyadic(rng.normal(size=n), 16)
    x0 = _dyadic(rng.normal(size=n) / 4, 64)
    ref = DenseCurvature(problem, mp_backend(DPS))
    with ref.backend.precision():
        matrix = _to_grid(ref.fisher) + damping * np.eye(n)
        rhs = _to_grid(-ref.gradient)
    preconditioner = 2.0 ** -np.round(np.log2(np.diag(matrix)))
    return Arguments(vector, float(damping), CGSystem(matrix, rhs, x0, preconditioner, iterations))


def relu_margin_violations(problem: Problem) -> list[str]:
    """Pre-activations of ReLU layers too close to the kink for a float32 port to agree.

    A correct float32 port computes `s_l` with error up to `rounding_rtol("float32", ...)` times
    `|Wbar_l| |abar_{l-1}|`; when `|s_l|` is below that, the port may take the other branch of
    `relu`, and no tolerance could reconcile the results. Returns one line per violation.
    """
    ref = DenseCurvature(problem, FLOAT64)
    out = []
    for index, (layer, sl) in enumerate(zip(problem.layers, layer_slices(problem.layers),
                                            strict=True)):
        if layer.phi.smooth:
            continue
        wbar = np.abs(problem.params[sl].reshape(layer.weight_shape, order="F"))
        rtol = rounding_rtol("float32", length=layer.weight_shape[1], depth=index + 1)
        for b, trace in enumerate(ref.traces):
            margin = rtol * (wbar @ np.abs(trace.abar[index])).reshape(-1)  # conv: (c_out, T)
            for unit in np.flatnonzero(np.abs(trace.s[index]) <= margin):
                out.append(f"example {b}, layer {index}, unit {unit}: s = {trace.s[index][unit]!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Expected values
# ---------------------------------------------------------------------------------------------
def compute_expected(problem: Problem, arguments: Arguments,
                     backend: Backend) -> dict[LeafPath, Any]:
    """Every leaf of `expected_shapes(problem, K)` computed on `backend` (float64 or mpmath).

    Args:
        problem: the problem.
        arguments: the stored vector, damping and CG system.
        backend: `FLOAT64` or `mp_backend(dps)`.

    Returns:
        `{leaf path: value}` in file order; values are arrays (scalars for `loss`) of the backend.
    """
    bk = backend
    ref = dense(problem, bk)  # the cached instance K-FAC reads too
    lam = arguments.damping
    out: dict[LeafPath, Any] = {("loss",): ref.loss, ("gradient",): ref.gradient}
    curvatures = [c.value for c in Curvature]
    with bk.precision():
        v = bk.asarray(arguments.vector)
        for c in curvatures:
            out[(c,)] = ref.matrix(c)
        for c in curvatures:
            out[(f"{c}_diag",)] = np.diagonal(ref.matrix(c)).copy()
        for c in curvatures:
            out[(VECTOR_PRODUCTS[c],)] = ref.matrix(c) @ v
        for c in curvatures:
            out["damped_update", c] = ref.damped_update(c, lam)
        for kind in KfacKind:
            for index, (a, s) in enumerate(kfac_factors(problem, kind, backend=bk)):
                out["kfac_factors", kind.value, index, "A"] = a
                out["kfac_factors", kind.value, index, "S"] = s
        for method in DampingMethod:
            for kind in KfacKind:
                out["kfac_solve", method.value, kind.value] = kfac_solve(
                    problem, arguments.vector, lam, method, kind, backend=bk)
        system = arguments.cg
        matrix, rhs, x0 = bk.asarray(system.matrix), bk.asarray(system.rhs), bk.asarray(system.x0)
        diag = bk.asarray(system.preconditioner)
        k = system.iterations
        out["cg", "iterates"] = np.stack(cg_iterates(matrix, rhs, x0, maxiter=k)[1:])
        out["cg", "pcg_iterates"] = np.stack(
            cg_iterates(matrix, rhs, x0, maxiter=k, precond=lambda r: diag * r)[1:])
    return out


# ---------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------
def _condition(matrix: np.ndarray) -> float:
    """2-norm condition number of a symmetric matrix, from its eigenvalues."""
    eig = np.abs(np.linalg.eigvalsh(matrix))
    return float(eig.max() / eig.min()) if eig.min() > 0 else math.inf


def _kfac_conditions(factors: list[tuple[np.ndarray, np.ndarray]], lam: float) -> dict[str, float]:
    """Largest per-layer condition number of the damped K-FAC blocks, per method (eq. 23/24)."""
    eigen, factored = 1.0, 1.0
    for a, s in factors:
        da, ds = np.clip(np.linalg.eigvalsh(a), 0, None), np.clip(np.linalg.eigvalsh(s), 0, None)
        eigen = max(eigen, (da.max() * ds.max() + lam) / (da.min() * ds.min() + lam))
        pi = float(factored_damping_pi(a, s))
        root = math.sqrt(lam)
        factored = max(factored, _condition(a + pi * root * np.eye(a.shape[0]))
                       * _condition(s + root / pi * np.eye(s.shape[0])))
    return {DampingMethod.EIGEN.value: float(eigen), DampingMethod.FACTORED.value: float(factored)}


def _significant(value: float, digits: int = CONDITION_DIGITS) -> float:
    return float(f"{value:.{digits - 1}e}")


def policy_tolerance(dtype: str, *, length: int, depth: int, condition: float) -> float:
    """Compute `16 u sqrt(length) (depth + 1) max(condition, 1)` (`solve_rtol`), as stored.

    Rounded to `CONDITION_DIGITS` significant digits like the condition number it uses.
    """
    return _significant(solve_rtol(dtype, length=length, depth=depth, condition=condition))


def _record(length: int, depth: int, condition: float = 1.0,
            magnitude: float = 0.0) -> ToleranceRecord:
    condition = _significant(condition)
    magnitude = _significant(magnitude) if magnitude else 0.0
    tolerances = [policy_tolerance(dtype, length=length, depth=depth, condition=condition)
                  for dtype in ("float64", "float32")]
    return ToleranceRecord(length, depth, condition, magnitude, *tolerances)


def tolerance_records(problem: Problem, arguments: Arguments,
                      exact: Mapping[LeafPath, Any]) -> dict[str, ToleranceRecord]:
    """Derive the tolerance of every key from the policy of `verify._tolerance`.

    * `length = max(n, B C)`, the longest sum; for the CG iterates `n`;
    * `depth`: `L + 1` (network plus loss) for `loss` and `gradient`, `L + 2` for the
      second-order quantities; `K`, the number of iterations, for the CG iterates;
    * `condition`: 1, except for solves: `kappa(C + lambda I)` for `damped_update.C`, the
      largest per-layer `kappa` of the damped K-FAC blocks for `kfac_solve` and `kappa(matrix)`
      for the CG iterates (rounded to `CONDITION_DIGITS` digits);
    * `magnitude` (`MAG` of the policy, 0 = use `||expected||`): `c sum_b |g_b|` for the
      gradient, `|C| |v|` for the product `C v`, where cancellation can make the result small.
    """
    ref = DenseCurvature(problem, FLOAT64)
    as_float = {path: FLOAT64.to_float64(value) for path, value in exact.items()}
    n, depth = problem.n_params, len(problem.layers)
    length = max(n, problem.batch_size * problem.output_dim)
    lam = arguments.damping
    grad_mag = float(np.linalg.norm(ref.c * np.abs(ref.per_example_gradients).sum(axis=0)))
    records = {"loss": _record(length, depth + 1),
               "gradient": _record(length, depth + 1, magnitude=grad_mag)}
    for c in (curvature.value for curvature in Curvature):
        matrix = as_float[(c,)]
        records[c] = records[f"{c}_diag"] = _record(length, depth + 2)
        product_mag = float(np.linalg.norm(np.abs(matrix) @ np.abs(arguments.vector)))
        records[VECTOR_PRODUCTS[c]] = _record(length, depth + 2, magnitude=product_mag)
        records[f"damped_update.{c}"] = _record(length, depth + 2,
                                                _condition(matrix + lam * np.eye(n)))
    for kind in KfacKind:
        factors = [(as_float["kfac_factors", kind.value, i, "A"],
                    as_float["kfac_factors", kind.value, i, "S"]) for i in range(depth)]
        records[f"kfac_factors.{kind.value}"] = _record(length, depth + 2)
        for method, condition in _kfac_conditions(factors, lam).items():
            records[f"kfac_solve.{method}.{kind.value}"] = _record(length, depth + 2, condition)
    system = arguments.cg
    for key in ("cg.iterates", "cg.pcg_iterates"):
        records[key] = _record(n, system.iterations, _condition(system.matrix))
    return {key: records[key] for key in dict.fromkeys(tolerance_key(path) for path in exact)}


# ---------------------------------------------------------------------------------------------
# The fixture
# ---------------------------------------------------------------------------------------------
def _encode(value: Any, digits: int) -> Any:
    """Write a leaf as nested decimal strings, flushing entries below the file's resolution."""
    array = np.asarray(value, dtype=object)
    norm = mpmath.sqrt(sum(mpmath.mpf(x) ** 2 for x in array.flat))
    floor = norm * mpmath.mpf(10) ** -(digits + FLUSH_MARGIN)
    encode = np.vectorize(lambda x: "0" if abs(x) < floor else format_decimal(x, digits),
                          otypes=[object])
    return encode(array).tolist() if array.ndim else encode(array).item()


def _nest(leaves: Mapping[LeafPath, Any]) -> dict[str, Any]:
    """Nest leaves: `{("a", "b", 0, "A"): x}` -> `{"a": {"b": [{"A": x}]}}` (lists in order)."""
    root: dict[str, Any] = {}
    for path, value in leaves.items():
        node: Any = root
        for part, nxt in zip(path[:-1], path[1:], strict=True):
            fresh: Any = [] if isinstance(nxt, int) else {}
            if isinstance(part, int):
                if part == len(node):
                    node.append(fresh)
                node = node[part]
            else:
                node = node.setdefault(part, fresh)
        node[path[-1]] = value
    return root


def generate_fixture(problem: Problem, *, arguments: Arguments | None = None,
                     damping: float = 0.0625, seed: int = 0, description: str = "",
                     dps: int = DPS, check_dps: int = CHECK_DPS) -> dict[str, Any]:
    """Compute a fixture (the JSON object of PROTOCOL s8) with mpmath, certifying its digits.

    Args:
        problem: the problem; its parameters and inputs are float64 numbers, used exactly.
        arguments: the stored vector, damping and CG system; `make_arguments(problem,
            damping=damping, seed=seed)` when None.
        damping: `lambda` when `arguments` is None.
        seed: seed of the stored vectors when `arguments` is None.
        description: one line saying what the fixture covers.
        dps: working precision of the stored values.
        check_dps: precision of the recomputation that certifies them (> dps).

    Returns:
        The fixture as a dict, ready for `verify._fixture_format.dumps`.

    Raises:
        ValueError: if a ReLU pre-activation is too close to its kink, or a damped system is
            so ill-conditioned that even a float32 tolerance would exceed 1 (nothing checked).
    """
    if check_dps <= dps:
        raise ValueError(f"check_dps: expected more than dps={dps}, got {check_dps}")
    violations = relu_margin_violations(problem)
    if violations:
        raise ValueError(f"{problem.name}: ReLU pre-activations at the kink: {violations[:3]}")
    if arguments is None:
        arguments = make_arguments(problem, damping=damping, seed=seed)
    exact = compute_expected(problem, arguments, mp_backend(dps))
    check = compute_expected(problem, arguments, mp_backend(check_dps))
    by_key: dict[str, float] = {}
    with mpmath.workdps(check_dps):
        for path, value in exact.items():
            key = tolerance_key(path)
            by_key[key] = min(by_key.get(key, math.inf), agreement_digits(value, check[path]))
    records = tolerance_records(problem, arguments, exact)
    useless = [key for key, record in records.items() if record.float32 >= 1.0]
    if useless:
        raise ValueError(f"{problem.name}: ill-conditioned, float32 tolerance >= 1 for {useless}; "
                         "choose a larger damping")
    certified = {key: check_dps if math.isinf(d) else int(math.floor(d))
                 for key, d in by_key.items()}
    with mpmath.workdps(dps):
        expected = {path: _encode(value, STORED_DIGITS) for path, value in exact.items()}
    problem_json = problem.to_dict()
    exact_list = np.vectorize(exact_decimal, otypes=[object])
    problem_json["params"] = exact_list(problem.params).tolist()
    problem_json["inputs"] = exact_list(problem.inputs).tolist()
    if problem.targets.dtype.kind == "f":
        problem_json["targets"] = exact_list(problem.targets).tolist()
    return {
        "schema": SCHEMA,
        "description": description,
        "problem": problem_json,
        "digits": min(STORED_DIGITS - 1, *certified.values()),
        "arguments": arguments.to_json(),
        "expected": _nest(expected),
        "tolerance": {key: {"length": r.length, "depth": r.depth, "condition": r.condition,
                            "magnitude": r.magnitude, "float64": r.float64, "float32": r.float32}
                      for key, r in records.items()},
        "certification": {"dps": dps, "check_dps": check_dps, "stored_digits": STORED_DIGITS,
                          "digits_by_key": certified},
    }



# ---------------------------------------------------------------------------------------------
# The shipped fixtures
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FixtureSpec:
    """One shipped fixture: a `zoo.make_problem` recipe plus the stored arguments.

    Attributes:
        name: the problem's name and the file's stem.
        sizes: layer widths `(n_0, ..., n_L)`.
        activations: one per layer.
        loss: a loss of PROTOCOL s2.
        batch: B.
        reduction: `"mean"` or `"sum"`.
        description: what the fixture covers.
        damping: the stored `lambda` (dyadic).
        seed: seed of the problem's data and of the stored vectors.
    """

    name: str
    sizes: tuple[int, ...]
    activations: tuple[str, ...]
    loss: str
    batch: int
    reduction: str
    description: str
    damping: float = 0.0625
    seed: int = 1

    def problem(self) -> Problem:
        """Build the fixture's problem (deterministic, dyadic data)."""
        return zoo.make_problem(self.sizes, self.activations, self.loss, self.batch,
                                reduction=self.reduction, seed=self.seed, name=self.name)

    def generate(self) -> dict[str, Any]:
        """Compute the fixture's JSON object (`generate_fixture`)."""
        return generate_fixture(self.problem(), damping=self.damping, seed=self.seed,
                                description=self.description)


FIXTURE_SPECS: tuple[FixtureSpec, ...] = (
    FixtureSpec("linear-2x2-mse-b2", (2, 2), ("identity",), "mse", 2, "mean",
                "smallest: one linear layer, least squares (n = 6)"),
    FixtureSpec("mse-3x4x2-tanh-b3", (3, 4, 2), ("tanh", "identity"), "mse", 3, "mean",
                "Gaussian regression, tanh hidden layer, several examples, mean"),
    FixtureSpec("softmax_xent-3x4x3-sigmoid-b4-sum", (3, 4, 3), ("sigmoid", "identity"),
                "softmax_cross_entropy", 4, "sum", "classification, sigmoid hidden, sum reduction"),
    FixtureSpec("sigmoid_xent-2x4x3-softplus-b1", (2, 4, 3), ("softplus", "identity"),
                "sigmoid_cross_entropy", 1, "mean",
                "multi-label Bernoulli, softplus hidden, one example (K-FAC exact)"),
    FixtureSpec("poisson-2x3x2-tanh-b2-sum", (2, 3, 2), ("tanh", "identity"), "poisson", 2, "sum",
                "Poisson counts (log-rate outputs), sum reduction", damping=0.25),
    FixtureSpec("nll_probs-3x4x3-tanh-softmax-b3", (3, 4, 3), ("tanh", "softmax"), "nll_probs", 3,
                "mean", "probability outputs (not natural parameters: F != G)"),
    FixtureSpec("gaussian_logvar-2x4x4-tanh-b3", (2, 4, 4), ("tanh", "identity"),
                "gaussian_logvar", 3, "mean",
                "heteroscedastic Gaussian (mean, log-variance), not natural parameters",
                damping=0.25),
    FixtureSpec("deep_linear-2x3x3x2-mse-b4", (2, 3, 3, 2), ("identity",) * 3, "mse", 4, "mean",
                "deep linear network (K-FAC exact for fisher and ggn)", damping=0.125),
    FixtureSpec("relu-2x4x4x3-softmax_xent-b3", (2, 4, 4, 3), ("relu", "relu", "identity"),
                "softmax_cross_entropy", 3, "mean", "two ReLU hidden layers (n = 47)"),
    FixtureSpec("mse-3x3x2-softplus-b1-sum", (3, 3, 2), ("softplus", "identity"), "mse", 1, "sum",
                "softplus hidden, one example, sum reduction"),
    FixtureSpec("logistic-4x3-softmax_xent-b5", (4, 3), ("identity",), "softmax_cross_entropy", 5,
                "mean", "multinomial logistic regression (one layer: H = G)"),
    FixtureSpec("mse-2x3x3-tanh-softmax-b2", (2, 3, 3), ("tanh", "softmax"), "mse", 2, "mean",
                "squared error on softmax probabilities"),
    FixtureSpec("nll_probs-2x3x3-relu-softmax-b1-sum", (2, 3, 3), ("relu", "softmax"), "nll_probs",
                1, "sum", "ReLU hidden, probability outputs, one example, sum reduction"),
    FixtureSpec("gaussian_logvar-2x3x2-sigmoid-b1-sum", (2, 3, 2), ("sigmoid", "identity"),
                "gaussian_logvar", 1, "sum",
                "heteroscedastic Gaussian, sigmoid hidden, one example"),
    FixtureSpec("sigmoid_xent-3x3x2-relu-b3-sum", (3, 3, 2), ("relu", "identity"),
                "sigmoid_cross_entropy", 3, "sum", "Bernoulli outputs, ReLU hidden, sum reduction",
                seed=2),
)
