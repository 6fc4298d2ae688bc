"""Steepest descent in a metric: the natural gradient and the |H| step (Martens s6; seed 004).

For a positive definite metric M, the minimizer of the linear model `g^T d` over the ellipsoid
`{d : d^T M d <= r^2}` is `d* = -r M^{-1} g / ||g||_{M^{-1}}` (Cauchy-Schwarz in the M inner
product: `g^T e >= -||g||_{M^{-1}} ||e||_M`, with equality iff `e` is a positive multiple of
`-M^{-1} g`). Two instances from the seeds:

* `natural_gradient_steepest_in_kl` -- `M = F + lambda I`: the second-order KL (Martens s6,
  eq. after "distance function"; seed 000's proximal derivation; seed 001) plus a Euclidean
  proximity term, so the damped natural gradient `-(F + lambda I)^{-1} g` is the steepest
  descent direction in (damped) distribution space. Negative control: the Euclidean steepest
  direction `-g`, scaled to the same M-length, decreases the model less, by
  `1 - ||g||^2 / (||g||_M ||g||_{M^{-1}})` relative (Kantorovich), where that is detectable.
* `absolute_hessian_step_steepest` -- `M = |H| + lambda I` (seed 004 "Trust Region Newton": the
  solution of the |H|-constrained problem "is the same as Newton's method" with |H|).
  `absolute_hessian_dominates` checks `|H| >= H` and `|H| >= -H` in the Loewner order (both
  `|H| -+ H = 2 Q max(-+nu, 0) Q^T`), and, where H is indefinite, that `|H| != H` detectably.
  Negative control `absolute_hessian_step_not_sign_preserving`: seed 004 says the |H| step
  keeps "the sign of the gradient"; only `g^T d < 0` holds (`trust_region_step_is_descent`),
  not `sign(d_i) = -sign(g_i)` per parameter.

Tolerances: `solve_rtol` with `kappa(M)` for everything computed through `M^{-1}`, relative to
`|g^T d*|`; the Loewner checks use `exact_rtol MAG(H)` (the policy's Hessian magnitude).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import absolute_hessian, trust_region_update
from verify._policy import tolerance_policy
from verify._tolerance import compare
from verify.identities._common import (
    at_most,
    default_damping,
    exact_rtol,
    problem_rng,
    reference,
    solve_tolerance,
)
from verify.identities._registry import detectable, identity, result

__all__ = [
    "absolute_hessian_dominates",
    "absolute_hessian_step_not_sign_preserving",
    "absolute_hessian_step_steepest",
    "euclidean_gradient_not_steepest_in_kl",
    "natural_gradient_steepest_in_kl",
]

MARTENS = "Martens s6 (seed 003); seeds 000/001 (KL proximal step)"
SEED = "seed 004 'Trust Region Newton'"
#: Seeded Gaussian competitors of the steepest-descent checks (besides -g).
COMPETITORS = 3


def _solve_tol(problem: Problem, metric: np.ndarray) -> float:
    return solve_tolerance(problem, float(np.linalg.cond(metric)))


def _natural_metric(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """`(M, d*)`: `M = F + lambda I` and the damped natural gradient `-(F + lambda I)^{-1} g`."""
    ref = reference(problem)
    lam = default_damping(problem, "steepest")
    return ref.fisher + lam * np.eye(problem.n_params), ref.damped_update("fisher", lam)


def _absolute_metric(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """`(M, d*)`: `M = |H| + lambda I` and the |H| step (`trust_region_update`)."""
    ref = reference(problem)
    lam = default_damping(problem, "steepest")
    metric = absolute_hessian(ref.hessian) + lam * np.eye(problem.n_params)
    return metric, np.asarray(trust_region_update(problem, lam), dtype=np.float64)


def _steepest(name: str, problem: Problem, metric: np.ndarray, step: np.ndarray, source: str):
    """`g^T d* = -||d*||_M^2` and `g^T e >= g^T d*` for competitors `e` of the same M-length."""
    g = reference(problem).gradient
    value = float(g @ step)
    length = float(step @ metric @ step)
    tol = _solve_tol(problem, metric)
    mag = float(np.linalg.norm(g) * np.linalg.norm(step)
                + np.linalg.norm(metric) * np.linalg.norm(step) ** 2)
    out = [result(name, problem, compare(value, -length, tolerance=tol, magnitude=mag),
                  "g^T d* = -d*^T M d* (d* = -M^{-1} g)", source)]
    rng = problem_rng(problem, name)
    competitors = [("-g", -g)] + [(f"seeded e{k}", rng.standard_normal(problem.n_params))
                                  for k in range(COMPETITORS)]
    for what, e in competitors:
        e = e * np.sqrt(length / float(e @ metric @ e))
        out.append(at_most(name, problem, (value - float(g @ e)) / abs(value), tol,
                           f"{what} on the same M-ellipsoid: (g^T d* - g^T e) / |g^T d*|", source))
    return out


def _has_gradient(problem: Problem) -> bool:
    return bool(np.any(reference(problem).gradient != 0))


@identity("natural_gradient_steepest_in_kl", source=MARTENS,
          statement="-(F + lambda I)^{-1} g minimizes g^T d over d^T (F + lambda I) d <= r^2 "
                    "(steepest descent in the second-order KL)", applies=_has_gradient)
def natural_gradient_steepest_in_kl(problem: Problem):
    """Cauchy-Schwarz in the damped Fisher metric (module docstring)."""
    metric, step = _natural_metric(problem)
    return _steepest("natural_gradient_steepest_in_kl", problem, metric, step, MARTENS)


def _kantorovich_gap(problem: Problem) -> float:
    """`1 - ||g||^2 / (||g||_M ||g||_{M^{-1}})` from M's eigendecomposition."""
    metric, _ = _natural_metric(problem)
    values, vectors = np.linalg.eigh(metric)
    c = vectors.T @ reference(problem).gradient
    ratio = float(c @ c) / np.sqrt(float(np.sum(values * c * c) * np.sum(c * c / values)))
    return 1.0 - ratio


