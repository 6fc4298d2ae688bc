"""Adaptive damping: reduction ratio and Levenberg-Marquardt rule (Grosse ch. 4 s4.1, seed 002).

`rho = (h(theta) - h(theta + d)) / (Q_lambda(0) - Q_lambda(d))` (eq. (14),
`ngd_ref.dense.reduction_ratio`):

* on an exactly quadratic objective with exact curvature and `lambda = 0` in the model,
  `rho = 1` for every step `d` (the model *is* the objective). Every problem supplies one:
  its `quadratic_twin`, a one-layer linear mse network on the problem's last hidden
  activations (h is then quadratic in theta and `H = G`);
* for the damped step `d = -(C + lambda I)^{-1} g`, `2 - rho = d^T H(xi) d / g^T A g` exactly
  (mean-value form, `A = (C + lambda I)^{-1}`) and `|d|^2 <= g^T A g / lambda`, so
  `|2 - rho| <= max ||H(xi)|| / lambda`: `rho -> 2` as `lambda -> inf`. We take
  `lambda = LARGE * (||H|| + ||C||)` and allow `2 ||H|| / lambda` (`H(xi)` within a factor 2 of
  `H(theta)` on so short a segment) plus the float64 rounding of the numerator;
* the Levenberg-Marquardt rule then *decreases* lambda (rho > 3/4): overly conservative steps;
* on the quadratic twin with the damped model (`C = H`, `lambda > 0`) rho is known exactly
  for every multiple `k d*` of the damped step `d* = -(H + lambda I)^{-1} g`: with
  `a = 1/2 d*^T H d*`, `m = 1/2 lambda |d*|^2` and `b = -g^T d* = 2a + 2m`,

      rho(k) = (b - k a) / (b - k (a + m)),

  so `rho(1) = (a + 2m) / (a + m)` lies in `[1, 2]` (Grosse s4.1: "rho between 1 and 2 on a
  damped quadratic"), and `rho(3) = (a - 2m) / (a + m) < 1/4` whenever `a < 3 m`, which holds
  for `lambda >= ||H||_2` (`m / a >= lambda / ||H||_2`): the step overshoots the model's
  zero crossing, and the Levenberg-Marquardt rule must *increase* lambda
  (`reduction_ratio_damped_quadratic`, on `DAMPING_GRID`).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Layer, Loss, Problem
from ngd_ref.dense import levenberg_marquardt, reduction_ratio
from verify.identities._common import (
    GRADIENT_NOT_DEGENERATE,
    at_most,
    default_direction,
    exact_rtol,
    gradient_degenerate,
    problem_rng,
    reference,
    solve_tolerance,
)
from verify.identities._registry import Hypothesis, identity
from verify.identities.hessian import network_curved

__all__ = [
    "LARGE",
    "quadratic_twin",
    "DAMPING_GRID",
    "damped_quadratic_ratio",
    "reduction_ratio_damped_quadratic",
    "reduction_ratio_large_damping",
    "reduction_ratio_not_one",
    "reduction_ratio_quadratic",
]

SOURCE = "Grosse ch.4 s4.1 eq. (14) (seed 002)"
#: lambda / (||H|| + ||C||) for the large-damping limit.
LARGE = 2.0**10
#: The Levenberg-Marquardt decrease factor of Grosse s4.1 (rho > 3/4 -> lambda * 2/3).
LM_DECREASE = 2.0 / 3.0
#: The Levenberg-Marquardt increase factor (rho < 1/4 -> lambda * 3/2) and thresholds.
LM_INCREASE = 1.5
LM_LOW, LM_HIGH = 0.25, 0.75
#: lambda / ||H||_2 of `reduction_ratio_damped_quadratic`: `kappa(H + lambda I) <= 1 + 2^6`.
DAMPING_GRID = (2.0**-6, 1.0, 2.0**6)
#: Multiples k of the damped step: 1 (the model's minimizer), 3 (overshooting it).
STEP_MULTIPLES = (1.0, 3.0)


def quadratic_twin(problem: Problem) -> Problem:
    """A one-layer linear mse problem on `problem`'s last hidden activations.

    Its objective `h` is exactly quadratic.
    """
    ref = reference(problem)
    inputs = np.stack([t.abar[-1][:-1] for t in ref.traces]).astype(np.float64)
    n_in, n_out = problem.layers[-1].n_in, problem.output_dim
    rng = problem_rng(problem, "quadratic-twin")
    return Problem(f"{problem.name}/quadratic", (Layer(n_in, n_out, "identity"),), "mse",
                   np.round(rng.standard_normal((n_in + 1) * n_out) * 64) / 64, inputs,
                   np.round(rng.standard_normal((problem.batch_size, n_out)) * 16) / 16,
                   problem.reduction)


def _rho_tolerance(problem: Problem, step: np.ndarray, predicted: float) -> float:
    """Rounding of `h(theta) - h(theta + d)` relative to the predicted reduction."""
    ref = reference(problem)
    shifted = abs(float(ref.loss)) + abs(float(ref.gradient @ step)) + abs(predicted)
    return exact_rtol(problem) * (abs(float(ref.loss)) + shifted) / abs(predicted)


def _dense_last_layer(problem: Problem) -> bool:
    """The quadratic twin's scope: it reads the last layer's dense input (none for a conv)."""
    return not problem.layers[-1].is_convolution


def _twin_degenerate(problem: Problem) -> str | None:
    """Why the quadratic twin cannot carry the theorem (None where it can).

    Its steps are `-(H + lambda I)^{-1} g` of the twin: a degenerate twin gradient makes rho
    0/0. Outside the twin's scope (`_dense_last_layer`: it reads the last layer's dense input)
    the hypothesis is vacuous; `applies` leaves those problems out.
    """
    if not _dense_last_layer(problem):
        return None
    why = gradient_degenerate(quadratic_twin(problem))
    return None if why is None else f"quadratic twin: {why}"


#: the quadratic twin's gradient is resolved in float64
TWIN_GRADIENT_NOT_DEGENERATE = Hypothesis("quadratic twin's gradient not degenerate",
                                          _twin_degenerate)


@identity("reduction_ratio_quadratic", source=SOURCE,
          statement="rho = 1 on an exactly quadratic objective with exact curvature (lambda = 0)",
          applies=_dense_last_layer, hypotheses=(TWIN_GRADIENT_NOT_DEGENERATE,))
def reduction_ratio_quadratic(problem: Problem, *, direction: np.ndarray | None = None):
    """`rho(d) = 1` for `quadratic_twin(problem)`, `C = H`, undamped model, any step d."""
    twin = quadratic_twin(problem)
    d = default_direction(twin, "rho") if direction is None else np.asarray(direction, float)
    rho = float(reduction_ratio(twin, d, damping=0.0, curvature="hessian"))
    ref = reference(twin)
    predicted = -float(ref.gradient @ d + 0.5 * d @ ref.hessian @ d)
    new = levenberg_marquardt(1.0, rho)
    return [
        at_most("reduction_ratio_quadratic", problem, abs(rho - 1.0),
                _rho_tolerance(twin, d, predicted), "|rho - 1| on the quadratic twin", SOURCE),
        at_most("reduction_ratio_quadratic", problem, new, LM_DECREASE,
                f"LM rule at rho = {rho:.6f}: new/old lambda", SOURCE),
    ]


@identity("reduction_ratio_large_damping", source=SOURCE,
          hypotheses=(GRADIENT_NOT_DEGENERATE,),
          statement="rho -> 2 as lambda -> inf (|2 - rho| <= 2||H||/lambda), "
                    "and LM decreases lambda")
def reduction_ratio_large_damping(problem: Problem, *, curvature: str = "ggn"):
    """Grosse s4.1's first bullet, with the bound derived in the module docstring."""
    ref = reference(problem)
    h_norm = float(np.linalg.norm(ref.hessian, 2))
    lam = LARGE * (h_norm + float(np.linalg.norm(ref.matrix(curvature), 2)))
    d = ref.damped_update(curvature, lam)
    rho = float(reduction_ratio(problem, d, damping=lam, curvature=curvature))
    predicted = -float(ref.gradient @ d + 0.5 * d @ (ref.matrix(curvature) @ d)
                       + 0.5 * lam * d @ d)
    bound = 2.0 * h_norm / lam + _rho_tolerance(problem, d, predicted)
    new = levenberg_marquardt(lam, rho)
    return [
        at_most("reduction_ratio_large_damping", problem, abs(2.0 - rho), bound,
                f"|2 - rho| at lambda = {lam:.3g}", SOURCE),
        at_most("reduction_ratio_large_damping", problem, new / lam, LM_DECREASE,
                f"LM rule at rho = {rho:.6f}: new/old lambda", SOURCE),
    ]


