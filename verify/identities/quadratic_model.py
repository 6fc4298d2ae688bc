"""The quadratic model M(delta): best improvement, minimizers (Martens s11; Grosse eqs. (26)-(27)).

`M(delta) = h + g^T delta + 1/2 delta^T G delta` (Martens s3, seed 003).

* Martens s11: `M(delta) = c sum_b 1/2 ||J_b delta + H_L,b^+ r_b||^2_{H_L,b} + const`, so
  `min M - h >= -c/2 sum_b r_b^T H_L,b^+ r_b` (`r_b = dL/dz_b`; for natural parameters
  `H_L = F_R`, the seed's form). Hypotheses: every `H_L,b` PSD with `r_b` in its range (all
  protocol losses but `gaussian_logvar`). The bound is attained when the stacked Jacobian
  `[J_1; ...; J_B]` (`B C x n`) has full row rank: every output-space minimizer
  `u_b = -H_L,b^+ r_b` is then reached by some `delta` (`martens_bound_tight`: a bound too
  loose by any factor fails there). Negative control: a model with an indefinite
  curvature (the Newton model at an indefinite H) is unbounded below and breaks the bound.
* When `F = G` the natural gradient `-F^{-1} g` minimizes M (Martens s11): `g + G delta = 0`.
  Negative control: for `nll_probs` / `gaussian_logvar` it does not.
* Grosse eq. (26): `alpha* = -g^T r / r^T G r` zeroes the derivative of the line model
  `alpha g^T r + 1/2 alpha^2 r^T G r` (the seed prints the model without the 1/2; see
  `ngd_ref.hf`). Negative control: the minimizer of the literal printed model,
  `-g^T r / (2 r^T G r)`, is not stationary.
* Grosse eq. (27): the minimizer over `span{r, p}` is stationary in both directions;
  negative control: the 1-D optimum along r is not stationary along p.

Both step identities use the seeded unit `r` and the direction HF/K-FAC actually feed them:
the K-FAC direction `r_K = -(K_G + lambda I)^{-1} g` (`kfac_direction`: GGN kind, eq. 23
damping), whose length is not 1 -- a step-size routine that silently assumes unit directions
passes on a seeded unit r only.

Singular G (n > B C) is handled on its numerical range (eigenvalues above `exact_rtol MAG(G)`):
g lies in range(G), so the minimizer set is `delta* + null(G)`; residuals are `solve_rtol`
with the condition number of G on that range, and identities needing a minimizer apply only
while that tolerance is below 1 (`resolvable`).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import kfac_solve, momentum_subspace_step, optimal_step_size
from verify._tolerance import compare
from verify.identities._common import (
    at_most,
    default_damping,
    default_direction,
    exact_rtol,
    gauss_newton_magnitude,
    magnitude,
    middle_magnitudes,
    reference,
    solve_tolerance,
)
from verify.identities._registry import detectable, identity, result, separated

__all__ = [
    "kfac_direction",
    "martens_bound",
    "martens_bound_tight",
    "martens_bound_value",
    "martens_bound_needs_psd_model",
    "momentum_subspace_stationary",
    "natural_gradient_minimizes_model",
    "natural_gradient_not_model_minimizer",
    "optimal_step_stationary",
    "range_condition",
    "range_solve",
    "resolvable",
    "seed_step_formula_literal",
]

MARTENS = "Martens s11 (seed 003)"
GROSSE26 = "Grosse ch.4 s6 eq. (26) (seed 002)"
GROSSE27 = "Grosse ch.4 s6 eq. (27) (seed 002)"


def range_condition(matrix: np.ndarray, cutoff: float) -> float:
    """Condition number of a symmetric matrix on the eigenvalues above `cutoff` in modulus."""
    values = np.abs(np.linalg.eigvalsh(matrix))
    kept = values[values > cutoff]
    return float(kept.max() / kept.min()) if kept.size else 1.0


def _cutoff(problem: Problem) -> float:
    """Eigenvalues below `exact_rtol * MAG(G)` are rounding noise: the numerical null space."""
    return exact_rtol(problem) * gauss_newton_magnitude(reference(problem))


def range_solve(problem: Problem, matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Minimum-norm solution of `matrix x = rhs` on the eigenvalues above `_cutoff`."""
    values, vectors = np.linalg.eigh(matrix)
    keep = np.abs(values) > _cutoff(problem)
    return vectors[:, keep] @ ((vectors[:, keep].T @ rhs) / values[keep])


