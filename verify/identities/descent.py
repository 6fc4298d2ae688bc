"""Descent directions (Grosse ch. 4 s2.1 eq. (6), seed 002).

For a positive definite `A`, `v = -A g` has `g^T v = -g^T A g < 0` (eq. (6)), so a small enough
step decreases the loss. With `A = (C + lambda I)^{-1}`, `C` in {G, F, EF} PSD and
`lambda > 0`, every damped Gauss-Newton / natural-gradient / empirical-Fisher step descends
(Grosse s2.1 and its footnote on pullback metrics). Negative control: at a point where `H` has
an eigenvalue `nu_1 < 0`, any `0 < lambda < -nu_1` leaves `H + lambda I` indefinite, and with
`lambda` just below `-nu_1` the term `(q_1^T g)^2 / (nu_1 + lambda)` dominates
`g^T (H + lambda I)^{-1} g`, so the damped Newton step *ascends* and a small step increases
the loss.

The sign is also checked on a damping grid, `lambda = default_damping x DAMPING_FACTORS`
(`2^-8, 2^8`: `kappa(C + lambda I) <= 1 + ||C|| / lambda`), without the Armijo search (the
statement is `g^T d < 0` for every `lambda > 0`; the Armijo step follows from it where h is
smooth, shown at the default lambda). There the cosine is held to `-solve_rtol(kappa)`, and a
grid point applies only where Kantorovich's lower bound `|cos| >= 2 sqrt(kappa) / (kappa + 1)`
exceeds 102 of those tolerances (so rounding cannot flip the computed sign).

Tolerances: the sign of `g^T d` is resolved when `|g^T d| > exact_rtol |g| |d|` (the rounding
of the inner product and the solve); the loss decrease is checked by backtracking
`t = 2^-k`, `k = 0..MAX_HALVINGS`, until `h(theta + t d) - h(theta) <= t g^T d / 2` (Armijo with
constant 1/2, which must succeed for a descent direction as t -> 0), with h evaluated in
mpmath so that the decrease is resolved however flat the loss.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import mp_backend
from verify.identities._common import (
    at_most,
    default_damping,
    exact_rtol,
    magnitude,
    reference,
    smooth_along,
    solve_tolerance,
)
from verify.identities._registry import MARGIN, detectable, identity
from verify.identities.fisher import mp_loss

__all__ = ["ascent_damping", "damped_steps_descend", "first_armijo_step",
           "small_damping_newton_ascends"]

SOURCE = "Grosse ch.4 s2.1 eq. (6) (seed 002)"
#: Steps 1, 1/2, ..., 2^-MAX_HALVINGS, evaluated in mpmath at ARMIJO_DIGITS digits so that even
#: a nearly flat loss (saturated outputs: |g^T d| ~ 1e-12) resolves its first-order decrease.
MAX_HALVINGS = 60
ARMIJO_DIGITS = 40
#: The longest step of the ascent demonstration: `t |g^T d| ~ 2^-40 |g||d|` is far above
#: mpmath's rounding (1e-40); `_ascent` shortens it where the second-order term would reach.
ASCENT_EXPONENT = 40
#: Multiples of `default_damping` of the sign-only grid (besides 1).
DAMPING_FACTORS = (2.0**-8, 2.0**8)


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
          applies=lambda p: (bool(np.any(reference(p).gradient != 0))
                             and smooth_along(p, np.zeros(p.n_params), 0.0)))
def damped_steps_descend(problem: Problem, *, damping: float | None = None):
    """`g^T d < 0` and an Armijo step exists, for each damped PSD-curvature step (eq. (6)).

    Args:
        problem: the problem (hypotheses: `grad h != 0`, h differentiable at theta: no
            ReLU pre-activation at its kink, `smooth_along` with step 0).
        damping: `lambda > 0`, default `default_damping(problem)`.
    """
    lam = default_damping(problem) if damping is None else damping
    ref = reference(problem)
    g = ref.gradient
    out = []
    for curvature in ("ggn", "fisher", "empirical_fisher"):
        if curvature == "ggn" and not Loss(problem.loss).spec.hessian_psd:
            continue  # G is not PSD for a non-convex loss (see definiteness)
        d = ref.damped_update(curvature, lam)
        cosine = float(g @ d) / (float(np.linalg.norm(g) * np.linalg.norm(d)))
        out.append(at_most("damped_steps_descend", problem, cosine, -exact_rtol(problem),
                           f"{curvature}: cos(g, d) (lambda={lam:.3g})", SOURCE))
        t = first_armijo_step(problem, d, float(g @ d))
        out.append(at_most("damped_steps_descend", problem, 0.0 if t else 1.0, 0.0,
                           f"{curvature}: a step t = {t} decreases h (0 = found)", SOURCE))
        if damping is None:
            out += _grid_signs(problem, curvature, lam)
    return out


def _grid_signs(problem: Problem, curvature: str, lam: float):
    """`cos(g, d) < 0` at `lam x DAMPING_FACTORS` (module docstring)."""
    ref = reference(problem)
    g = ref.gradient
    norm = float(np.linalg.norm(ref.matrix(curvature), 2))
    out = []
    for factor in DAMPING_FACTORS:
        damping = factor * lam
        kappa = (norm + damping) / damping
        tol = solve_tolerance(problem, kappa)
        if not detectable(2 * np.sqrt(kappa) / (kappa + 1), tol):
            continue
        d = ref.damped_update(curvature, damping)
        cosine = float(g @ d) / (float(np.linalg.norm(g) * np.linalg.norm(d)))
        out.append(at_most("damped_steps_descend", problem, cosine, -tol,
                           f"{curvature}: cos(g, d) (lambda = {factor:g} x {lam:.3g}, "
                           f"kappa <= {kappa:.3g})", SOURCE))
    return out


class _Ascent(NamedTuple):
    """The damping of the ascent demonstration and what the eigendecomposition predicts."""

    damping: float      # lambda = -nu_1 - eps
    cosine: float       # predicted cos(g, d) > 0, with |q_1^T g| at its lower bound
    tolerance: float    # rounding of the computed cosine: the solve's, condition MAG(H) / eps
    exponent: int       # the step t = 2^-exponent of the mpmath rise


def _ascent(problem: Problem) -> _Ascent | None:
    """`lambda = -nu_1 - eps` making the damped Newton step ascend detectably, or None.

    `eps = min(gap / 2, -nu_1 / 2, c^2 / (4 S))`, `gap = nu_2 - nu_1`,
    `S = sum_{i>1} (q_i^T g)^2 / max(nu_i - nu_1, gap)` and `c` a lower bound on `|q_1^T g|`.
    Each other eigenvalue of `H + lambda I` is `nu_i - nu_1 - eps >= (nu_i - nu_1) / 2`, so
    `g^T (H + lambda I)^{-1} g <= -c^2 / eps + 2 S <= -2 S < 0`.

    Hypotheses, each what float64 can resolve (`delta = exact_rtol MAG(H)`, H's rounding):
        * `c = |q_1^T g| - ||g|| delta / gap > 0`: the computed `q_1` is only within
          `delta / gap` of the true one (Davis-Kahan), so a coefficient below
          `||g|| delta / gap` may be rounding (seed 5 quick #197: `4e-12` against `8e-7`, two
          eigenvalues `3e-5` apart, g orthogonal to `q_1` in exact arithmetic);
        * `eps > 2 delta`: `H + lambda I` keeps an eigenvalue `<= -eps / 2` under rounding;
        * the predicted cosine is `detectable` against the solve's tolerance (`solve_rtol`
          with condition `MAG(H) / eps`: the solve with `H + lambda I` amplifies H's rounding
          by `1 / eps`).
    The step `t = 2^-k` of the loss-rise check is the largest with `k >= ASCENT_EXPONENT` and
    `t |d^T H d| <= g^T d / 2`, so the quadratic model's rise `t g^T d + t^2 d^T H d / 2` is at
    least `3/4` of its first-order term (along `q_1` the curvature is negative, and a longer
    step would descend again); no ReLU kink may lie within it (`smooth_along`).
    """
    ref = reference(problem)
    nu, q = np.linalg.eigh(ref.hessian)       # n >= 2: a layer has a weight and a bias
    mag = magnitude(ref.ggn, ref.hessian - ref.ggn)
    delta = exact_rtol(problem) * mag
    coeffs = q.T @ ref.gradient
    gaps = nu[1:] - nu[0]
    gap = float(gaps[0])
    if gap <= 0:
        return None
    lower = abs(float(coeffs[0])) - float(np.linalg.norm(ref.gradient)) * delta / gap
    if lower <= 0:
        return None
    others = float(np.sum(coeffs[1:] ** 2 / np.maximum(gaps, gap)))
    eps = min(gap / 2, -float(nu[0]) / 2, lower**2 / (4 * max(others, np.finfo(float).tiny)))
    if eps <= 2 * delta:
        return None
    # d = -(H + lambda I)^{-1} g in the eigenbasis, with |q_1^T g| at its lower bound.
    c = np.concatenate([[lower], coeffs[1:]])
    e = np.concatenate([[lower / eps], -coeffs[1:] / (gaps - eps)])
    slope = float(c @ e)
    cosine = slope / float(np.linalg.norm(c) * np.linalg.norm(e))
    tol = solve_tolerance(problem, mag / eps)
    if not detectable(cosine, tol):
        return None
    curvature = abs(float(e @ (nu * e)))
    exponent = max(ASCENT_EXPONENT, int(np.ceil(np.log2(2 * curvature / slope))))
    lam = -float(nu[0]) - eps
    if not smooth_along(problem, ref.damped_update("hessian", lam), 2.0**-exponent):
        return None
    return _Ascent(lam, cosine, tol, exponent)


def ascent_damping(problem: Problem) -> float | None:
    """A `lambda` in (0, -nu_1) making the damped Newton step ascend detectably (`_ascent`)."""
    ascent = _ascent(problem)
    return None if ascent is None else ascent.damping


@identity("small_damping_newton_ascends", source=SOURCE,
          statement="-(H + lambda I)^{-1} g can ascend when H is indefinite and lambda small",
          applies=lambda p: ascent_damping(p) is not None, negative_control=True)
def small_damping_newton_ascends(problem: Problem):
    """Negative control of `damped_steps_descend`: the damped Newton step with `lambda < -nu_1`.

    Hypothesis: the ascent is detectable (`_ascent`).
    """
    ascent = _ascent(problem)
    assert ascent is not None  # `applies`
    ref = reference(problem)
    g = ref.gradient
    d = ref.damped_update("hessian", ascent.damping)
    cosine = float(g @ d) / float(np.linalg.norm(g) * np.linalg.norm(d))
    bk = mp_backend(ARMIJO_DIGITS)
    with bk.precision():
        theta = bk.asarray(problem.params)
        t = bk.scalar(2) ** -ascent.exponent
        rise = float(mp_loss(problem, theta + t * bk.asarray(d), bk) - mp_loss(problem, theta, bk))
    return [
        at_most("small_damping_newton_ascends", problem, -cosine, -MARGIN * ascent.tolerance,
                f"-cos(g, d) for H + {ascent.damping:.3g} I (indefinite; predicted "
                f"{-ascent.cosine:.3g})", SOURCE, negative_control=True),
        at_most("small_damping_newton_ascends", problem, -rise, 0.0,
                f"h(theta) - h(theta + t d) at t = 2^-{ascent.exponent} in mpmath "
                "(the loss goes up)", SOURCE, negative_control=True),
    ]
