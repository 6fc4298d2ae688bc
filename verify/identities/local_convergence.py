"""Newton's local quadratic convergence, and the linear rate of its damped and first-order kin.

Theorem (Grosse ch. 4 s1-2, seed 002: Newton's method "converges quadratically" near a
nondegenerate minimum; Nocedal & Wright Thm 3.5; Boyd & Vandenberghe s9.5.3): if `H` is
L-Lipschitz and `H(theta_k)` positive definite, the Newton step from `theta_k` has

    e_{k+1} = H_k^{-1} int_0^1 (H_k - H(theta* + t e_k)) e_k dt,
    ||e_{k+1}|| <= L / (2 mu_k) ||e_k||^2,    mu_k = lambda_min(H(theta_k)),

since `||H_k - H(theta* + t e_k)|| <= L (1 - t) ||e_k||`. The constant is derived from the
problem, not fitted:

* the objective is the problem's **convex twin** -- one affine layer on the problem's last
  hidden activations (as `damping.quadratic_twin`) with sigmoid cross-entropy, targets the
  signs of the quadratic twin's, plus a ridge `nu/2 ||theta||^2`, `nu = ||H_twin||_2 / 4`
  (strongly convex: `mu >= nu`);
* `H(theta) = c sum_b J_b^T diag(p_b (1 - p_b)) J_b + nu I` with `J_b` constant (affine
  network) and `|d/dz p (1 - p)| = |p (1 - p)(1 - 2 p)| <= 1 / (6 sqrt 3)`, so
  `L = c sum_b ||J_b||_2 ||J_b||_{2->inf}... <= c sum_b ||J_b||_2^3 / (6 sqrt 3)`
  (`||diag(a) - diag(a')||_2 = max |a_c - a'_c| <= ||z - z'||_inf / (6 sqrt 3)` and
  `||J_b d||_inf <= ||J_b||_2 ||d||`).

`theta*` is found by Newton with backtracking (strongly convex: global; full steps once the
predicted decrease is below h's rounding, where a line search would stall), the run starts at
`theta_0 = theta* + r u` (seeded unit u, `r = mu* / (2 L)`: inside the region where
`L r / mu_0 <= 1`), and every step with `C_k ||e_k||^2` above the rounding `delta_k` is checked
(`delta_k`: the solve's tolerance times `||d_k||` plus the gradient's rounding `exact_rtol
||MAG(g)|| / mu_k`, plus the error of `theta*`, `<= (||g(theta*)|| + rounding) / mu*`).

Negative control (`damped_newton_and_gradient_descent_converge_linearly`): Newton with a fixed
damping `lambda = mu*` (Grosse s2.1: the damped step is `(H + lambda I)^{-1} g`, which
contracts `e` only by `lambda / (lambda + nu_i)` per step) and gradient descent with step
`1 / lambda_max(H*)` (rate `1 - mu/L_H`) from the same `theta_0`: each misses the quadratic
bound by more than `MARGIN` rounding allowances at some step (a linear method's
`e_{k+1} ~ rho e_k` exceeds `C e_k^2` once `e_k < rho / C`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import DenseCurvature, get_loss
from verify._report import CheckResult
from verify.identities._common import (
    at_most,
    default_direction,
    exact_rtol,
    reference,
    solve_tolerance,
)
from verify.identities._registry import MARGIN, identity
from verify.identities.damping import quadratic_twin

__all__ = ["ConvexTwin", "Step", "convex_twin", "newton_run", "newton_update"]

SOURCE = ("Grosse ch.4 s1-2 (seed 002); Nocedal & Wright Thm 3.5; "
          "Boyd & Vandenberghe s9.5.3")
#: `max |d/dz sigma(z)(1 - sigma(z))|`, attained at `sigma = (3 +- sqrt 3) / 6`
SIGMOID_CURVATURE_LIPSCHITZ = 1.0 / (6.0 * math.sqrt(3.0))
_MAX_ITERATIONS = 60


@dataclasses.dataclass(frozen=True)
class ConvexTwin:
    """The ridge-regularized convex twin of a problem and its derived constants.

    Attributes:
        problem: the one-layer sigmoid cross-entropy problem.
        ridge: `nu`.
        lipschitz: `L`, a Lipschitz constant of the Hessian (module docstring).
        minimum: `theta*`.
        mu: `lambda_min(H(theta*))`.
    """

    problem: Problem
    ridge: float
    lipschitz: float
    minimum: np.ndarray
    mu: float

    def at(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """`(grad h + nu theta, H + nu I, exact_rtol ||MAG(g)||)` at theta.

        `MAG(g) = c sum_b |J_b|^T MAG(dL/dz_b) + nu |theta|` (the policy's magnitude model:
        `OutputLoss.grad_magnitude` on absolute values).
        """
        ref = DenseCurvature(self.problem, params=theta)
        loss = get_loss(self.problem.loss)
        mags = np.stack([loss.grad_magnitude(y, z) for y, z in zip(
            ref.targets, ref.outputs, strict=True)])
        jac = np.abs(np.asarray(ref.jacobians, dtype=np.float64))
        mag = abs(float(ref.c)) * np.einsum("bcn,bc->n", jac, mags) + self.ridge * np.abs(theta)
        return (ref.gradient + self.ridge * theta,
                ref.hessian + self.ridge * np.eye(theta.shape[0]),
                exact_rtol(self.problem) * float(np.linalg.norm(mag)))


def _objective(problem: Problem, theta: np.ndarray, ridge: float) -> float:
    return float(DenseCurvature(problem, params=theta).loss) + 0.5 * ridge * float(theta @ theta)


@functools.lru_cache(maxsize=16)
def convex_twin(problem: Problem) -> ConvexTwin:
    """The convex twin, its ridge, L and minimum (module docstring)."""
    quad = quadratic_twin(problem)
    twin = quad.replace(name=f"{problem.name}/convex", loss="sigmoid_cross_entropy",
                        targets=(np.asarray(quad.targets) > 0).astype(np.float64))
    ref = reference(twin)
    ridge = max(float(np.linalg.norm(ref.hessian, 2)) / 4, 1e-3)
    jac = np.asarray(ref.jacobians, dtype=np.float64)
    lipschitz = abs(float(ref.c)) * SIGMOID_CURVATURE_LIPSCHITZ * float(
        sum(np.linalg.norm(j, 2) ** 3 for j in jac))
    theta = np.asarray(twin.params, dtype=np.float64)
    partial = ConvexTwin(twin, ridge, lipschitz, theta, ridge)
    resolution = 2.0**-40  # a decrease of h below this (relative) is rounding: no line search
    for _ in range(_MAX_ITERATIONS):  # Newton with Armijo backtracking: global here
        g, hess, _ = partial.at(theta)
        step = -np.linalg.solve(hess, g)
        t, h0 = 1.0, _objective(twin, theta, ridge)
        if -float(g @ step) > resolution * (abs(h0) + 1.0):
            while t > 2.0**-30 and _objective(twin, theta + t * step, ridge) > h0 + 0.25 * t * (
                    g @ step):
                t /= 2
        theta = theta + t * step
        if t == 1.0 and np.linalg.norm(step) <= 1e-15 * (1 + np.linalg.norm(theta)):
            break
    mu = float(np.linalg.eigvalsh(partial.at(theta)[1])[0])
    return ConvexTwin(twin, ridge, lipschitz, theta, mu)


@dataclasses.dataclass(frozen=True)
class Step:
    """One measured step: `||e_k||`, `||e_{k+1}||`, `mu_k`, and the rounding `delta_k`."""

    error: float
    next_error: float
    mu: float
    rounding: float


#: `(theta, gradient, Hessian) -> step` of a method under test
Update = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def newton_run(twin: ConvexTwin, update: Update, start: np.ndarray, steps: int, *,
               stop: Callable[[Step], bool] = lambda step: False) -> list[Step]:
    """Iterate `theta <- theta + update(theta, g, H)` from `start`, recording each step.

    `delta_k` is the solve's tolerance (condition of `H_k`) times `||d_k||`, plus the
    gradient's rounding over `mu_k`, plus the error of `theta*`, at most
    `(||g(theta*)|| + its rounding) / mu*` by strong convexity. Stops early where `stop(step)`.
    """
    theta, out = start, []
    # strong convexity: ||theta* - theta_true|| <= ||g(theta*)|| / mu (g's rounding included)
    g_star, _, g_star_rounding = twin.at(twin.minimum)
    star_rounding = max(exact_rtol(twin.problem) * float(np.linalg.norm(twin.minimum)),
                        (float(np.linalg.norm(g_star)) + g_star_rounding) / twin.mu)
    for _ in range(steps):
        g, h, g_rounding = twin.at(theta)
        values = np.linalg.eigvalsh(h)
        d = update(theta, g, h)
        rounding = (solve_tolerance(twin.problem, float(values[-1] / values[0]),
                                    length=start.shape[0], depth=3) * float(np.linalg.norm(d))
                    + g_rounding / float(values[0]) + star_rounding)
        nxt = theta + d
        out.append(Step(float(np.linalg.norm(theta - twin.minimum)),
                        float(np.linalg.norm(nxt - twin.minimum)), float(values[0]), rounding))
        theta = nxt
        if stop(out[-1]):
            break
    return out


def newton_update(theta: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The undamped Newton step `-H^{-1} g`."""
    return -np.linalg.solve(h, g)


