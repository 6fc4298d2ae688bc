"""What a failed comparison means, in the user's terms (issue 13).

`verify._tolerance.compare` measures; this module explains a failure:

* **what the number is**: `error = ||actual - desired||_F / scale` with `scale =
  max(||desired||_F, MAG)`; the message says "relative to ||ref||" or "relative to the
  computation's magnitude MAG" (the absolute difference is `error * scale`, also given);
* **where**: the largest entrywise difference, named in the canonical parameter layout
  (PROTOCOL s1: per layer `vec([W_l b_l])`, columns stacked) as `layer l W[i, j]` or
  `layer l b[i]` (1-based layer, 0-based row/column, as `ngd_ref.unflatten` indexes them)
  whenever an axis has the problem's `n` parameters, else as the plain index;
* **a plain scalar multiple**: the least-squares factor `s = <a, d> / <d, d>`; when
  `a - s d` is within the tolerance (the scalar explains the whole difference) and `s` is not
  1, the message says "the result is s x the reference" and names `s` when it is one of the
  usual convention factors -- 2, 1/2, B, 1/B, C, 1/C, B*C, 1/(B*C), their squares, -1 --
  pointing at the reduction and loss-constant notes (docs/protocol.md s1-s2). An unnamed `s`
  is reported only for more than one entry and `|s - 1| >= 1e-3` (a single entry, or
  rounding noise at a tiny scale, is "explained" by some `s` close to 1). A wrong
  reduction (`mean` vs `sum`) or a dropped loss constant is the most common adapter bug.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import numpy as np

from ngd_ref import Problem, layer_slices

__all__ = ["Diagnosis", "diagnose", "parameter_name"]

#: where the conventions a scalar factor usually comes from are written down
CONVENTIONS = "reduction c = 1/B or 1 and loss constants: docs/protocol.md s1-s2"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The explained comparison (the extra fields of a `CheckResult`).

    Attributes:
        measure: `"relative to ||ref||"` or `"relative to MAG"` (what `error` divides by).
        scale: the denominator of `error`.
        where: the largest difference's location in words, or None.
        factor: the fitted scalar `s` when `actual ~ s desired` explains the failure, or None.
        factor_name: the convention factor `s` equals (e.g. `"1/B"`, B = 4), or "".
    """

    measure: str
    scale: float
    where: str | None = None
    factor: float | None = None
    factor_name: str = ""

    def describe(self, error: float, tolerance: float, max_abs: float) -> str:
        """The failure in one line."""
        text = (f"error {error:.2e} > tol {tolerance:.2e}, {self.measure} "
                f"({self.scale:.2e}); max |diff| {max_abs:.2e}")
        if self.where:
            text += f" at {self.where}"
        if self.factor is not None:
            named = f" = {self.factor_name}" if self.factor_name else ""
            text += (f"; the result is {self.factor:.6g}{named} x the reference: a scalar "
                     f"convention? ({CONVENTIONS})")
        return text


def parameter_name(problem: Problem, index: int) -> str:
    """`layer l W[i, j]` / `layer l b[i]` for a canonical parameter index (PROTOCOL s1)."""
    for number, (layer, block) in enumerate(
        zip(problem.layers, layer_slices(problem.layers), strict=True), start=1
    ):
        if block.start <= index < block.stop:
            rows, cols = layer.weight_shape  # a conv's W is c_out x c_in k_h k_w (s12)
            column, row = divmod(index - block.start, rows)  # vec stacks columns
            return (f"layer {number} b[{row}]" if column == cols - 1
                    else f"layer {number} W[{row}, {column}]")
    return f"[{index}]"


def _where(index: tuple[int, ...] | None, shape: tuple[int, ...], problem: Problem | None
           ) -> str | None:
    if index is None:
        return None
    if problem is None or not shape or any(s != problem.n_params for s in shape):
        return str(index)
    names = [parameter_name(problem, i) for i in index]
    return names[0] if len(names) == 1 else "(" + ", ".join(names) + ")"


def _candidates(problem: Problem | None) -> dict[Fraction, str]:
    """The usual convention factors, exact, with their names (`1/B (B = 4, C = 3)`).

    Factors that coincide on this problem are named together (`2^2 or B`, B = 4).
    """
    symbols = [(Fraction(2), "2")]
    detail = ""
    if problem is not None:
        b, c = problem.batch_size, problem.output_dim
        symbols += [(Fraction(b), "B"), (Fraction(c), "C"), (Fraction(b * c), "B*C")]
        detail = f" (B = {b}, C = {c})"
    labels: dict[Fraction, list[str]] = {Fraction(-1): ["-1"]}
    for value, symbol in symbols:
        wrapped = f"({symbol})" if "*" in symbol else symbol
        for factor, label in ((value, symbol), (1 / value, f"1/{wrapped}"),
                              (value**2, f"{wrapped}^2"), (1 / value**2, f"1/{wrapped}^2")):
            names = labels.setdefault(factor, [])
            if label not in names:
                names.append(label)
    labels.pop(Fraction(1), None)
    return {factor: " or ".join(names) + detail for factor, names in labels.items()}


def diagnose(actual: Any, desired: Any, comparison: Any, problem: Problem | None = None
             ) -> Diagnosis:
    """Explain a numeric comparison (`comparison`: a `verify._tolerance.Comparison`).

    Args:
        actual: the port's result (already real, see `verify.harness._faults`).
        desired: the reference.
        comparison: the outcome of `compare(actual, desired, ...)`.
        problem: the problem, to name parameters and the factors B and C.
    """
    d = np.asarray(desired, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    measure = ("relative to ||ref||" if comparison.scale <= norm
               else "relative to the computation's magnitude MAG")
    where = _where(comparison.where, d.shape, problem)
    factor, name = None, ""
    try:
        a = np.asarray(actual, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if (a is not None and a.shape == d.shape and norm > 0 and comparison.scale > 0
            and not comparison.passed and np.all(np.isfinite(a))):
        s = float(np.sum(a * d) / norm**2)
        residual = float(np.linalg.norm(a - s * d)) / comparison.scale
        if math.isfinite(s) and residual <= comparison.tolerance:
            for value, label in _candidates(problem).items():
                if abs(s - float(value)) <= 1e-6 * abs(float(value)):
                    factor, name = s, label
                    break
            else:
                # an unnamed factor is shown only if it is plainly not 1 at the 6 digits
                # printed (with one entry, or noise at a tiny scale, any s "explains" it)
                if a.size > 1 and abs(s - 1.0) >= 1e-3:
                    factor = s
    return Diagnosis(measure, float(comparison.scale), where, factor, name)