def _solve_tol(problem: Problem, matrix: np.ndarray) -> float:
    return solve_tolerance(problem, range_condition(matrix, _cutoff(problem)))


def _convex_loss(problem: Problem) -> bool:
    return Loss(problem.loss).spec.hessian_psd


def _loss_hessian_tol(problem: Problem) -> float:
    """`solve_rtol` for the pseudo-inverses of the `H_L,b` (condition on their numerical range)."""
    ref = reference(problem)
    conditions = [range_condition(h, exact_rtol(problem) * mag)
                  for h, mag in zip(ref.loss_hessians, middle_magnitudes(ref), strict=True)]
    return solve_tolerance(problem, max(conditions), length=problem.output_dim)


def resolvable(problem: Problem, *, margin: float = 1.0) -> bool:
    """Whether G, F and the `H_L,b` determine the model's minimizers in float64.

    For G and F: `margin * solve_rtol` (condition number on the numerical range) is below 1,
    and the gradient has no more than that relative weight on the numerical null space; for
    the `H_L,b`: the same with the residuals `r_b`. Saturated softmax/sigmoid outputs break
    the second condition: g then lies along eigenvalues of order u, which in exact arithmetic
    belong to the range but in float64 are known to no digit. Negative controls pass
    `margin = 100` (the separation they must demonstrate).
    """
    ref = reference(problem)
    pairs = [(ref.ggn, ref.gradient, _solve_tol(problem, ref.ggn), _cutoff(problem)),
             (ref.fisher, ref.gradient, _solve_tol(problem, ref.fisher), _cutoff(problem))]
    h_tol = _loss_hessian_tol(problem)
    pairs += [(h, r, h_tol, exact_rtol(problem) * mag) for h, r, mag in
              zip(ref.loss_hessians, ref.loss_grads, middle_magnitudes(ref), strict=True)]
    for matrix, rhs, tol, cutoff in pairs:
        values, vectors = np.linalg.eigh(matrix)
        null = vectors[:, np.abs(values) <= cutoff]
        if margin * tol >= 1.0 or np.linalg.norm(null.T @ rhs) > tol * np.linalg.norm(rhs):
            return False
    return True


def martens_bound_value(problem: Problem) -> float:
    """`-c/2 sum_b r_b^T H_L,b^+ r_b`, the pseudo-inverse taken on the numerical range.

    Eigenvalues of `H_L,b` below `exact_rtol * MAG` are rounding noise (the exact null space
    of a softmax's `diag(p) - p p^T` is computed as +-1e-17): inverting them, as `np.linalg.pinv`
    with its default cutoff does, would turn rounding into an O(1e-3) error.
    """
    ref = reference(problem)
    total = 0.0
    for h, r, mag in zip(ref.loss_hessians, ref.loss_grads, middle_magnitudes(ref), strict=True):
        values, vectors = np.linalg.eigh(h)
        keep = np.abs(values) > exact_rtol(problem) * mag
        total += float(np.sum((vectors[:, keep].T @ r) ** 2 / values[keep]))
    return -0.5 * problem.scale * total


@identity("martens_bound", source=MARTENS,
          statement="min_delta M(delta) - h >= -c/2 sum_b r_b^T H_L,b^+ r_b",
          applies=lambda p: _convex_loss(p) and resolvable(p))
def martens_bound(problem: Problem):
    """Martens s11's bound on the GGN model's best improvement."""
    ref = reference(problem)
    g, ggn = ref.gradient, ref.ggn
    delta = range_solve(problem, ggn, -g)
    best = float(g @ delta + 0.5 * delta @ ggn @ delta)
    bound = martens_bound_value(problem)
    tol = max(_solve_tol(problem, ggn), _loss_hessian_tol(problem)) * (abs(best) + abs(bound))
    return at_most("martens_bound", problem, bound - best, tol,
                   f"bound - min M (min M - h = {best:.4g} >= {bound:.4g})", MARTENS)


@identity("martens_bound_needs_psd_model", source=MARTENS,
          statement="with the Hessian (indefinite) in place of G the model falls below the bound",
          applies=lambda p: _convex_loss(p) and float(np.linalg.eigvalsh(reference(p).hessian)[0])
          < -100 * exact_rtol(p) * magnitude(reference(p).hessian), negative_control=True)
