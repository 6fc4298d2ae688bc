"""The golden-fixture file format (PROTOCOL section 8): schema, strict loading, exact writing.

A fixture is one JSON file; nothing in it is ever unpickled or evaluated. Every number is a
decimal string (plain JSON numbers are accepted on input), parsed by one strict rule
(`DECIMAL`), so a malformed file fails with one message naming the file and the field:

    {"schema": "ngd-verify/fixture/v1",
     "description": str,
     "problem":   {name, layers, loss, reduction, params, inputs, targets},   # PROTOCOL s1
     "digits":    int,          # significant digits every stored expected value carries
     "arguments": {"vector": [n], "damping": num,
                   "cg": {"matrix": [[n x n]], "rhs": [n], "x0": [n],
                          "preconditioner": [n], "iterations": int}},
     "expected":  {... one leaf per quantity, see `expected_shapes` ...},
     "tolerance": {key: {"length", "depth", "condition", "magnitude", "float64", "float32"}},
     "certification": {"dps", "check_dps", "stored_digits", "digits_by_key": {key: int}}}

The leaves of `expected` (with `n` parameters, `K = arguments.cg.iterations`):

    loss ()                       gradient (n,)
    hessian, ggn, fisher, empirical_fisher (n, n)
    hessian_diag, ggn_diag, fisher_diag, empirical_fisher_diag (n,)
    hvp, ggn_vp, fisher_vp, empirical_fisher_vp (n,)        products with arguments.vector
    damped_update.{hessian,ggn,fisher,empirical_fisher} (n,) -(C + damping I)^{-1} gradient
    kfac_factors.{fisher,ggn,empirical}[l].{A,S}            PROTOCOL s4, one entry per layer
    kfac_solve.{eigen,factored}.{fisher,ggn,empirical} (n,) K-FAC damped solves of vector
    cg.iterates, cg.pcg_iterates (K, n)                     row k-1 = the k-th CG iterate

Tolerance keys are the leaf paths without the layer index and factor name
(`kfac_factors.fisher` covers every `A_l` and `S_l` of that kind).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import mpmath
import numpy as np

from ngd_ref import Problem, ProblemError
from ngd_ref.dense import Curvature, DampingMethod, KfacKind
from verify._errors import UsageError

__all__ = [
    "DECIMAL",
    "SCHEMA",
    "Arguments",
    "CGSystem",
    "Fixture",
    "FixtureError",
    "LeafPath",
    "ToleranceRecord",
    "dumps",
    "exact_decimal",
    "expected_shapes",
    "format_decimal",
    "leaf_name",
    "load_fixture",
    "parse_fixture",
    "tolerance_key",
]

SCHEMA = "ngd-verify/fixture/v1"

#: A decimal number: optional sign, digits with an optional point, optional exponent.
#: No `nan`, `inf`, underscores or hexadecimal -- what C's strtod and Julia's parse accept.
DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

#: A path to one expected leaf, e.g. `("kfac_factors", "fisher", 0, "A")`.
LeafPath = tuple[str | int, ...]

VECTOR_PRODUCTS: dict[str, str] = {
    Curvature.HESSIAN.value: "hvp",
    Curvature.GGN.value: "ggn_vp",
    Curvature.FISHER.value: "fisher_vp",
    Curvature.EMPIRICAL_FISHER.value: "empirical_fisher_vp",
}


class FixtureError(UsageError, ValueError):
    """A malformed fixture file; the message names the file and the field (CLI exit status 2)."""


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------
def exact_decimal(value: float) -> str:
    """Write a float64 as its exact decimal expansion (always finite), e.g. `0.015625`."""
    text = format(Decimal(float(value)), "f")
    return "0" if float(value) == 0.0 else text


def format_decimal(value: Any, digits: int) -> str:
    """`value` (an mpmath number) rounded to `digits` significant digits, e.g. `-1.25...e-1`.

    Exact zeros are written `"0"`. mpmath rounds correctly to the nearest, so the string is a
    deterministic function of the value.
    """
    x = mpmath.mpf(value)
    if x == 0:
        return "0"
    return mpmath.nstr(x, digits, strip_zeros=False, min_fixed=1, max_fixed=0)


def _number(value: Any, where: str, convert: Callable[[str], Any]) -> Any:
    if isinstance(value, str):
        if not DECIMAL.fullmatch(value):
            raise FixtureError(f"{where}: {value!r} is not a decimal number")
        return convert(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FixtureError(f"{where}: expected a number or a decimal string, got "
                           f"{type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise FixtureError(f"{where}: non-finite number {value!r}")
    return convert(repr(value) if isinstance(value, float) else str(value))


def _array(value: Any, shape: tuple[int, ...], where: str,
           convert: Callable[[str], Any] = float) -> np.ndarray:
    """Nested lists of numbers of exactly `shape` -> an array (float64, or object for mpmath)."""

    def walk(item: Any, depth: int, path: str) -> Any:
        if depth == len(shape):
            return _number(item, path, convert)
        if not isinstance(item, list) or len(item) != shape[depth]:
            got = f"a list of length {len(item)}" if isinstance(item, list) else type(item).__name__
            raise FixtureError(f"{path}: expected shape {shape} (a list of length {shape[depth]} "
                               f"at this level), got {got}")
        return [walk(sub, depth + 1, f"{path}[{i}]") for i, sub in enumerate(item)]

    out = np.empty(shape, dtype=float if convert is float else object)
    out[...] = walk(value, 0, where)
    return out


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
def leaf_name(path: LeafPath) -> str:
    """`("kfac_factors", "fisher", 0, "A")` -> `"kfac_factors.fisher[0].A"`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def tolerance_key(path: LeafPath) -> str:
    """Name the tolerance record governing a leaf: its path up to the first layer index."""
    head: list[str] = []
    for part in path:
        if isinstance(part, int):
            break
        head.append(part)
    return ".".join(head)


