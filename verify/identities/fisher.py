"""The Fisher information: its forms, its relation to the GGN, and the KL divergence it measures.

Identities 1, 3 and 4 of the battery (seeds 000/001; Martens, seed 003, s5, s8, s9):

* `fisher_equals_ggn` -- `F = G` when the network outputs z are the natural parameters of the
  output distribution (mse, softmax / sigmoid cross-entropy, poisson): then `F_R = H_L`
  (Martens s9). Negative control `fisher_differs_from_ggn`: for `nll_probs` (z are
  probabilities) and `gaussian_logvar` (z = (mu, log variance)) `F != G`, while
* `fisher_is_expected_ggn` -- `F = E_{y ~ r}[G(y)] = c sum_b J_b^T E[H_L,b] J_b` holds for every
  loss (Martens s8: `F_R = -E[H_log r]`).
* `fisher_forms_agree` -- `E[score score^T] = -E[Hessian of log p]` in parameter space, the
  second form including the network's second-order term, which vanishes because
* `mean_score_vanishes` -- `E_y[score] = c sum_b J_b^T E[dL/dz_b] = 0` (Martens s5; seed 000).
  Negative control `empirical_fisher_differs`: the empirical Fisher (observed targets, not
  model samples) is not the Fisher (Martens s7).
* `kl_second_order` -- `KL(p_theta || p_{theta + t d}) = 1/2 t^2 d^T F d + O(t^3)` (Martens s6;
  seed 001): the t^2 coefficient of the KL, extrapolated in mpmath from steps `t -> 0`, equals
  `1/2 d^T F d`, in both argument orders (`KL(p_{theta + t d} || p_theta)` has the same t^2
  coefficient; the t^3 terms differ) and along `KL_DIRECTIONS` seeded directions. A quadratic
  form on one direction does not identify F (any `F + E` with `d^T E d = 0` passes); on
  independent random directions a fixed nonzero symmetric E escapes only on a set of measure
  zero. Negative control `kl_not_ggn`: with `G` in place of `F` for a non-natural
  loss the coefficient differs by `1/2 d^T (F - G) d`, so the remainder is only `O(t^2)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import Backend, get_loss, mp_backend, network_outputs
from verify._tolerance import compare
from verify.identities._common import (
    default_direction,
    exact_rtol,
    gauss_newton_magnitude,
    middle_magnitudes,
    reference,
    smooth_along,
)
from verify.identities._registry import detectable, identity, result, separated

__all__ = [
    "empirical_fisher_differs",
    "fisher_differs_from_ggn",
    "fisher_equals_ggn",
    "fisher_forms_agree",
    "fisher_is_expected_ggn",
    "kl_coefficients",
    "kl_curvature",
    "kl_directions",
    "kl_not_ggn",
    "kl_second_order",
    "mean_score_vanishes",
    "mp_loss",
]

MARTENS_S9 = "Martens s8-s9 (seed 003)"
MARTENS_S5 = "Martens s5 (seed 003); seeds 000/001"
MARTENS_S6 = "Martens s6 (seed 003); seed 001 (KL second-order expansion)"

#: Steps of the KL test: `t = 2^-KL_FIRST_EXPONENT / 2^e` and `2 t`, with
#: `2^e >= max(1, ||J d||_inf)` (`kl_step_scale`): the output change `t J d` stays below
#: `2^-KL_FIRST_EXPONENT` whatever the problem's scale. The even part
#: `S(t) = (KL(t) + KL(-t)) / (2 t^2) = c2 + c4 t^2 + O(t^4)` is extrapolated by one Richardson
#: step, `(4 S(t) - S(2t)) / 3` (error `O(t^4)` ~ 1e-48 relative); `|S(t) - S(2t)| / 3`
#: (`|c4| t^2` ~ 1e-24 relative, a generous bound on that error) is added to the tolerance.
#: At 64 digits the KL (~`t^2` ~ 1e-24 of the loss's terms) keeps ~40 digits, far below
#: float64's rounding of `1/2 d^T F d`, which sets the tolerance.
KL_FIRST_EXPONENT = 40
KL_DIGITS = 64
#: Seeded directions of `kl_second_order` (the first is the negative control's).
KL_DIRECTIONS = 2


@identity("fisher_equals_ggn", source=MARTENS_S9,
          statement="F = G when the outputs z are natural parameters (F_R = H_L)",
          applies=lambda p: Loss(p.loss).outputs_are_natural_parameters)
def fisher_equals_ggn(problem: Problem):
    """`F = G` for natural-parameter outputs (Martens s9, seed 003).

    For an exponential family in natural parameters z, `-log r(y|z) = A(z) - y^T T(z)...` has
    a Hessian `H_L = grad^2 A(z)` independent of y, equal to the covariance of the sufficient
    statistic, which is `F_R`. Hence `c sum J^T F_R J = c sum J^T H_L J`.
    Hypotheses: loss in {mse, softmax_cross_entropy, sigmoid_cross_entropy, poisson}.
    """
    ref = reference(problem)
    mag = max(gauss_newton_magnitude(ref, ref.output_fishers),
              gauss_newton_magnitude(ref, ref.loss_hessians))
    cmp = compare(ref.fisher, ref.ggn, tolerance=exact_rtol(problem), magnitude=mag)
    return result("fisher_equals_ggn", problem, cmp, "F = G (natural parameters)", MARTENS_S9)


@identity("fisher_differs_from_ggn", source=MARTENS_S9,
          statement="F != G when z are not natural parameters (nll_probs, gaussian_logvar)",
          applies=lambda p: not Loss(p.loss).outputs_are_natural_parameters,
          negative_control=True)
def fisher_differs_from_ggn(problem: Problem):
    """Negative control of `fisher_equals_ggn`: `H_L` depends on y, so `F_R != H_L` at the data."""
    ref = reference(problem)
    mag = max(gauss_newton_magnitude(ref, ref.output_fishers),
              gauss_newton_magnitude(ref, ref.loss_hessians))
    cmp = compare(ref.fisher, ref.ggn, tolerance=exact_rtol(problem), magnitude=mag)
    return separated("fisher_differs_from_ggn", problem, cmp, "F != G (z not natural)", MARTENS_S9)


@identity("fisher_is_expected_ggn", source=MARTENS_S9,
          statement="F = E_y[G(y)] = c sum_b J_b^T E_y[H_L,b] J_b for every loss")
def fisher_is_expected_ggn(problem: Problem):
    """`F = E_{y ~ r(.|f)}[G(y)]` (Martens s8: `F_R = -E[H_log r]`, seed 003).

    The GGN evaluated at model-sampled targets, averaged exactly over them, is the Fisher --
    for natural and non-natural parameterizations alike.
    """
    ref = reference(problem)
    mean_hessians = np.stack([m.mean_hessian for m in ref.output_moments])
    expected_ggn = problem.scale * np.einsum("bci,bcd,bdj->ij", ref.jacobians, mean_hessians,
                                             ref.jacobians)
    mag = max(gauss_newton_magnitude(ref, ref.output_fishers),
              gauss_newton_magnitude(ref, mean_hessians))
    cmp = compare(expected_ggn, ref.fisher, tolerance=exact_rtol(problem), magnitude=mag)
    return result("fisher_is_expected_ggn", problem, cmp, "E_y[G(y)] = F", MARTENS_S9)


@identity("fisher_forms_agree", source=MARTENS_S5,
          statement="E[score score^T] = -E[Hessian of log p] (second-order term included)")
def fisher_forms_agree(problem: Problem):
    """The two definitions of the Fisher agree (Martens s5, seed 003; seeds 000/001).

    `-E_y[grad^2 log p(y|x, theta)] = c sum_b (J_b^T E[H_L] J_b + sum_j E[dL/dz_j] grad^2 z_j)`
    equals `E_y[grad log p grad log p^T] = c sum_b J_b^T F_R J_b`: the outer-product form.
    """
    ref = reference(problem)
    mean_hessians = np.stack([m.mean_hessian for m in ref.output_moments])
    mag = max(gauss_newton_magnitude(ref, ref.output_fishers),
              gauss_newton_magnitude(ref, mean_hessians))
    cmp = compare(ref.fisher_expected_hessian, ref.fisher, tolerance=exact_rtol(problem),
                  magnitude=mag)
    return result("fisher_forms_agree", problem, cmp, "-E[Hessian log p] = E[score score^T]",
                  MARTENS_S5)


@identity("mean_score_vanishes", source=MARTENS_S5,
          statement="E_y[grad log p(y|x, theta)] = 0 under the model's own distribution")
def mean_score_vanishes(problem: Problem):
    """`E_{y ~ p}[score] = -c sum_b J_b^T E[dL/dz_b] = 0` (Martens s5; seed 000).

    Magnitude of the computation: `c sum_b ||J_b|| sqrt(MAG(F_R,b))` (the score's spread).
    """
    ref = reference(problem)
    mean_score = problem.scale * sum(
        t.jacobian.T @ m.mean_grad for t, m in zip(ref.traces, ref.output_moments, strict=True))
    spread = np.sqrt(middle_magnitudes(ref))
    mag = problem.scale * float(np.sum(np.linalg.norm(ref.jacobians, axis=(1, 2)) * spread))
    cmp = compare(mean_score, np.zeros(problem.n_params), tolerance=exact_rtol(problem),
                  magnitude=mag)
    return result("mean_score_vanishes", problem, cmp, "E[score] = 0", MARTENS_S5)


@identity("empirical_fisher_differs", source="Martens s7 (seed 003)",
          statement="EF (observed targets) != F (model's targets)", negative_control=True)
def empirical_fisher_differs(problem: Problem):
    """Negative control of the Fisher forms: the empirical Fisher is a different matrix."""
    ref = reference(problem)
    mag = gauss_newton_magnitude(ref, ref.output_fishers) + float(
        np.linalg.norm(ref.empirical_fisher))
    cmp = compare(ref.empirical_fisher, ref.fisher, tolerance=exact_rtol(problem), magnitude=mag)
    return separated("empirical_fisher_differs", problem, cmp, "EF != F", "Martens s7 (seed 003)")


# ---------------------------------------------------------------------------------------------
# KL second-order expansion
# ---------------------------------------------------------------------------------------------
def mp_loss(problem: Problem, theta: np.ndarray, bk: Backend):
    """`h(theta) = c sum_b L(y_b, z_b)` by a forward pass only (call inside `bk.precision()`)."""
    loss = get_loss(problem.loss)
    targets = problem.targets if problem.targets.dtype.kind == "i" else bk.asarray(problem.targets)
    z = network_outputs(problem, theta, bk)
    return bk.scalar(problem.scale) * sum(loss.value(bk, y, zb)
                                          for y, zb in zip(targets, z, strict=True))


def kl_step_scale(problem: Problem, direction: np.ndarray) -> int:
    """`e >= 0` with `2^e >= max(1, max_b ||J_b d||_inf)`: steps are divided by `2^e`."""
    size = float(np.max(np.abs(np.einsum("bcn,n->bc", reference(problem).jacobians, direction))))
    return max(0, int(np.ceil(np.log2(size)))) if np.isfinite(size) and size > 0 else 0


def kl_coefficients(problem: Problem, direction: np.ndarray, *,
                    digits: int = KL_DIGITS) -> dict[bool, tuple[float, float]]:
    """The t^2 coefficients of the KL in both argument orders, extrapolated to t = 0.

    `KL = c sum_b KL(r(.|z_b(theta)) || r(.|z_b(theta + t d)))` (`reverse=False`) and
    `c sum_b KL(r(.|z_b(theta + t d)) || r(.|z_b(theta)))` (`reverse=True`) in closed form at
    `digits` digits (the loss's `kl`, on forward passes only, shared by the two orders), at
    `t = +-2^-k`, `+-2^(1-k)` (see `KL_FIRST_EXPONENT`), one Richardson step.

    Returns:
        `{reverse: (c2, error estimate)}`: the extrapolated coefficient (the theorem:
        `1/2 d^T F d` in both orders) and the estimate `|S(t) - S(2t)| / 3`.
    """
    bk = mp_backend(digits)
    loss = get_loss(problem.loss)
    first = KL_FIRST_EXPONENT + kl_step_scale(problem, direction)
    with bk.precision():
        theta, d = bk.asarray(problem.params), bk.asarray(direction)
        z0 = network_outputs(problem, theta, bk)
        scale = bk.scalar(problem.scale)
        even: dict[bool, list[Any]] = {False: [], True: []}
        for k in (first, first - 1):
            t = bk.scalar(2) ** -k
            sums = {False: 0, True: 0}
            for sign in (1, -1):
                zt = network_outputs(problem, theta + d * (sign * t), bk)
                sums[False] += scale * sum(loss.kl(bk, z0[b], zt[b]) for b in range(len(z0)))
                sums[True] += scale * sum(loss.kl(bk, zt[b], z0[b]) for b in range(len(z0)))
            for order, total in sums.items():
                even[order].append(total / (2 * t * t))
        return {order: (float((4 * fine - coarse) / 3), abs(float(fine - coarse)) / 3)
                for order, (fine, coarse) in even.items()}


def kl_curvature(problem: Problem, direction: np.ndarray, *, digits: int = KL_DIGITS,
                 reverse: bool = False) -> tuple[float, float]:
    """`(c2, error estimate)` of one argument order (`kl_coefficients`)."""
    return kl_coefficients(problem, direction, digits=digits)[reverse]


def kl_directions(problem: Problem) -> list[np.ndarray]:
    """The `KL_DIRECTIONS` seeded unit directions of `kl_second_order` (first: `"kl"`)."""
    return [default_direction(problem, "kl" if k == 0 else f"kl-{k}")
            for k in range(KL_DIRECTIONS)]


def _coefficient_comparison(problem: Problem, metric: np.ndarray, d: np.ndarray,
                            c2: float, estimate: float):
    """`c2` against `1/2 d^T M d` (float64), tolerance `exact_rtol` + the estimate."""
    scale = max(0.5 * float(np.linalg.norm(metric)) * float(d @ d), abs(c2),
                np.finfo(float).tiny)
    return compare(c2, 0.5 * float(d @ metric @ d),
                   tolerance=exact_rtol(problem) + estimate / scale, magnitude=scale)


def _kl_comparison(problem: Problem, metric: np.ndarray, direction: np.ndarray | None):
    """`kl_curvature(d)` against `1/2 d^T M d` (float64), tolerance `exact_rtol` + estimate."""
    d = default_direction(problem, "kl") if direction is None else np.asarray(direction, float)
    return _coefficient_comparison(problem, metric, d, *kl_curvature(problem, d))


def _kl_smooth(problem: Problem) -> bool:
    """Hypothesis of the KL expansion: h is smooth over the steps `kl_curvature` takes."""
    return all(smooth_along(problem, d, 2.0 ** (1 - KL_FIRST_EXPONENT - kl_step_scale(problem, d)))
               for d in kl_directions(problem))


@identity("kl_second_order", source=MARTENS_S6,
          statement="KL(p_theta || p_theta+td) = 1/2 t^2 d^T F d + O(t^3), in both argument "
                    "orders, on 2 seeded directions (t^2 coefficient extrapolated in mpmath)",
          applies=_kl_smooth)
def kl_second_order(problem: Problem, *, direction: np.ndarray | None = None):
    """The Fisher is the Hessian of the KL divergence (Martens s6, seed 003; seed 001).

    `KL(t) = 1/2 t^2 d^T F d + K3 t^3 + O(t^4)`: the remainder after the quadratic term is
    `o(t^2)`, i.e. the t^2 coefficient of the KL, extrapolated from small steps in mpmath
    (`kl_curvature`), equals `1/2 d^T F d`. (A log-log slope test of the remainder cannot
    decide this reliably against a float64 `d^T F d`: where `K3` nearly vanishes, the
    rounding of `d^T F d` and the `t^4` term mix into any slope between 2 and 4; fuzzing
    found slope 2.33 on a problem where the theorem holds.)

    Hypothesis: no ReLU pre-activation crosses 0 over the steps (`_kl_smooth`): the
    expansion needs h to be smooth there.

    Args:
        problem: the problem.
        direction: `d`; default the `KL_DIRECTIONS` seeded unit vectors (`kl_directions`).
    """
    fisher = reference(problem).fisher
    directions = kl_directions(problem) if direction is None else [np.asarray(direction, float)]
    out = []
    for k, d in enumerate(directions):
        for reverse, (c2, estimate) in kl_coefficients(problem, d).items():
            what = ("KL(p_theta+td || p_theta)" if reverse else "KL(p_theta || p_theta+td)")
            out.append(result("kl_second_order", problem,
                              _coefficient_comparison(problem, fisher, d, c2, estimate),
                              f"direction {k}: t^2 coefficient of {what} = 1/2 d^T F d",
                              MARTENS_S6))
    return out


def _kl_ggn_gap_detectable(problem: Problem) -> bool:
    """Hypothesis of `kl_not_ggn`: z not natural, smooth steps, `1/2 |d^T (F - G) d|` detectable."""
    if Loss(problem.loss).outputs_are_natural_parameters or not _kl_smooth(problem):
        return False
    ref, d = reference(problem), default_direction(problem, "kl")
    gap = 0.5 * abs(float(d @ (ref.fisher - ref.ggn) @ d))
    mag = 0.5 * max(float(np.linalg.norm(ref.fisher)), float(np.linalg.norm(ref.ggn)))
    return detectable(gap / max(mag, np.finfo(float).tiny), exact_rtol(problem))


@identity("kl_not_ggn", source=MARTENS_S6,
          statement="with G in place of F (z not natural) the t^2 coefficient of the KL differs: "
                    "the remainder is O(t^2) only",
          applies=_kl_ggn_gap_detectable, negative_control=True)
def kl_not_ggn(problem: Problem, *, direction: np.ndarray | None = None):
    """Negative control of `kl_second_order`: G is not the KL's Hessian when F != G.

    Hypothesis: the predicted gap `1/2 d^T (F - G) d` is detectable (`_kl_ggn_gap_detectable`).
    """
    cmp = _kl_comparison(problem, reference(problem).ggn, direction)
    return separated("kl_not_ggn", problem, cmp,
                     "t^2 coefficient of the KL != 1/2 d^T G d (G is the wrong metric)",
                     MARTENS_S6)