@identity("euclidean_gradient_not_steepest_in_kl", source=MARTENS, negative_control=True,
          statement="-g on the same (F + lambda I)-ellipsoid decreases g^T d less than the "
                    "natural gradient, where the Kantorovich gap is detectable",
          applies=lambda p: _has_gradient(p) and detectable(
              _kantorovich_gap(p), _solve_tol(p, _natural_metric(p)[0])))
def euclidean_gradient_not_steepest_in_kl(problem: Problem):
    """Negative control: the Euclidean steepest direction is not steepest in the KL metric."""
    metric, step = _natural_metric(problem)
    g = reference(problem).gradient
    value = float(g @ step)
    e = -g * np.sqrt(float(step @ metric @ step) / float(g @ metric @ g))
    gap = (float(g @ e) - value) / abs(value)
    return at_most("euclidean_gradient_not_steepest_in_kl", problem, -gap,
                   -100 * _solve_tol(problem, metric),
                   f"-(g^T e_(-g) - g^T d_ng) / |g^T d_ng| "
                   f"(predicted {-_kantorovich_gap(problem):.3g})",
                   MARTENS, negative_control=True)


@identity("absolute_hessian_step_steepest", source=SEED,
          statement="-(|H| + lambda I)^{-1} g minimizes g^T d over d^T (|H| + lambda I) d <= r^2",
          applies=_has_gradient)
def absolute_hessian_step_steepest(problem: Problem):
    """Seed 004's trust region with the |H| metric (module docstring)."""
    metric, step = _absolute_metric(problem)
    return _steepest("absolute_hessian_step_steepest", problem, metric, step, SEED)


@identity("absolute_hessian_dominates", source=SEED,
          statement="|H| >= H and |H| >= -H (Loewner); |H| != H where H is indefinite")
def absolute_hessian_dominates(problem: Problem):
    """`lambda_min(|H| -+ H) >= -exact_rtol MAG(H)`, and `|H| != H` for indefinite H."""
    ref = reference(problem)
    absolute = absolute_hessian(ref.hessian)
    mag = float(np.linalg.norm(tolerance_policy(problem, "float64").matrix_magnitude("hessian")))
    tol = exact_rtol(problem)
    out = [at_most("absolute_hessian_dominates", problem,
                   -float(np.linalg.eigvalsh(absolute - sign * ref.hessian)[0]) / mag, tol,
                   f"-lambda_min(|H| {'-' if sign > 0 else '+'} H) / MAG(H)", SEED)
           for sign in (1.0, -1.0)]
    lowest = float(np.linalg.eigvalsh(ref.hessian)[0])
    if detectable(-2.0 * lowest / mag, tol):
        out.append(at_most("absolute_hessian_dominates", problem,
                           -float(np.linalg.norm(absolute - ref.hessian, 2)) / mag,
                           -100 * tol, "-||(|H| - H)||_2 / MAG(H): |H| != H (H indefinite)",
                           SEED, negative_control=True))
    return out


def _sign_flip(problem: Problem) -> float:
    """`max_i g_i d_i / (||g|| ||d||)` for the |H| step, from H's eigendecomposition."""
    ref = reference(problem)
    lam = default_damping(problem, "steepest")
    values, vectors = np.linalg.eigh(ref.hessian)
    g = ref.gradient
    d = -vectors @ ((vectors.T @ g) / (np.abs(values) + lam))
    return float(np.max(g * d)) / float(np.linalg.norm(g) * np.linalg.norm(d))


@identity("absolute_hessian_step_not_sign_preserving", source=SEED, negative_control=True,
          statement="the |H| step does not keep sign(d_i) = -sign(g_i) per parameter (only "
                    "g^T d < 0 holds), where a flipped component is detectable",
          applies=lambda p: _has_gradient(p) and detectable(
              _sign_flip(p), _solve_tol(p, _absolute_metric(p)[0])))
def absolute_hessian_step_not_sign_preserving(problem: Problem):
    """Negative control of seed 004's 'the sign of the gradient remains the same'."""
    metric, step = _absolute_metric(problem)
    g = reference(problem).gradient
    flip = float(np.max(g * step)) / float(np.linalg.norm(g) * np.linalg.norm(step))
    return at_most("absolute_hessian_step_not_sign_preserving", problem, -flip,
                   -100 * _solve_tol(problem, metric),
                   "-max_i g_i d_i / (|g| |d|): some parameter moves along its gradient", SEED,
                   negative_control=True)