def expected_shapes(problem: Problem, iterations: int) -> dict[LeafPath, tuple[int, ...]]:
    """Every leaf of `expected`, in file order, with its shape (see the module docstring)."""
    n = problem.n_params
    curvatures = [c.value for c in Curvature]
    shapes: dict[LeafPath, tuple[int, ...]] = {("loss",): (), ("gradient",): (n,)}
    shapes.update({(c,): (n, n) for c in curvatures})
    shapes.update({(f"{c}_diag",): (n,) for c in curvatures})
    shapes.update({(VECTOR_PRODUCTS[c],): (n,) for c in curvatures})
    shapes.update({("damped_update", c): (n,) for c in curvatures})
    for kind in KfacKind:
        for index, layer in enumerate(problem.layers):
            rows, cols = layer.weight_shape  # (n_out, n_in + 1); a conv's per PROTOCOL s12
            shapes["kfac_factors", kind.value, index, "A"] = (cols, cols)
            shapes["kfac_factors", kind.value, index, "S"] = (rows, rows)
    for method in DampingMethod:
        shapes.update({("kfac_solve", method.value, kind.value): (n,) for kind in KfacKind})
    shapes["cg", "iterates"] = (iterations, n)
    shapes["cg", "pcg_iterates"] = (iterations, n)
    return shapes