def martens_bound_needs_psd_model(problem: Problem):
    """Negative control: `M_H(s q_1)` along H's negative eigenvector goes below the bound."""
    ref = reference(problem)
    nu, q = np.linalg.eigh(ref.hessian)
    q1, g = q[:, 0], ref.gradient
    bound = martens_bound_value(problem)
    s = 2.0 * (abs(float(q1 @ g)) + np.sqrt(4.0 * abs(bound) * abs(nu[0]))) / abs(nu[0]) + 1.0
    s = -s if float(q1 @ g) > 0 else s
    value = float(s * (q1 @ g) + 0.5 * s * s * nu[0])
    return at_most("martens_bound_needs_psd_model", problem, value - bound, -abs(bound),
                   f"M_H(s q_1) - h - bound (s = {s:.3g})", MARTENS, negative_control=True)


def _kept(problem: Problem) -> tuple[int, int]:
    """Numerical ranks: of G (`range_solve`'s cutoff) and `sum_b rank H_L,b` (the bound's)."""
    ref = reference(problem)
    rank_g = int(np.sum(np.abs(np.linalg.eigvalsh(ref.ggn)) > _cutoff(problem)))
    rank_l = sum(int(np.sum(np.abs(np.linalg.eigvalsh(h)) > exact_rtol(problem) * mag))
                 for h, mag in zip(ref.loss_hessians, middle_magnitudes(ref), strict=True))
    return rank_g, rank_l


def _stacked_full_row_rank(problem: Problem) -> bool:
    """Hypotheses of `martens_bound_tight`: those of `martens_bound`, and `[J_b]` onto.

    `B C <= n`, and the numerical rank of G equals `sum_b rank H_L,b` (`_kept`): with an onto
    stacked Jacobian, `rank G = sum_b rank H_L,b` exactly, and equal numerical ranks mean
    float64 resolves every direction the bound counts (a nearly rank-deficient J would drop
    some below G's cutoff).
    """
    if not (_convex_loss(problem) and resolvable(problem)):
        return False
    if problem.batch_size * problem.output_dim > problem.n_params:
        return False
    rank_g, rank_l = _kept(problem)
    return rank_g == rank_l


@identity("martens_bound_tight", source=MARTENS,
          statement="min_delta M(delta) - h = -c/2 sum_b r_b^T H_L,b^+ r_b when the stacked "
                    "J_b have full row rank", applies=_stacked_full_row_rank)
def martens_bound_tight(problem: Problem):
    """The equality case of Martens s11's bound (hypotheses: `_stacked_full_row_rank`).

    With `J = [J_b]` onto, `delta` reaches every `u = J delta`, and the output-space
    minimizers `u_b = -H_L,b^+ r_b` give `M - h = -c/2 sum_b r_b^T H_L,b^+ r_b`. Tolerance:
    `martens_bound`'s.
    """
    ref = reference(problem)
    g, ggn = ref.gradient, ref.ggn
    delta = range_solve(problem, ggn, -g)
    best = float(g @ delta + 0.5 * delta @ ggn @ delta)
    bound = martens_bound_value(problem)
    tol = max(_solve_tol(problem, ggn), _loss_hessian_tol(problem)) * (abs(best) + abs(bound))
    return at_most("martens_bound_tight", problem, abs(bound - best), tol,
                   f"|bound - min M| (min M - h = {best:.4g}, bound {bound:.4g})", MARTENS)


def _natural_gradient_residual(problem: Problem):
    ref = reference(problem)
    g, ggn = ref.gradient, ref.ggn
    delta = range_solve(problem, ref.fisher, -g)
    mag = float(np.linalg.norm(ggn) * np.linalg.norm(delta) + np.linalg.norm(g))
    tol = max(_solve_tol(problem, ref.fisher), _solve_tol(problem, ggn))
    return compare(ggn @ delta, -g, tolerance=tol, magnitude=mag), delta


@identity("natural_gradient_minimizes_model", source=MARTENS,
          statement="F = G => the natural gradient -F^{-1} g is a minimizer of M",
          applies=lambda p: Loss(p.loss).outputs_are_natural_parameters and resolvable(p))
def natural_gradient_minimizes_model(problem: Problem):
    """`grad M(delta_ng) = g + G delta_ng = 0` with `F delta_ng = -g` (Martens s11)."""
    return result("natural_gradient_minimizes_model", problem,
                  _natural_gradient_residual(problem)[0], "g + G delta_ng = 0", MARTENS)