@identity("reduction_ratio_not_one", source=SOURCE,
          hypotheses=(GRADIENT_NOT_DEGENERATE,),
          statement="rho != 1 for a finite step when h is not quadratic "
                    "(the model is only a model)",
          applies=lambda p: not Loss(p.loss).spec.residual or network_curved(p),
          negative_control=True)
def reduction_ratio_not_one(problem: Problem, *, direction: np.ndarray | None = None):
    """Negative control of `reduction_ratio_quadratic`: on the problem itself, `rho(d) != 1`."""
    d = default_direction(problem, "rho") if direction is None else np.asarray(direction, float)
    ref = reference(problem)
    rho = float(reduction_ratio(problem, d, damping=0.0, curvature="hessian"))
    predicted = -float(ref.gradient @ d + 0.5 * d @ ref.hessian @ d)
    return at_most("reduction_ratio_not_one", problem, -abs(rho - 1.0),
                   -100 * _rho_tolerance(problem, d, predicted),
                   "-|rho - 1| with C = H on the non-quadratic objective", SOURCE,
                   negative_control=True)


def damped_quadratic_ratio(a: float, m: float, k: float) -> float:
    """`rho(k) = (b - k a) / (b - k (a + m))`, `b = 2a + 2m` (module docstring)."""
    b = 2.0 * a + 2.0 * m
    return (b - k * a) / (b - k * (a + m))


