"""Invariance to reparameterization (Grosse ch. 4 s2.2-2.3, seed 002; Martens s10, seed 003).

Affine `theta = R gamma + b` (Grosse eq. (7)): `grad_gamma = R^T g`, and every curvature of the
form `E[J^T A J]` as well as the Hessian transforms as `C_gamma = R^T C R` (Grosse eq. (9)).
Hence an *undamped* step solving `C_gamma d_gamma = -R^T g` maps back to a solution of
`C d = -g` (`d = R d_gamma`): Newton, Gauss-Newton and natural gradient commute with the
reparameterization. The solution is checked by its residual, so singular G and F (n > B C)
are handled: any solution of the transformed system maps to a solution of the original one.
Negative controls: gradient descent maps to `-R R^T g` (Grosse eq. (8)); damping adds
`lambda I`, not `lambda R^T R` (Grosse s2.3, "invariance only holds for the undamped versions").

Nonlinear `theta = sinh(gamma)` elementwise (Martens s10): `J_g = diag(cosh gamma)`,
`d^2 theta_j / dgamma_j^2 = sinh gamma_j = theta_j`. G, F and EF pull back as `J_g^T C J_g`
because `J_{f o g} = J_f J_g` (checked by central differences of the outputs in mpmath),
while the Hessian gains `sum_j [grad h]_j H_[g]_j = diag(g * theta)` (checked by a second
difference of `h o g` in mpmath): the negative control.

Tolerances: residuals of least-squares solves, mapped back through `R^{-T}`, are
`solve_rtol(condition = kappa(R)^2)` relative to `||C|| ||d|| + ||g||`. Finite differences use
`eps = 2^-30` at 40 digits: truncation `eps^2 ~ 1e-18` times the third/fourth derivative
and rounding `1e-40 / eps^2 ~ 1e-22` both sit below float64's rounding of the right-hand
sides, so those comparisons use `exact_rtol`.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ngd_ref import Loss, Problem
from ngd_ref.dense import get_loss, mp_backend, network_outputs
from verify._policy import tolerance_policy
from verify._tolerance import compare
from verify.identities._common import (
    GRADIENT_NOT_DEGENERATE,
    default_damping,
    default_direction,
    exact_rtol,
    gauss_newton_magnitude,
    magnitude,
    problem_rng,
    reference,
    smooth_along,
    solve_tolerance,
)
from verify.identities._registry import detectable, identity, result, separated

__all__ = [
    "affine_invariance",
    "damped_steps_not_invariant",
    "default_reparameterization",
    "wide_reparameterization",
    "gradient_descent_not_invariant",
    "hessian_not_pullback",
    "numerically_consistent",
    "pullback_curvatures",
    "reparameterization_grid",
]

GROSSE = "Grosse ch.4 s2.3 (seed 002)"
MARTENS = "Martens s10 (seed 003)"
FD_DIGITS = 40
FD_STEP_EXPONENT = 30


#: `log2 kappa(R)` of the wide reparameterization of `affine_invariance` (kappa = 64).
WIDE_EXPONENT = 6
#: `log2 kappa(R)` of `affine_invariance`'s grid besides the default R (kappa <= 4): 64, 1024.
KAPPA_EXPONENTS = (WIDE_EXPONENT, 10)
#: `lambda / ||C||_2` of the damped invariance (damping `lambda R^T R` in gamma-space).
DAMPING_GRID = (2.0**-6, 1.0, 2.0**6)


def default_reparameterization(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """`(R, b)`: `R = Q diag(2^u)`, `Q` a seeded orthogonal matrix, `u ~ U[-1, 1]` (kappa <= 4)."""
    rng = problem_rng(problem, "reparameterization")
    q, _ = np.linalg.qr(rng.standard_normal((problem.n_params,) * 2))
    r = q * 2.0 ** rng.uniform(-1.0, 1.0, problem.n_params)
    return r, rng.standard_normal(problem.n_params)


def wide_reparameterization(problem: Problem, exponent: int = WIDE_EXPONENT
                            ) -> tuple[np.ndarray, np.ndarray]:
    """`(R, b)` with `kappa(R) = 2^exponent` exactly: `u` spread over `[0, exponent]`.

    `R = Q diag(2^u)` with a seeded orthogonal Q (independent of the default one and of the
    other exponents) and `u = linspace(0, exponent)` in seeded order.
    """
    purpose = ("reparameterization-wide" if exponent == WIDE_EXPONENT
               else f"reparameterization-wide-{exponent}")
    rng = problem_rng(problem, purpose)
    q, _ = np.linalg.qr(rng.standard_normal((problem.n_params,) * 2))
    u = rng.permutation(np.linspace(0.0, exponent, problem.n_params))
    return q * 2.0**u, rng.standard_normal(problem.n_params)


def _transformed(problem: Problem, r: np.ndarray, curvature: str) -> np.ndarray:
    """Compute `C_gamma` in gamma-space (Grosse eq. (9)).

    From `J_b R` and the middles for G and F (independent of the assembled `C`), as
    `R^T H R` for the Hessian.
    """
    ref = reference(problem)
    if curvature == "hessian":
        return r.T @ ref.hessian @ r
    middles = ref.loss_hessians if curvature == "ggn" else ref.output_fishers
    jr = np.einsum("bcn,nm->bcm", ref.jacobians, r)
    return problem.scale * np.einsum("bci,bcd,bdj->ij", jr, middles, jr)


def _steps(problem: Problem, r: np.ndarray, curvature: str, damping: float):
    """The step in gamma-space mapped back (`R d_gamma`) and the original-space system."""
    ref = reference(problem)
    c, g = ref.matrix(curvature), ref.gradient
    c_gamma = _transformed(problem, r, curvature) + damping * np.eye(problem.n_params)
    d_gamma = scipy.linalg.lstsq(c_gamma, -(r.T @ g))[0]
    return r @ d_gamma, c, g


def numerically_consistent(c: np.ndarray, g: np.ndarray, tol: float, band: float) -> bool:
    """Whether `C d = -g` is solvable in float64 without the numerically null directions.

    Solves by least squares with singular values below `band * ||C||_2` dropped and applies
    the same residual test as `affine_invariance`. Those directions are null to rounding and
    a solver may drop them: in gamma-space the singular values of `R^T C R` move relative to
    each other by up to `kappa(R)^2`, so `band = kappa(R)^2 tol`. An indefinite G or F can
    lose rank by cancellation while `g` stays in the range of the Jacobians: exactly
    solvable, yet not in float64 (fuzzing found `lambda = -3.6e-15 ||G||` carrying `5e-8` of
    `g`, whose solution `d ~ 5e7` is set by rounding).

    Args:
        c: the curvature `C` (symmetric, `(n, n)`).
        g: the gradient.
        tol: the residual test's tolerance (`affine_invariance`'s `solve_rtol`).
        band: relative singular-value cutoff of the least-squares solve.
    """
    d = scipy.linalg.lstsq(c, -g, cond=band)[0]
    mag = float(np.linalg.norm(c) * np.linalg.norm(d) + np.linalg.norm(g))
    return compare(c @ d, -g, tolerance=tol, magnitude=mag).passed


def reparameterization_grid(problem: Problem) -> list[tuple[np.ndarray, np.ndarray]]:
    """The default R (kappa <= 4) and `wide_reparameterization` at each `KAPPA_EXPONENTS`."""
    return [default_reparameterization(problem),
            *(wide_reparameterization(problem, e) for e in KAPPA_EXPONENTS)]


@identity("affine_invariance", source=f"{GROSSE}; {MARTENS}",
          hypotheses=(GRADIENT_NOT_DEGENERATE,),
          statement="undamped Newton, Gauss-Newton and natural gradient steps commute with "
                    "w = R w~ + b (kappa(R) in {<= 4, 64, 1024}); damped G and F steps commute "
                    "when the damping transforms too, lambda R^T R (lambda / ||C|| in 2^-6, 1, "
                    "2^6)")
def affine_invariance(problem: Problem, *, reparameterization=None):
    """`R d_gamma` solves `C d = -g` for `C` in {H, G, F} (Grosse s2.3; Martens s10).

    Undamped: over the grid `reparameterization_grid` (kappa(R) = 4, 64, 1024), by residual.
    Hypothesis: `C d = -g` has a solution, to working precision (`numerically_consistent`);
    curvatures for which it has none are left out (the mapped-back least-squares solution
    minimizes `||R^T (C d + g)||`, not `||C d + g||`, so there is nothing invariant to check).

    Damped (Grosse s2.3: invariance "only holds for the undamped versions" -- of a damping
    `lambda I` in each parameterization): with the damping metric transformed as the
    curvature is, `R^T (C + lambda I) R = C_gamma + lambda R^T R`, so
    `R (C_gamma + lambda R^T R)^{-1} (-R^T g) = -(C + lambda I)^{-1} g`, compared with the
    reference's `damped_update` for the PSD G and F (positive definite for lambda > 0) at
    `lambda / ||C||_2` in `DAMPING_GRID`, on the default and kappa = 64 R's. Tolerance:
    `solve_rtol` with condition `kappa(R)^2 kappa(C + lambda I)`, relative to the step.

    Args:
        problem: the problem.
        reparameterization: `(R, b)`; default the grid; `b` does not enter the step
            (translation invariance, Grosse s2.2).
    """
    grid = ([reparameterization] if reparameterization is not None
            else reparameterization_grid(problem))
    ref = reference(problem)
    out = []
    for r, _ in grid:
        kappa_r2 = float(np.linalg.cond(r)) ** 2
        tol = solve_tolerance(problem, kappa_r2)
        for curvature in ("hessian", "ggn", "fisher"):
            if not numerically_consistent(ref.matrix(curvature), ref.gradient, tol,
                                          kappa_r2 * tol):
                continue
            d, c, g = _steps(problem, r, curvature, 0.0)
            mag = float(np.linalg.norm(c) * np.linalg.norm(d) + np.linalg.norm(g))
            cmp = compare(c @ d, -g, tolerance=tol, magnitude=mag)
            out.append(result("affine_invariance", problem, cmp,
                              f"{curvature}: C (R d_gamma) = -g (kappa(R) = "
                              f"{np.sqrt(kappa_r2):.3g})", GROSSE))
    for r, _ in grid[:2]:
        out.extend(_damped_invariance(problem, r))
    return out


def _damped_invariance(problem: Problem, r: np.ndarray) -> list:
    """`R (C_gamma + lambda R^T R)^{-1} (-R^T g) = damped_update(C, lambda)` over the grid."""
    ref = reference(problem)
    kappa_r2 = float(np.linalg.cond(r)) ** 2
    out = []
    psd = ["fisher"] + (["ggn"] if Loss(problem.loss).spec.hessian_psd else [])
    for curvature in psd:  # G + lambda I may be singular where G is indefinite
        c = ref.matrix(curvature)
        top = float(np.linalg.eigvalsh(c)[-1])
        c_gamma = _transformed(problem, r, curvature)
        for ratio in DAMPING_GRID:
            lam = ratio * max(top, np.finfo(float).tiny)
            d = r @ np.linalg.solve(c_gamma + lam * (r.T @ r), -(r.T @ ref.gradient))
            tol = solve_tolerance(problem, kappa_r2 * (top + lam) / lam)
            out.append(result("affine_invariance", problem,
                              compare(d, ref.damped_update(curvature, lam), tolerance=tol),
                              f"{curvature}, lambda = {ratio:g} ||C||: R (C_gamma + lambda "
                              f"R^T R)^-1 (-R^T g) = -(C + lambda I)^-1 g (kappa(R) = "
                              f"{np.sqrt(kappa_r2):.3g})", GROSSE))
    return out


@identity("gradient_descent_not_invariant", source=f"{GROSSE} eq. (8)",
          hypotheses=(GRADIENT_NOT_DEGENERATE,),
          statement="gradient descent in w~ is preconditioned by R R^T in w", negative_control=True)
def gradient_descent_not_invariant(problem: Problem, *, reparameterization=None):
    """Negative control: `R (-R^T g) = -R R^T g != -g` for non-orthogonal R (Grosse eq. (8))."""
    r, _ = reparameterization or default_reparameterization(problem)
    g = reference(problem).gradient
    cmp = compare(-(r @ (r.T @ g)), -g, tolerance=exact_rtol(problem))
    return separated("gradient_descent_not_invariant", problem, cmp, "R (-grad_gamma) != -g",
                     f"{GROSSE} eq. (8)")


@identity("damped_steps_not_invariant", source=GROSSE,
          hypotheses=(GRADIENT_NOT_DEGENERATE,),
          statement="damped Gauss-Newton steps do not commute with w = R w~ + b",
          negative_control=True)
def damped_steps_not_invariant(problem: Problem, *, reparameterization=None,
                               damping: float | None = None):
    """Negative control: `R (R^T G R + lambda I)^{-1} R^T g != (G + lambda I)^{-1} g`."""
    r, _ = reparameterization or default_reparameterization(problem)
    lam = default_damping(problem) if damping is None else damping
    d, _, _ = _steps(problem, r, "ggn", lam)
    direct = reference(problem).damped_update("ggn", lam)
    tol = solve_tolerance(problem, float(np.linalg.cond(r)) ** 2)
    cmp = compare(d, direct, tolerance=tol)
    return separated("damped_steps_not_invariant", problem, cmp,
                     f"damped GN step (lambda={lam:.3g}) changes under R", GROSSE)


# ---------------------------------------------------------------------------------------------
# Nonlinear reparameterization theta = sinh(gamma)
# ---------------------------------------------------------------------------------------------
def _mp_objective_and_outputs(problem: Problem, direction: np.ndarray):
    """Outputs at `sinh(gamma +- eps v)` and `h o sinh` at `gamma`, `gamma +- eps v`, in mpmath."""
    bk = mp_backend(FD_DIGITS)
    loss = get_loss(problem.loss)
    with bk.precision():
        eps = bk.scalar(2) ** -FD_STEP_EXPONENT
        theta = bk.asarray(problem.params)
        gamma = np.frompyfunc(lambda t: __import__("mpmath").asinh(t), 1, 1)(theta)
        sinh = np.frompyfunc(lambda t: __import__("mpmath").sinh(t), 1, 1)
        v = bk.asarray(direction)
        targets = (problem.targets if problem.targets.dtype.kind == "i"
                   else bk.asarray(problem.targets))
        outputs, values = [], []
        for sign in (1, 0, -1):
            z = network_outputs(problem, sinh(gamma + sign * eps * v), bk)
            outputs.append(z)
            values.append(bk.scalar(problem.scale) * sum(
                loss.value(bk, y, zb) for y, zb in zip(targets, z, strict=True)))
        jvp = (outputs[0] - outputs[2]) / (2 * eps)
        second = (values[0] - 2 * values[1] + values[2]) / (eps * eps)
        return bk.to_float64(jvp), float(second)


def _pullback_direction(problem: Problem, direction: np.ndarray | None):
    """`(v, J_g v)`, `J_g = diag(cosh(asinh(theta)))`; v default seeded by the problem."""
    v = default_direction(problem, "sinh") if direction is None else np.asarray(direction, float)
    return v, np.sqrt(1.0 + problem.params**2) * v


def _pullback_pieces(problem: Problem, direction: np.ndarray | None):
    v, jg_v = _pullback_direction(problem, direction)
    return v, jg_v, *_mp_objective_and_outputs(problem, v)


def _differences_smooth(problem: Problem) -> bool:
    """Hypothesis of the central differences: no ReLU kink within `theta +- eps J_g v`."""
    return smooth_along(problem, _pullback_direction(problem, None)[1], 2.0**-FD_STEP_EXPONENT)


@identity("pullback_curvatures", source=MARTENS,
          statement="G, F, EF transform as J_g^T C J_g under a nonlinear reparameterization",
          applies=_differences_smooth)
def pullback_curvatures(problem: Problem, *, direction: np.ndarray | None = None):
    """`v^T C_gamma v = (J_g v)^T C (J_g v)` for `C` in {G, F, EF} (Martens s10).

    The reparameterization is `theta = sinh(gamma)`.

    `C_gamma` is built from the gamma-space output Jacobian `J_{f o g} v`, measured by a central
    difference of the outputs in mpmath, with the same middle matrices as `C`.
    """
    ref = reference(problem)
    _, jg_v, jvp_fd, _ = _pullback_pieces(problem, direction)
    out = []
    middles = {"ggn": ref.loss_hessians, "fisher": ref.output_fishers}
    for name, mid in middles.items():
        fd_form = problem.scale * np.einsum("bc,bcd,bd->", jvp_fd, mid, jvp_fd)
        mag = gauss_newton_magnitude(ref, mid) * float(jg_v @ jg_v)
        cmp = compare(fd_form, jg_v @ ref.matrix(name) @ jg_v, tolerance=exact_rtol(problem),
                      magnitude=mag)
        out.append(result("pullback_curvatures", problem, cmp, f"{name}: v^T C_gamma v = "
                          "(J_g v)^T C (J_g v)", MARTENS))
    ef_fd = problem.scale * np.sum(np.einsum("bc,bc->b", ref.loss_grads, jvp_fd) ** 2)
    # MAG(EF) from the policy (|g_b| at its closed form): EF itself cancels where g_b ~ 0
    ef_mag = tolerance_policy(problem, "float64").matrix_magnitude("empirical_fisher")
    mag = max(magnitude(ref.empirical_fisher), float(np.linalg.norm(ef_mag))) * float(jg_v @ jg_v)
    cmp = compare(ef_fd, jg_v @ ref.empirical_fisher @ jg_v, tolerance=exact_rtol(problem),
                  magnitude=mag)
    out.append(result("pullback_curvatures", problem, cmp,
                      "empirical_fisher: v^T C_gamma v = (J_g v)^T C (J_g v)", MARTENS))
    return out


@identity("hessian_not_pullback", source=MARTENS,
          hypotheses=(GRADIENT_NOT_DEGENERATE,),
          statement="H_gamma = J_g^T H J_g + sum_j [grad h]_j H_[g]_j, not J_g^T H J_g "
                    "(where that gradient term is detectable)",
          applies=lambda p: _differences_smooth(p))
def hessian_not_pullback(problem: Problem, *, direction: np.ndarray | None = None):
    """Martens s10's Hessian transformation, measured by a second difference in mpmath.

    Two results: the identity (with the `diag(grad h * theta)` term, passes) and the negative
    control (without it, must be separated).
    """
    ref = reference(problem)
    v, jg_v, _, second = _pullback_pieces(problem, direction)
    pulled = float(jg_v @ ref.hessian @ jg_v)
    extra = float(np.sum(ref.gradient * problem.params * v * v))
    mag = (gauss_newton_magnitude(ref) + magnitude(ref.hessian - ref.ggn)) * float(jg_v @ jg_v)
    mag += abs(extra)
    tol = exact_rtol(problem)
    with_term = compare(second, pulled + extra, tolerance=tol, magnitude=mag)
    out = [result("hessian_not_pullback", problem, with_term,
                  "v^T H_gamma v = (J_g v)^T H (J_g v) + sum_j g_j theta_j v_j^2", MARTENS)]
    # the control's predicted gap is the extra term itself, in the comparison's units (a
    # generated problem's gradient term was 2.5e-12 against 100 x tol = 5.9e-12: seed 7)
    scale = max(abs(pulled), mag, np.finfo(np.float64).tiny)
    if detectable(abs(extra) / scale, tol):
        out.append(separated("hessian_not_pullback", problem,
                             compare(second, pulled, tolerance=tol, magnitude=mag),
                             "v^T H_gamma v != (J_g v)^T H (J_g v)", MARTENS))
    return out
