"""Tolerance policy: every tolerance in ngd-verify comes from here, derived, never tuned.

The model (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3-4): a quantity
computed by a fixed sequence of floating-point operations with unit roundoff `u` satisfies

    |fl(Q) - Q| <= gamma * u * MAG(Q),        gamma ~ sqrt(length) * (depth + 1)

where `MAG(Q)` is the *magnitude* of the computation -- the same formula evaluated on
absolute values (e.g. `c sum_b ||J_b||^2 ||H_L,b||` for `G = c sum_b J_b^T H_L,b J_b`) --
`length` is the longest inner product and `depth` the number of layers of composition
through which errors propagate. `sqrt(length)` is the probabilistic (not worst-case) growth
that rounding errors show in practice (Higham & Mary 2019). So every exact comparison is

    error = ||actual - desired||_F / max(||desired||_F, MAG)  <=  SAFETY * u * gamma

with `SAFETY = 16` covering the constants the model omits. Measuring against `MAG` rather
than `||desired||` makes exact zeros and heavy cancellation safe without loosening anything:
the error a correct port can make is proportional to `MAG`, not to the (maybe tiny) result.

Consequences, by design (tested in tests/test_tolerance.py):
    * float64 (u = 2^-53 ~ 1.1e-16): tolerances are ~1e-13 on the zoo, so a port off by a
      relative 1e-7 fails by six orders of magnitude;
    * float32 (u = 2^-24 ~ 6e-8): ~1e-5, so a correct float32 port passes.

Linear solves add the condition number: `(C + lambda I) x = g` computed in precision `u`
from a matrix known to `u MAG(C)` has `||dx|| / ||x|| <= kappa * (u MAG(C)/||C + lambda I||)`
(Higham Thm 7.2), hence `solve_rtol`. CG iterates follow the same bound per iterate.

Statistical checks (sampled Fisher, Hutchinson, MC K-FAC) are hypothesis tests with a stated
false-positive rate: `statistical_bound` turns a (bounded or sub-Gaussian) estimator's
scale into a threshold exceeded with probability <= `FALSE_POSITIVE_RATE` (1e-6) under a
correct implementation, via Hoeffding's or Bernstein's inequality -- never a CLT guess.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "FALSE_POSITIVE_RATE",
    "SAFETY",
    "Comparison",
    "compare",
    "hoeffding_bound",
    "rounding_rtol",
    "solve_rtol",
    "trajectory_tolerances",
    "unit_roundoff",
]

SAFETY = 16.0
FALSE_POSITIVE_RATE = 1e-6

_UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24}


def unit_roundoff(dtype: str) -> float:
    """Unit roundoff `u` of `dtype` (`"float64"` or `"float32"`).

    Raises:
        ValueError: for any other dtype, naming the allowed values.
    """
    try:
        return _UNIT_ROUNDOFF[str(dtype)]
    except KeyError:
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}") from None


def rounding_rtol(dtype: str, *, length: int, depth: int = 1) -> float:
    """Relative (to magnitude) tolerance of a directly computed quantity.

    Args:
        dtype: precision of the computation under test.
        length: the longest sum involved (e.g. number of parameters n, or B * C).
        depth: layers of composition the errors travel through (network depth + 1 for the
            loss, + 1 again for second-order quantities).
    """
    return SAFETY * unit_roundoff(dtype) * math.sqrt(max(length, 1)) * (depth + 1)


def solve_rtol(dtype: str, *, length: int, depth: int, condition: float) -> float:
    """Tolerance, relative to `||x||`, for `x` solving a system of condition number `condition`.

    `condition` should be `kappa(M) * MAG(M) / ||M||` for the damped matrix M: the perturbation
    a correct port makes in M, measured in the units of M, amplified by kappa.
    """
    return rounding_rtol(dtype, length=length, depth=depth) * max(condition, 1.0)


def trajectory_tolerances(dtype: str, *, length: int, depth: int, step_norms, param_norms,
                          conditions, divergences,
                          restart_growth: Mapping[tuple[int, int], float] | None = None
                          ) -> list[float]:
    """Absolute tolerances on `theta_1 .. theta_K` of an optimizer trajectory (PROTOCOL s10).

    A correct port makes at step j an error of at most (the policy of `solve_rtol`: the
    step's linear algebra of condition `conditions[j]`, then rounding `theta_{j+1}`)

        e_j = solve_rtol(dtype, length, depth, conditions[j]) ||d_j||
              + rounding_rtol(dtype, length=1) ||theta_{j+1}||,

    and that error travels through the remaining steps. How much it grows is *measured*, never
    assumed: `divergences[k] = ||theta'_k - theta_k||` of two reference runs started a rounding
    of `dtype` apart (`divergences[0]` the start's distance), so `a_k = D_k / D_0` is the
    reference's own amplification from the start and `a_k / a_{j+1}` from step j + 1 to k
    (at least 1: an error is never assumed to shrink). That run's state (moving averages,
    stale inverses, damping, pairs) stays consistent with its parameters; a port's error in
    `theta_{j+1}` does not move the state with it, so where given, `R_{j+1,k} =
    restart_growth[(j + 1, k)]`, measured by the reference restarted from `theta_{j+1}` alone
    shifted (`ngd_ref.trajectory.restarted_trajectories`), bounds that growth too. Hence

        tol_k = sum_{j < k} e_j max(1, a_k / a_{j+1}, R_{j+1,k}),     k = 1..K.

    Args:
        dtype: the port's precision.
        length: the longest sum of one step (as `rounding_rtol`).
        depth: the depth of one step's computation (layers, loss, second order).
        step_norms: `||d_j||`, j = 0..K-1.
        param_norms: `||theta_{j+1}||`, j = 0..K-1.
        conditions: the condition of step j's linear algebra times the cancellation of its
            gradient (`MAG(g)/||g||`) and of its other inputs (eq. 27's basis, L-BFGS's
            pairs: `verify.harness._trajectory.subspace_condition`, `pair_condition`),
            j = 0..K-1.
        divergences: `D_0 .. D_K` of the two reference runs.
        restart_growth: `R_{i,k}` for `1 <= i < k <= K` (missing pairs count as 1); a value
            that is not finite makes the tolerance infinite.
    """
    tiny = np.finfo(np.float64).tiny
    growth = [max(float(d), tiny) / max(float(divergences[0]), tiny) for d in divergences]
    restart = {} if restart_growth is None else restart_growth
    errors = [solve_rtol(dtype, length=length, depth=depth, condition=float(c)) * float(s)
              + rounding_rtol(dtype, length=1) * float(p)
              for s, p, c in zip(step_norms, param_norms, conditions, strict=True)]

    def amplification(i: int, k: int) -> float:
        measured = float(restart.get((i, k), 1.0))
        return max(1.0, growth[k] / growth[i], measured if not math.isnan(measured) else math.inf)

    return [sum(errors[j] * amplification(j + 1, k) for j in range(k))
            for k in range(1, len(errors) + 1)]


def hoeffding_bound(range_width: float, num_samples: int, *, tests: int = 1,
                    false_positive_rate: float = FALSE_POSITIVE_RATE) -> float:
    """Threshold t with P(|mean - E| >= t) <= false_positive_rate / tests (Hoeffding).

    For i.i.d. samples confined to an interval of width `range_width`,
    `P(|mean - E| >= t) <= 2 exp(-2 N t^2 / range_width^2)`. With `tests` simultaneous
    checks (e.g. every diagonal entry) the union bound splits the rate between them.
    """
    delta = false_positive_rate / max(tests, 1)
    return range_width * math.sqrt(math.log(2.0 / delta) / (2.0 * num_samples))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of comparing an actual array with a desired one.

    Attributes:
        error: `||actual - desired||_F / scale` (inf when shapes differ or values are not finite).
        tolerance: the threshold the error was held to.
        scale: `max(||desired||_F, magnitude)`, the denominator of `error`.
        max_abs: largest entrywise absolute difference.
        where: index of that entry (a tuple), or None.
        passed: `error <= tolerance`.
        reason: why it failed without a number (shape or NaN), else "".
    """

    error: float
    tolerance: float
    scale: float
    max_abs: float
    where: tuple[int, ...] | None
    passed: bool
    reason: str = ""

    def describe(self) -> str:
        """A one-line summary of the comparison.

        For example `error 3.1e-15 <= tol 1.2e-13 (max |diff| 2e-16 at (3, 4))`.
        """
        if self.reason:
            return self.reason
        rel = "<=" if self.passed else ">"
        where = f" at {self.where}" if self.where is not None else ""
        return (f"error {self.error:.2e} {rel} tol {self.tolerance:.2e} "
                f"(max |diff| {self.max_abs:.2e}{where})")


def compare(actual, desired, *, tolerance: float, magnitude: float = 0.0) -> Comparison:
    """Compare `actual` (from the code under test) with `desired` (from the reference).

    Asymmetric like `numpy.testing.assert_allclose`: the scale comes from `desired` and the
    computation's `magnitude`, never from `actual`, so a wildly wrong answer cannot enlarge
    its own tolerance.

    Args:
        actual: anything `np.asarray` accepts.
        desired: the reference values.
        tolerance: from `rounding_rtol`, `solve_rtol`, ... (relative to the scale).
        magnitude: `MAG` of the computation (see module docstring); 0 to use `||desired||`.
    """
    desired = np.asarray(desired, dtype=np.float64)
    try:
        actual = np.asarray(actual, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return Comparison(math.inf, tolerance, 0.0, math.inf, None, False,
                          f"result is not numeric ({type(actual).__name__}: {exc})")
    if actual.shape != desired.shape:
        return Comparison(math.inf, tolerance, 0.0, math.inf, None, False,
                          f"wrong shape: got {actual.shape}, expected {desired.shape}")
    if not np.all(np.isfinite(actual)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(actual))[0]) if actual.ndim else None
        return Comparison(math.inf, tolerance, 0.0, math.inf, bad, False,
                          f"non-finite value in result (first at {bad})")
    scale = max(float(np.linalg.norm(desired)), float(magnitude), np.finfo(np.float64).tiny)
    diff = np.abs(actual - desired)
    error = float(np.linalg.norm(diff)) / scale
    where = (tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
             if diff.size and diff.ndim else None)
    return Comparison(error, tolerance, scale, float(diff.max()) if diff.size else 0.0, where,
                      error <= tolerance)
