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
  seed 001), a slope test in mpmath. Negative control `kl_not_ggn`: with `G` in place of `F`
  for a non-natural loss the remainder is only `O(t^2)`.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem, unflatten
from ngd_ref._activations import get_activation
from ngd_ref.dense import Backend, get_loss, mp_backend
from verify._tolerance import compare
from verify.identities._common import (
    at_most,
    default_direction,
    exact_rtol,
    gauss_newton_magnitude,
    middle_magnitudes,
    reference,
)
from verify.identities._registry import identity, result, separated

__all__ = [
    "empirical_fisher_differs",
    "fisher_differs_from_ggn",
    "fisher_equals_ggn",
    "fisher_forms_agree",
    "fisher_is_expected_ggn",
    "kl_not_ggn",
    "kl_remainder_order",
    "kl_second_order",
    "mean_score_vanishes",
    "mp_loss",
    "forward_outputs",
]

MARTENS_S9 = "Martens s8-s9 (seed 003)"
MARTENS_S5 = "Martens s5 (seed 003); seeds 000/001"
MARTENS_S6 = "Martens s6 (seed 003); seed 001 (KL second-order expansion)"

#: Steps t = 2^-k of the KL slope test. The remainder `KL - 1/2 t^2 d^T F d = K3 t^3 + K4 t^4 + ...`
#: has two-point log-log slopes `3 + O(|K4/K3| t)`; with t <= 2^-8 the order-3/order-2 decision
#: at slope 2.5 tolerates `|K4/K3|` up to ~90, and 40 digits leave the t^3 term (~1e-10 of KL)
#: 25 digits clear of mpmath rounding while the float64 `d^T F d` (rel. error ~1e-15) stays
#: below it by 5 orders.
KL_EXPONENTS = (8, 9, 10, 11)
KL_DIGITS = 40
#: Midpoint between the integer orders 2 (a wrong metric) and 3 (the theorem).
ORDER_MIDPOINT = 2.5


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
# KL slope test
# ---------------------------------------------------------------------------------------------
def forward_outputs(problem: Problem, theta: np.ndarray, bk: Backend) -> np.ndarray:
    """Network outputs `z_b` `(B, C)` at parameters `theta`, forward pass only (any backend)."""
    a = bk.asarray(problem.inputs).T
    for layer, (weight, bias) in zip(problem.layers, unflatten(problem.layers, theta), strict=True):
        s = weight @ a + bias[:, None]
        act = get_activation(layer.activation)
        a = act.value(bk, s.T).T if layer.activation == "softmax" else act.value(bk, s)
    return a.T


def mp_loss(problem: Problem, theta: np.ndarray, bk: Backend):
    """`h(theta) = c sum_b L(y_b, z_b)` by a forward pass only (call inside `bk.precision()`)."""
    loss = get_loss(problem.loss)
    targets = problem.targets if problem.targets.dtype.kind == "i" else bk.asarray(problem.targets)
    z = forward_outputs(problem, theta, bk)
    return bk.scalar(problem.scale) * sum(loss.value(bk, y, zb) for y, zb in zip(targets, z, strict=True))


def kl_remainder_order(problem: Problem, metric: np.ndarray, direction: np.ndarray,
                       *, digits: int = KL_DIGITS) -> tuple[float, float, float]:
    """Order of `R(t) = KL(p_theta || p_{theta + t d}) - 1/2 t^2 d^T M d` as t -> 0.

    `KL = c sum_b KL(r(.|z_b(theta)) || r(.|z_b(theta + t d)))` in closed form at `digits`
    digits, for `t = 2^-k`, `k` in `KL_EXPONENTS`.

    Returns:
        `(slope, largest |R|, rounding level)`: the least-squares slope of `log|R|` against
        `log t`, and the level below which `R` is indistinguishable from zero (float64
        rounding of `1/2 t^2 d^T M d`, `exact_rtol * t^2 * MAG`).
    """
    bk = mp_backend(digits)
    loss = get_loss(problem.loss)
    quad = 0.5 * float(direction @ metric @ direction)
    mag = 0.5 * float(np.linalg.norm(metric)) * float(direction @ direction)
    with bk.precision():
        theta, d = bk.asarray(problem.params), bk.asarray(direction)
        z0 = forward_outputs(problem, theta, bk)
        remainders = []
        for k in KL_EXPONENTS:
            t = bk.scalar(2) ** -k
            zt = forward_outputs(problem, theta + t * d, bk)
            kl = bk.scalar(problem.scale) * sum(loss.kl(bk, z0[b], zt[b]) for b in range(len(z0)))
            remainders.append(float(kl - t * t * bk.scalar(quad)))
    ts = 2.0 ** -np.asarray(KL_EXPONENTS, dtype=float)
    level = exact_rtol(problem) * float(ts[0]) ** 2 * mag
    r = np.abs(np.asarray(remainders))
    if np.any(r == 0):
        return float("inf"), float(r.max()), level
    slope = float(np.polyfit(np.log(ts), np.log(r), 1)[0])
    return slope, float(r.max()), level


@identity("kl_second_order", source=MARTENS_S6,
          statement="KL(p_theta || p_theta+td) = 1/2 t^2 d^T F d + O(t^3) (slope test, mpmath)")
def kl_second_order(problem: Problem, *, direction: np.ndarray | None = None):
    """The Fisher is the Hessian of the KL divergence (Martens s6, seed 003; seed 001).

    `KL(t) = 1/2 t^2 d^T F d + K3 t^3 + O(t^4)`: the remainder after the quadratic term has
    log-log slope 3 (or more, when K3 = 0). Passes when the fitted slope is >= 2.5 (the
    midpoint between orders 2 and 3, see `KL_EXPONENTS`), or when the remainder is below the
    float64 rounding level of the quadratic term (KL exactly quadratic along d, e.g. mse with
    a network affine in theta).

    Args:
        problem: the problem.
        direction: `d`, default a seeded unit vector (`default_direction(problem, "kl")`).
    """
    d = default_direction(problem, "kl") if direction is None else np.asarray(direction, float)
    slope, largest, level = kl_remainder_order(problem, reference(problem).fisher, d)
    if largest <= level:
        return at_most("kl_second_order", problem, largest, level,
                       "KL - 1/2 t^2 d^T F d vanishes to rounding (exactly quadratic)", MARTENS_S6)
    return at_most("kl_second_order", problem, 3.0 - slope, 3.0 - ORDER_MIDPOINT,
                   f"3 - order of KL - 1/2 t^2 d^T F d (slope {slope:.3f})", MARTENS_S6)


@identity("kl_not_ggn", source=MARTENS_S6,
          statement="with G in place of F (z not natural) the KL remainder is O(t^2) only",
          applies=lambda p: not Loss(p.loss).outputs_are_natural_parameters,
          negative_control=True)
def kl_not_ggn(problem: Problem, *, direction: np.ndarray | None = None):
    """Negative control of `kl_second_order`: G is not the KL's Hessian when F != G."""
    d = default_direction(problem, "kl") if direction is None else np.asarray(direction, float)
    slope, _, _ = kl_remainder_order(problem, reference(problem).ggn, d)
    return at_most("kl_not_ggn", problem, slope, ORDER_MIDPOINT,
                   "order of KL - 1/2 t^2 d^T G d (2 expected: G is the wrong metric)",
                   MARTENS_S6, negative_control=True)
