"""Descent directions (Grosse ch. 4 s2.1 eq. (6), seed 002).

For a positive definite `A`, `v = -A g` has `g^T v = -g^T A g < 0` (eq. (6)), so a small enough
step decreases the loss. With `A = (C + lambda I)^{-1}`, `C` in {G, F, EF} PSD and
`lambda > 0`, every damped Gauss-Newton / natural-gradient / empirical-Fisher step descends
(Grosse s2.1 and its footnote on pullback metrics). Negative control: at a point where `H` has
an eigenvalue `nu_1 < 0`, any `0 < lambda < -nu_1` leaves `H + lambda I` indefinite, and with
`lambda` just below `-nu_1` the term `(q_1^T g)^2 / (nu_1 + lambda)` dominates
`g^T (H + lambda I)^{-1} g`, so the damped Newton step *ascends* and a small step increases
the loss.

Tolerances: the sign of `g^T d` is resolved when `|g^T d| > exact_rtol |g| |d|` (the rounding
of the inner product and the solve); the loss decrease is checked by backtracking
`t = 2^-k`, `k = 0..MAX_HALVINGS`, until `h(theta + t d) - h(theta) <= t g^T d / 2` (Armijo with
constant 1/2, which must succeed for a descent direction as t -> 0), with h evaluated in
mpmath so that the decrease is resolved however flat the loss.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import mp_backend
from verify.identities._common import (
    at_most,
    default_damping,
    exact_rtol,
    magnitude,
    reference,
)
from verify.identities._registry import identity
from verify.identities.fisher import mp_loss

__all__ = ["ascent_damping", "damped_steps_descend", "first_armijo_step",
           "small_damping_newton_ascends"]

SOURCE = "Grosse ch.4 s2.1 eq. (6) (seed 002)"
#: Steps 1, 1/2, ..., 2^-MAX_HALVINGS, evaluated in mpmath at ARMIJO_DIGITS digits so that even
#: a nearly flat loss (saturated outputs: |g^T d| ~ 1e-12) resolves its first-order decrease.
MAX_HALVINGS = 60
ARMIJO_DIGITS = 40
#: The step of the ascent demonstration: `t |g^T d| ~ 2^-40 |g||d|` is far above mpmath's
#: rounding (1e-40) and far below the second-order term's reach for the zoo's curvatures.
ASCENT_EXPONENT = 40


def first_armijo_step(problem: Problem, step: np.ndarray, slope: float) -> float | None:
    """Largest `t = 2^-k` with `h(theta + t d) - h(theta) <= t slope / 2` (mpmath), or None."""
    bk = mp_backend(ARMIJO_DIGITS)
    with bk.precision():
        theta, d = bk.asarray(problem.params), bk.asarray(step)
        base = mp_loss(problem, theta, bk)
        for k in range(MAX_HALVINGS + 1):
            t = bk.scalar(2) ** -k
            if mp_loss(problem, theta + t * d, bk) - base <= t * bk.scalar(slope) / 2:
                return 2.0**-k
    return None


@identity("damped_steps_descend", source=SOURCE,
          statement="-(C + lambda I)^{-1} g descends for C in {G, F, EF}, lambda > 0",
          applies=lambda p: bool(np.any(reference(p).gradient != 0)))
def damped_steps_descend(problem: Problem, *, damping: float | None = None):
    """`g^T d < 0` and an Armijo step exists, for each damped PSD-curvature step (eq. (6)).

    Args:
        problem: the problem (hypothesis: `grad h != 0`).
        damping: `lambda > 0`, default `default_damping(problem)`.
    """
    lam = default_damping(problem) if damping is None else damping
    ref = reference(problem)
    g = ref.gradient
    out = []
    for curvature in ("ggn", "fisher", "empirical_fisher"):
        if curvature == "ggn" and problem.loss == "gaussian_logvar":
            continue  # G is not PSD for a non-convex loss (see definiteness)
        d = ref.damped_update(curvature, lam)
        cosine = float(g @ d) / (float(np.linalg.norm(g) * np.linalg.norm(d)))
        out.append(at_most("damped_steps_descend", problem, cosine, -exact_rtol(problem),
                           f"{curvature}: cos(g, d) (lambda={lam:.3g})", SOURCE))
        t = first_armijo_step(problem, d, float(g @ d))
        out.append(at_most("damped_steps_descend", problem, 0.0 if t else 1.0, 0.0,
                           f"{curvature}: a step t = {t} decreases h (0 = found)", SOURCE))
    return out


def ascent_damping(problem: Problem) -> float | None:
    """A `lambda` in (0, -nu_1) making the damped Newton step ascend, or None if H is PSD.

    `lambda = -nu_1 - eps` with `eps = min(gap / 2, -nu_1 / 2, (q_1^T g)^2 / (4 S))`, where
    `gap = nu_2 - nu_1` and `S = sum_{i>1} (q_i^T g)^2 / max(nu_i - nu_1, gap)`. Each other
    eigenvalue of `H + lambda I` is `nu_i - nu_1 - eps >= (nu_i - nu_1) / 2`, so
    `g^T (H + lambda I)^{-1} g <= -(q_1^T g)^2 / eps + 2 S <= -2 S < 0` (or `-(q_1^T g)^2/eps`
    alone when S = 0).
    """
    ref = reference(problem)
    nu, q = np.linalg.eigh(ref.hessian)
    mag = magnitude(ref.ggn, ref.hessian - ref.ggn)
    coeffs = q.T @ ref.gradient
    if nu[0] >= -exact_rtol(problem) * mag or coeffs[0] ** 2 <= (exact_rtol(problem) * mag) ** 2:
        return None
    gaps = nu[1:] - nu[0]
    gap = float(gaps[gaps > 0].min()) if np.any(gaps > 0) else -float(nu[0])
    others = float(np.sum(coeffs[1:] ** 2 / np.maximum(gaps, gap)))
    eps = min(gap / 2, -float(nu[0]) / 2, float(coeffs[0] ** 2) / (4 * max(others, 1e-300)))
    return -float(nu[0]) - eps


@identity("small_damping_newton_ascends", source=SOURCE,
          statement="-(H + lambda I)^{-1} g can ascend when H is indefinite and lambda small",
          applies=lambda p: ascent_damping(p) is not None, negative_control=True)
def small_damping_newton_ascends(problem: Problem):
    """Negative control of `damped_steps_descend`: the damped Newton step with `lambda < -nu_1`."""
    lam = ascent_damping(problem)
    ref = reference(problem)
    g = ref.gradient
    d = ref.damped_update("hessian", lam)
    cosine = float(g @ d) / float(np.linalg.norm(g) * np.linalg.norm(d))
    bk = mp_backend(ARMIJO_DIGITS)
    with bk.precision():
        theta = bk.asarray(problem.params)
        t = bk.scalar(2) ** -ASCENT_EXPONENT
        rise = float(mp_loss(problem, theta + t * bk.asarray(d), bk) - mp_loss(problem, theta, bk))
    return [
        at_most("small_damping_newton_ascends", problem, -cosine, -100 * exact_rtol(problem),
                f"-cos(g, d) for H + {lam:.3g} I (indefinite)", SOURCE, negative_control=True),
        at_most("small_damping_newton_ascends", problem, -rise, 0.0,
                f"h(theta) - h(theta + t d) at t = 2^-{ASCENT_EXPONENT} in mpmath (the loss goes up)",
                SOURCE,
                negative_control=True),
    ]