def _stationarity_gap(problem: Problem) -> bool:
    """Hypotheses of `natural_gradient_not_model_minimizer`, computed from the problem.

    `g + G delta_ng = (G - F) delta_ng` (as `F delta_ng = -g`), and
    `(G - F) delta = c sum_b J_b^T (H_L,b - F_R,b) J_b delta` is computed in output space,
    from the per-example middles rather than the assembled matrices: it must exceed 102
    tolerances of the residual's scale. `F != G` alone does not suffice: `H_L,b - F_R,b` may
    vanish on the directions `J_b delta_ng` actually reaches.
    """
    if Loss(problem.loss).outputs_are_natural_parameters or not resolvable(problem, margin=100.0):
        return False
    ref = reference(problem)
    comparison, delta = _natural_gradient_residual(problem)
    jd = np.einsum("bcn,n->bc", ref.jacobians, delta)
    middle = np.asarray(ref.loss_hessians) - np.asarray(ref.output_fishers)
    gap = problem.scale * np.einsum("bcn,bcd,bd->n", ref.jacobians, middle, jd)
    return detectable(float(np.linalg.norm(gap)) / comparison.scale, comparison.tolerance)


@identity("natural_gradient_not_model_minimizer", source=MARTENS,
          statement="F != G => the natural gradient is not a stationary point of M, where "
                    "(G - F) delta_ng is detectably nonzero",
          applies=_stationarity_gap, negative_control=True)
def natural_gradient_not_model_minimizer(problem: Problem):
    """Negative control of `natural_gradient_minimizes_model` (hypotheses: `_stationarity_gap`)."""
    return separated("natural_gradient_not_model_minimizer", problem,
                     _natural_gradient_residual(problem)[0], "g + G delta_ng != 0", MARTENS)


def kfac_direction(problem: Problem) -> np.ndarray:
    """`r_K = -(K_G + lambda I)^{-1} g`: the damped (eq. 23) GGN-kind K-FAC direction.

    `lambda = default_damping(problem, "kfac-direction")`.
    """
    ref = reference(problem)
    lam = default_damping(problem, "kfac-direction")
    return -np.asarray(kfac_solve(problem, ref.gradient, lam, "eigen", kind="ggn"),
                       dtype=np.float64)


def _line(problem: Problem, direction: np.ndarray | None = None):
    ref = reference(problem)
    r = default_direction(problem, "line") if direction is None else direction
    r = -r if float(ref.gradient @ r) > 0 else r
    return ref, r, float(ref.gradient @ r), float(r @ ref.ggn @ r)


def _lines(problem: Problem) -> list[tuple[str, np.ndarray]]:
    """The line directions: the seeded unit r, and the K-FAC direction where it is nonzero."""
    lines = [("seeded r", _line(problem)[1])]
    r_k = kfac_direction(problem)
    if np.any(r_k != 0) and np.all(np.isfinite(r_k)):
        lines.append(("K-FAC direction", _line(problem, r_k)[1]))
    return lines


def _curved(problem: Problem, r: np.ndarray) -> bool:
    """`r^T G r` resolved: above `exact_rtol MAG(G) |r|^2`."""
    curv = float(r @ reference(problem).ggn @ r)
    return curv > exact_rtol(problem) * magnitude(reference(problem).ggn) * float(r @ r)


def _positive_line_curvature(problem: Problem) -> bool:
    return _convex_loss(problem) and _curved(problem, _line(problem)[1])


def _line_magnitude(problem: Problem, slope: float, alpha: float,
                    r: np.ndarray | None = None) -> float:
    """MAG of `g^T r + alpha r^T G r`: `|g| |r| + |alpha| MAG(G) |r|^2` (unit r: `|g^T r|`)."""
    if r is None:
        return abs(slope) + abs(alpha) * gauss_newton_magnitude(reference(problem))
    g = reference(problem).gradient
    norm2 = float(r @ r)
    return (float(np.linalg.norm(g)) * np.sqrt(norm2)
            + abs(alpha) * gauss_newton_magnitude(reference(problem)) * norm2)


@identity("optimal_step_stationary", source=GROSSE26,
          statement="alpha* = -g^T r / r^T G r zeroes d/dalpha of the line model",
          applies=_positive_line_curvature)