def _get(data: Any, path: LeafPath, where: str) -> Any:
    node = data
    for depth, part in enumerate(path):
        here = where + ("." if where else "") + leaf_name(path[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise FixtureError(f"{here}: missing (expected a list with an entry per layer)")
        elif not isinstance(node, Mapping) or part not in node:
            raise FixtureError(f"{here}: missing field")
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------
# The loaded fixture
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CGSystem:
    """The stored SPD system of the CG iterates: `matrix x = rhs` from `x0`.

    Attributes:
        matrix: `(n, n)`, symmetric positive definite, exact in float64 and float32.
        rhs: `(n,)`.
        x0: `(n,)` starting point.
        preconditioner: `(n,)` diagonal `d` of the preconditioner, `precond(r) = d * r`.
        iterations: K, the number of stored iterates.
    """

    matrix: np.ndarray
    rhs: np.ndarray
    x0: np.ndarray
    preconditioner: np.ndarray
    iterations: int


@dataclasses.dataclass(frozen=True)
class Arguments:
    """The stored inputs of the vector products, solves and CG iterates.

    Attributes:
        vector: `(n,)`, the `v` of `hvp`, `ggn_vp`, ..., and of `kfac_solve`.
        damping: `lambda` of `damped_update` and `kfac_solve`.
        cg: the CG system.
    """

    vector: np.ndarray
    damping: float
    cg: CGSystem

    def to_json(self) -> dict[str, Any]:
        """Build the `arguments` object of the file (exact decimal strings)."""
        exact = np.vectorize(exact_decimal, otypes=[object])
        return {
            "vector": exact(self.vector).tolist(),
            "damping": exact_decimal(self.damping),
            "cg": {
                "matrix": exact(self.cg.matrix).tolist(),
                "rhs": exact(self.cg.rhs).tolist(),
                "x0": exact(self.cg.x0).tolist(),
                "preconditioner": exact(self.cg.preconditioner).tolist(),
                "iterations": self.cg.iterations,
            },
        }


@dataclasses.dataclass(frozen=True)
class ToleranceRecord:
    """What a port's result is held to (the policy of `verify._tolerance`, restated per leaf).

    `error = ||actual - expected||_F / max(||expected||_F, magnitude) <= tolerance[dtype]`
    with `tolerance[dtype] = 16 u sqrt(length) (depth + 1) max(condition, 1)`.
    """

    length: int
    depth: int
    condition: float
    magnitude: float
    float64: float
    float32: float

    def for_dtype(self, dtype: str) -> float:
        """Return the tolerance for `"float64"` or `"float32"`."""
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
        return self.float64 if dtype == "float64" else self.float32


@dataclasses.dataclass(frozen=True)
class Fixture:
    """A loaded, validated fixture file.

    Attributes:
        path: the file.
        problem: the problem (parameters and inputs exact in float64).
        digits: significant digits every expected value carries (certified).
        arguments: the stored vector, damping and CG system.
        expected: `{leaf path: float64 array}` in file order (see `expected_shapes`).
        tolerance: `{tolerance key: ToleranceRecord}`.
        data: the parsed JSON, for exact (mpmath) reading of the decimal strings.
    """

    path: Path
    problem: Problem
    digits: int
    arguments: Arguments
    expected: dict[LeafPath, np.ndarray]
    tolerance: dict[str, ToleranceRecord]
    data: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The problem's name."""
        return self.problem.name

    def exact(self, path: LeafPath) -> np.ndarray:
        """Read one leaf's decimal strings as mpmath numbers (at the current mpmath precision)."""
        return _array(_get(self.data["expected"], path, "expected"), self.expected[path].shape,
                      f"{self.path}: expected.{leaf_name(path)}", mpmath.mpf)

    def items(self) -> Iterator[tuple[LeafPath, np.ndarray, ToleranceRecord]]:
        """`(leaf path, expected float64 array, its tolerance record)` for every leaf."""
        for path, value in self.expected.items():
            yield path, value, self.tolerance[tolerance_key(path)]


def _int_field(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FixtureError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _parse_problem(data: Any, where: str) -> Problem:
    if not isinstance(data, Mapping):
        raise FixtureError(f"{where}: expected an object, got {type(data).__name__}")
    fields = dict(data)
    for key, ndim in (("params", 1), ("inputs", 2)):
        if key in fields:
            fields[key] = _nested_numbers(fields[key], f"{where}.{key}", ndim)
    if "targets" in fields:
        targets = fields["targets"]
        ndim = 2 if isinstance(targets, list) and targets and isinstance(targets[0], list) else 1
        fields["targets"] = _nested_numbers(targets, f"{where}.targets", ndim)
    try:
        return Problem.from_dict(fields)
    except ProblemError as exc:
        raise FixtureError(f"{where}: {exc}") from None


def _nested_numbers(value: Any, where: str, ndim: int) -> np.ndarray:
    """Parse a rectangular `ndim`-d list of numbers whose shape is read from the data itself."""
    shape, node = [], value
    for _ in range(ndim):
        if not isinstance(node, list) or not node:
            raise FixtureError(f"{where}: expected a non-empty {ndim}-d list of numbers")
        shape.append(len(node))
        node = node[0]
    return _array(value, tuple(shape), where)


def parse_fixture(data: Any, source: str) -> Fixture:
    """Validate parsed JSON as a fixture (PROTOCOL s8); `source` names the file in errors.

    Raises:
        FixtureError: naming `source` and the first malformed field.
    """
    if not isinstance(data, Mapping):
        raise FixtureError(f"{source}: expected a JSON object at the top level, "
                           f"got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise FixtureError(f"{source}: schema: expected {SCHEMA!r}, got {data.get('schema')!r}")
    for key in ("problem", "digits", "arguments", "expected", "tolerance"):
        if key not in data:
            raise FixtureError(f"{source}: {key}: missing field")
    problem = _parse_problem(data["problem"], f"{source}: problem")
    digits = _int_field(data["digits"], f"{source}: digits", 0)
    n = problem.n_params
    args = data["arguments"]
    cg = _get(args, ("cg",), f"{source}: arguments")
    iterations = _int_field(_get(cg, ("iterations",), f"{source}: arguments.cg"),
                            f"{source}: arguments.cg.iterations", 1)

    def arg(path: LeafPath, shape: tuple[int, ...]) -> np.ndarray:
        return _array(_get(args, path, f"{source}: arguments"), shape,
                      f"{source}: arguments.{leaf_name(path)}")

    arguments = Arguments(
        vector=arg(("vector",), (n,)),
        damping=float(arg(("damping",), ())),
        cg=CGSystem(arg(("cg", "matrix"), (n, n)), arg(("cg", "rhs"), (n,)),
                    arg(("cg", "x0"), (n,)), arg(("cg", "preconditioner"), (n,)), iterations),
    )
    if not arguments.damping > 0:
        raise FixtureError(f"{source}: arguments.damping: expected a number > 0, "
                           f"got {arguments.damping!r}")
    expected = {
        path: _array(_get(data["expected"], path, f"{source}: expected"), shape,
                     f"{source}: expected.{leaf_name(path)}")
        for path, shape in expected_shapes(problem, iterations).items()
    }
    tolerance = {}
    for key in dict.fromkeys(tolerance_key(path) for path in expected):
        record = _get(data["tolerance"], (key,), f"{source}: tolerance")
        where = f"{source}: tolerance.{key}"
        if not isinstance(record, Mapping):
            raise FixtureError(f"{where}: expected an object, got {type(record).__name__}")
        length, depth = (_int_field(_get(record, (field,), where), f"{where}.{field}", 0)
                         for field in ("length", "depth"))
        condition, magnitude, rtol64, rtol32 = (
            float(_array(_get(record, (field,), where), (), f"{where}.{field}"))
            for field in ("condition", "magnitude", "float64", "float32"))
        tolerance[key] = ToleranceRecord(length, depth, condition, magnitude, rtol64, rtol32)
    return Fixture(Path(source), problem, digits, arguments, expected, tolerance, data)


def load_fixture(path: str | Path) -> Fixture:
    """Load and validate one fixture file (plain `json`; nothing is ever unpickled).

    Raises:
        FixtureError: unreadable file, invalid JSON, or any malformed field (named).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FixtureError(f"{path}: cannot read fixture file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                           f"{exc.msg}") from None
    return parse_fixture(data, str(path))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _dump(value: Any, indent: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(key)}: {_dump(item, indent + 2)}"
                 for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(_scalar(item) for item in value):
            return "[" + ", ".join(json.dumps(item) for item in value) + "]"
        rows = [inner + _dump(item, indent + 2) for item in value]
        return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
    return json.dumps(value)


def dumps(data: Mapping[str, Any]) -> str:
    """Deterministic JSON text: keys in insertion order, one matrix row per line, final newline."""
    return _dump(dict(data), 0) + "\n"