def _start(problem: Problem, twin: ConvexTwin) -> np.ndarray:
    radius = twin.mu / (2 * twin.lipschitz)
    return twin.minimum + radius * default_direction(twin.problem, "newton-quadratic")


def _constant(twin: ConvexTwin, step: Step) -> float:
    return twin.lipschitz / (2 * step.mu)


def _applies(problem: Problem) -> bool:
    return not problem.layers[-1].is_convolution  # the twin reads a dense input


@identity("newton_converges_quadratically", source=SOURCE, applies=_applies,
          statement="near the minimum of a strongly convex objective (the problem's ridge "
                    "sigmoid twin) ||e_{k+1}|| <= L / (2 mu_k) ||e_k||^2 with L, mu_k derived "
                    "from the problem, at every step above rounding")
def newton_converges_quadratically(problem: Problem) -> list[CheckResult]:
    """Each Newton step whose predicted error is above rounding meets the quadratic bound."""
    twin = convex_twin(problem)
    steps = newton_run(twin, lambda t, g, h: newton_update(t, g, h), _start(problem, twin), 6,
                       stop=lambda step: _constant(twin, step) * step.error**2 <= step.rounding)
    out = []
    for k, step in enumerate(steps):
        bound = _constant(twin, step) * step.error**2
        if bound <= step.rounding:
            break
        out.append(at_most("newton_converges_quadratically", problem,
                           step.next_error - step.rounding, bound,
                           f"step {k}: ||e_(k+1)|| - delta vs L/(2 mu_k) ||e_k||^2 "
                           f"(||e_k|| = {step.error:.2e}, L = {twin.lipschitz:.3g}, "
                           f"mu_k = {step.mu:.3g})", SOURCE))
    if not out:
        out.append(at_most("newton_converges_quadratically", problem, 1.0, 0.0,
                           "no step with L/(2 mu) ||e_0||^2 above rounding: nothing measured "
                           f"(r = {twin.mu / (2 * twin.lipschitz):.2e})", SOURCE))
    return out