def _lm_factor(rho: float) -> float:
    """The Levenberg-Marquardt factor the seed's rule gives at `rho`."""
    return LM_INCREASE if rho < LM_LOW else LM_DECREASE if rho > LM_HIGH else 1.0


@identity("reduction_ratio_damped_quadratic", source=SOURCE,
          statement="on a quadratic with the damped model, rho(k d*) = (b - k a)/(b - k(a + m)) "
                    "exactly: 1 <= rho(d*) <= 2, rho(3 d*) < 1/4 for lambda >= ||H|| and LM "
                    "increases lambda there (lambda / ||H|| in 2^-6, 1, 2^6)",
          applies=_dense_last_layer, hypotheses=(TWIN_GRADIENT_NOT_DEGENERATE,))
def reduction_ratio_damped_quadratic(problem: Problem):
    """Grosse s4.1 on `quadratic_twin(problem)` with `C = H` and `lambda > 0` (module docstring).

    Tolerance: `_rho_tolerance` (the numerator's rounding) plus the solve's: a relative error
    `eps = solve_rtol(kappa(H + lambda I))` in `b = -g^T d*` moves rho by at most
    `eps b (1 + |rho|) / |b - k (a + m)|`. The LM branch is checked where rho is farther than
    that tolerance from the rule's thresholds.
    """
    twin = quadratic_twin(problem)
    ref = reference(twin)
    h = ref.hessian
    norm = float(np.linalg.norm(h, 2))
    out = []
    for factor in DAMPING_GRID:
        lam = factor * norm if norm > 0 else factor
        d = ref.damped_update("hessian", lam)
        a, m = 0.5 * float(d @ h @ d), 0.5 * lam * float(d @ d)
        eps = solve_tolerance(twin, (norm + lam) / lam)
        for k in STEP_MULTIPLES:
            exact = damped_quadratic_ratio(a, m, k)
            step = k * d
            rho = float(reduction_ratio(twin, step, damping=lam, curvature="hessian"))
            predicted = -float(ref.gradient @ step + 0.5 * step @ h @ step) - m * k * k
            denominator = abs(2 * a + 2 * m - k * (a + m))
            tol = (_rho_tolerance(twin, step, predicted) * abs(exact)
                   + eps * (2 * a + 2 * m) * (1 + abs(exact)) / denominator)
            where = f"lambda = {factor:g} ||H||, step {k:g} d*"
            out.append(at_most("reduction_ratio_damped_quadratic", problem, abs(rho - exact), tol,
                               f"|rho - (b - k a)/(b - k(a + m))| ({where}; exact {exact:.6g})",
                               SOURCE))
            if k == 1.0:
                out.append(at_most("reduction_ratio_damped_quadratic", problem,
                                   max(1.0 - rho, rho - 2.0), tol,
                                   f"distance of rho = {rho:.6g} outside [1, 2] ({where})",
                                   SOURCE))
            if min(abs(exact - LM_LOW), abs(exact - LM_HIGH)) > tol:
                new = levenberg_marquardt(lam, rho)
                out.append(at_most("reduction_ratio_damped_quadratic", problem,
                                   abs(new - lam * _lm_factor(exact)), 0.0,
                                   f"LM: new lambda {new / lam:g} x at rho = {rho:.4g} ({where}; "
                                   f"rule: {_lm_factor(exact):g} x)", SOURCE))
    return out