def optimal_step_stationary(problem: Problem):
    """Grosse eq. (26): `g^T r + alpha* r^T G r = 0` (`ngd_ref.dense.optimal_step_size`).

    On the seeded unit r and on the K-FAC direction (`_lines`; where `r^T G r` is resolved).
    """
    out = []
    for k, (what, r) in enumerate(_lines(problem)):
        if k and not _curved(problem, r):
            continue
        _, r, slope, curv = _line(problem, r)
        alpha = float(optimal_step_size(problem, r))
        mag = _line_magnitude(problem, slope, alpha, None if k == 0 else r)
        cmp = compare(slope + alpha * curv, 0.0, tolerance=exact_rtol(problem), magnitude=mag)
        out.append(result("optimal_step_stationary", problem, cmp, f"{what}: q'(alpha*) = 0",
                          GROSSE26))
    return out


def _half_slope_detectable(problem: Problem) -> bool:
    """`q'(alpha_half) = g^T r / 2` exceeds 102 tolerances of the line model's magnitude.

    Fails where the gradient is (numerically) orthogonal to the line direction r.
    """
    if not _positive_line_curvature(problem):
        return False
    _, _, slope, curv = _line(problem)
    mag = _line_magnitude(problem, slope, -slope / (2.0 * curv))
    return detectable(abs(slope) / 2 / mag, exact_rtol(problem))


@identity("seed_step_formula_literal", source=GROSSE26,
          statement="the minimizer of the printed model (no 1/2) is not stationary for the "
                    "Taylor model, where g^T r / 2 is detectable",
          applies=_half_slope_detectable, negative_control=True)
def seed_step_formula_literal(problem: Problem):
    """Negative control: `alpha = -g^T r / (2 r^T G r)` leaves `q'(alpha) = g^T r / 2 != 0`.

    Hypotheses: positive line curvature and a detectable `g^T r / 2` (`_half_slope_detectable`).
    """
    _, r, slope, curv = _line(problem)
    alpha = -slope / (2.0 * curv)
    cmp = compare(slope + alpha * curv, 0.0, tolerance=exact_rtol(problem),
                  magnitude=_line_magnitude(problem, slope, alpha))
    return separated("seed_step_formula_literal", problem, cmp, "q'(alpha_half) != 0", GROSSE26)


@identity("momentum_subspace_stationary", source=GROSSE27,
          statement="the damped model's minimizer over span{r, p} is stationary along r and p",
          applies=_convex_loss)
def momentum_subspace_stationary(problem: Problem, *, previous: np.ndarray | None = None,
                                 damping: float | None = None):
    """Grosse eq. (27) on `M_lambda`: `[r p]^T (g + (G + lambda I)(alpha r + beta p)) = 0`.

    Damped (default `default_damping`) so the 2 x 2 model is positive definite even when G
    has rank 1 (one example, `nll_probs`). Negative control in the same result list: the 1-D
    optimum along r (beta = 0) is not stationary along p.
    """
    lam = default_damping(problem) if damping is None else damping
    p = default_direction(problem, "previous") if previous is None else np.asarray(previous, float)
    out = []
    for k, (what, r) in enumerate(_lines(problem)):
        ref, r, slope, _ = _line(problem, r)
        curvature = ref.ggn + lam * np.eye(problem.n_params)
        step = np.asarray(momentum_subspace_step(problem, r, p, damping=lam).step,
                          dtype=np.float64)
        # Unit columns: the residual's scale and conditioning do not depend on |r|, |p|.
        basis = np.stack([r / np.linalg.norm(r), p / np.linalg.norm(p)], axis=1)
        mag = float(np.linalg.norm(ref.gradient)
                    + np.linalg.norm(curvature) * np.linalg.norm(step))
        tol = solve_tolerance(problem, float(np.linalg.cond(basis.T @ curvature @ basis)))
        stationary = compare(basis.T @ (ref.gradient + curvature @ step), np.zeros(2),
                             tolerance=tol, magnitude=mag)
        out.append(result("momentum_subspace_stationary", problem, stationary,
                          f"{what}: [r p]^T grad M_lambda(alpha r + beta p) = 0 "
                          f"(lambda={lam:.3g})", GROSSE27))
        if k == 0:
            line_step = -slope / float(r @ curvature @ r) * r
            one_d = compare(basis[:, 1] @ (ref.gradient + curvature @ line_step), 0.0,
                            tolerance=tol, magnitude=mag)
            out.append(separated("momentum_subspace_stationary", problem, one_d,
                                 "the 1-D optimum along r is not stationary along p", GROSSE27))
    return out