def _excess(twin: ConvexTwin, step: Step) -> float:
    """`(||e_(k+1)|| - C_k ||e_k||^2) / delta_k`: how far a step misses the quadratic bound."""
    return (step.next_error - _constant(twin, step) * step.error**2) / step.rounding


def _linear_miss(problem: Problem, twin: ConvexTwin, steps: list[Step], what: str
                 ) -> CheckResult:
    """Pass iff some step exceeds the quadratic bound plus `MARGIN` rounding allowances."""
    k, step = max(enumerate(steps), key=lambda item: _excess(twin, item[1]))
    best = _excess(twin, step)
    return at_most("damped_newton_and_gradient_descent_converge_linearly", problem,
                   -best, -MARGIN,
                   f"{what}, step {k}: (||e_(k+1)|| - L/(2 mu_k) ||e_k||^2) / delta "
                   f"(||e_k|| = {step.error:.2e}, ||e_(k+1)|| = {step.next_error:.2e})",
                   SOURCE, negative_control=True)


@identity("damped_newton_and_gradient_descent_converge_linearly", source=SOURCE,
          applies=_applies, negative_control=True,
          statement="damped Newton (fixed lambda = mu*) and gradient descent (step "
                    "1/lambda_max) from the same start exceed the quadratic bound by > 100 "
                    "rounding allowances: their rate is linear")
def damped_newton_and_gradient_descent_converge_linearly(problem: Problem) -> list[CheckResult]:
    """Negative control: the same bound fails for linearly converging methods."""
    twin = convex_twin(problem)
    start = _start(problem, twin)
    lam = twin.mu
    eye = np.eye(start.shape[0])
    top = float(np.linalg.eigvalsh(twin.at(twin.minimum)[1])[-1])

    def missed(step: Step) -> bool:
        return _excess(twin, step) > 2 * MARGIN

    damped = newton_run(twin, lambda t, g, h: -np.linalg.solve(h + lam * eye, g), start, 40,
                        stop=missed)
    descent = newton_run(twin, lambda t, g, h: -g / top, start, 40, stop=missed)
    return [_linear_miss(problem, twin, damped, f"damped Newton (lambda = {lam:.3g})"),
            _linear_miss(problem, twin, descent, f"gradient descent (step 1/{top:.3g})")]
