"""What the identity modules share: deterministic defaults, magnitudes and tolerances.

Every tolerance here is the float64 `TolerancePolicy` of the problem (`verify._policy`), the
same object the harness uses:

* `exact_rtol(problem)` -- two float64 computations of the same exact quantity:
  `TolerancePolicy.rtol` (length `max(n, B C)`, depth L + 2), relative to the computation's
  magnitude;
* magnitudes (`gauss_newton_magnitude`, `middle_magnitudes`) are the policy's one magnitude
  model (the same formula evaluated on absolute values, e.g. `c sum_b ||J_b||^2 ||MAG(M_b)||`
  for `c sum_b J_b^T M_b J_b`); `magnitude` is the sum of the norms of the terms of a sum.

Defaults of identities that take a damping, a vector or a reparameterization are drawn from
a generator seeded by the problem's name and the purpose (`problem_rng`), so a rerun, a
report and a test all see the same numbers.
"""

from __future__ import annotations

import zlib

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import DenseCurvature, dense
from verify._policy import tolerance_policy
from verify._report import CheckResult, Status

__all__ = [
    "at_most",
    "default_damping",
    "default_direction",
    "exact_rtol",
    "gauss_newton_magnitude",
    "magnitude",
    "middle_magnitudes",
    "problem_rng",
    "reference",
    "smooth_along",
]


def reference(problem: Problem) -> DenseCurvature:
    """The cached float64 dense reference of `problem`."""
    return dense(problem)


def problem_rng(problem: Problem, purpose: str) -> np.random.Generator:
    """A generator seeded by the problem's name and `purpose` (deterministic across runs)."""
    return np.random.default_rng([zlib.crc32(problem.name.encode()), zlib.crc32(purpose.encode())])


def default_direction(problem: Problem, purpose: str = "direction") -> np.ndarray:
    """A unit vector in parameter space with i.i.d. Gaussian entries, seeded by the problem."""
    v = problem_rng(problem, purpose).standard_normal(problem.n_params)
    return v / np.linalg.norm(v)


def default_damping(problem: Problem, purpose: str = "damping") -> float:
    """`lambda = 2^u * sum_i |nu_i(G)| / n` with `u` uniform in [-2, 2], seeded by the problem.

    Scaled by the mean absolute eigenvalue of the GGN (`tr(G) / n` when G is PSD) so that the
    damping is neither negligible nor dominant whatever the problem's scale. Not `tr(G)`: for
    `gaussian_logvar` G is indefinite and its trace can be negative or cancel to ~0 (seed 1
    quick #202: `tr G = -4e-3` while `||F|| = 10`, which left `F + 1e-299 I` singular).
    Floored at the smallest normal float64 times n so a vanishing GGN (dead ReLUs) still gets
    a positive damping.
    """
    ggn = reference(problem).ggn
    mean_eig = max(float(np.abs(np.linalg.eigvalsh(ggn)).sum()) / problem.n_params,
                   1e-300 * problem.n_params)
    return float(2.0 ** problem_rng(problem, purpose).uniform(-2.0, 2.0) * mean_eig)


def exact_rtol(problem: Problem) -> float:
    """Tolerance of a float64 identity between two exact computations of one quantity."""
    return tolerance_policy(problem, "float64").rtol


def solve_tolerance(problem: Problem, condition: float, *, length: int | None = None,
                    depth: int | None = None) -> float:
    """The float64 policy's `TolerancePolicy.solve_rtol` for a solve of condition `condition`.

    The default `length` is `n` (the longest sum of an `n x n` parameter-space solve; the
    problem's own sums are in the magnitudes behind `condition`), the default `depth` the
    policy's `L + 2`; pass the system's own for other systems (a K-FAC block, output space).
    """
    return tolerance_policy(problem, "float64").solve_rtol(
        condition, length=problem.n_params if length is None else length, depth=depth)


def middle_magnitudes(ref: DenseCurvature) -> np.ndarray:
    """`MAG` of each example's output-space middle matrix, `(B,)` (`TolerancePolicy.middle_norms`).

    Includes the saturation floor of softmax / sigmoid outputs (`diag(p) - p p^T` and
    `p (1 - p)` cancel when the probabilities saturate).
    """
    return tolerance_policy(ref.problem, "float64").middle_norms


def gauss_newton_magnitude(ref: DenseCurvature, middles: np.ndarray | None = None) -> float:
    """`MAG(c sum_b J_b^T M_b J_b)` (`TolerancePolicy.gauss_newton_magnitude`)."""
    return tolerance_policy(ref.problem, "float64").gauss_newton_magnitude(middles)


def magnitude(*terms: np.ndarray | float) -> float:
    """Sum of the Frobenius norms of the terms of a sum (the MAG of adding them)."""
    return float(sum(np.linalg.norm(np.asarray(t, dtype=np.float64)) for t in terms))


def at_most(name: str, problem: Problem, value: float, bound: float, what: str, source: str,
            *, negative_control: bool = False) -> CheckResult:
    """A result for an inequality `value <= bound` (error = value, tolerance = bound).

    Used where the theorem is an inequality (a sign, a bound, a convergence order) rather than
    an equality; `negative_control` files it under that capability, like `separated`.
    """
    held = bool(value <= bound)
    status = Status.PASS if held else Status.FAIL
    rel = "<=" if held else ">"
    return CheckResult(name, "negative_control" if negative_control else "identity", problem.name,
                       status, float(value), float(bound),
                       f"{what} [{source}]: {value:.3e} {rel} {bound:.3e}")


def smooth_along(problem: Problem, direction: np.ndarray, step: float) -> bool:
    """Whether h is smooth on `theta + t d`, `|t| <= step`: no ReLU pre-activation meets 0.

    A kinked activation (`ActivationSpec.smooth` false: ReLU) is not differentiable at
    `s = 0` (the reference, like JAX, takes `phi'(0) = 0`), so a
    Taylor expansion or a difference quotient through `theta +- t d` -- of h, of the outputs,
    of the KL -- measures the theorem only where every ReLU pre-activation keeps its sign:
    `|s| > 2 step |(ds/dtheta) d|` (the first-order reach, doubled for the higher orders at
    the steps used, `<= 2^-16` relative to the output scale). A pre-activation exactly 0
    never qualifies: dyadic data make it possible (seed 9 #143 has one, and its KL
    coefficient, output differences and second difference of h missed by 1e-2 to 1e6).
    With `step = 0` this is differentiability at theta itself.
    """
    ref = reference(problem)
    for index, layer in enumerate(problem.layers):
        if layer.phi.smooth:
            continue
        for trace in ref.traces:
            s = np.abs(np.asarray(trace.s[index], dtype=np.float64))
            rate = np.abs(np.asarray(trace.ds[index], dtype=np.float64) @ direction)
            if np.any(s <= 2.0 * step * rate):
                return False
    return True
