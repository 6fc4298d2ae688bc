"""Spectra of damped steps and the convergence of CG against gradient descent (seed 002).

Grosse ch. 4 (seed 002):

* s2.1, eq. (5): `(H + eta I)^{-1}` shares the eigenvectors of H with eigenvalues
  `(nu_i + eta)^{-1}`; for PSD curvature the damped step stretches g by at most `eta^{-1}`.
  `damped_inverse_spectrum` checks, for the GGN of a convex loss, the reference's damped step
  in H's eigenbasis, `q_i^T d = -q_i^T g / (nu_i + eta)`, the bound `||d|| <= ||g|| / eta`, and
  the preconditioned spectrum `nu_i / (nu_i + eta)` in `[0, 1)` (s3, the `H~` of
  "preconditioning"). Negative control `damped_newton_stretch_unbounded`: at an indefinite H,
  `eta = -2/3 nu_min` leaves `|nu_min + eta| = eta / 2`, so the damped Newton step stretches
  that direction by `2 / eta`: the `eta^{-1}` bound needs PSD curvature.
* s4 (CG vs GD, "iteration complexity ~ sqrt(kappa) vs kappa"): on the SPD quadratic
  `q(x) = 1/2 x^T A x - b^T x`, `A = G + eta I` (`eta = ||G||_2 / KAPPA_TARGET`, so
  `kappa(A) <= 1 + KAPPA_TARGET`), `b = -g`, both from 0: gradient descent's iterates lie in
  the Krylov spaces `K_k(A, b)` over which CG minimizes q, so `q(x_k^CG) <= q(x_k^GD)` for every
  k; CG's A-norm error obeys `||e_k|| <= 2 ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^k ||e_0||`
  and GD's with step `2 / (L + mu)` obeys `||e_k|| <= ((kappa - 1) / (kappa + 1))^k ||e_0||`
  (Nocedal & Wright eq. (5.36); `cg_beats_gradient_descent`). Negative control
  `gradient_descent_rate_is_kappa`: with `e_0` on the extreme eigenvectors GD attains its rate
  exactly, so after `k` steps its error exceeds CG's `sqrt(kappa)` bound, where predicted to by
  more than the margin.

Tolerances: `solve_rtol` with the condition number of the matrix solved (A, or `G + eta I`),
relative to the quantity's scale (`|q*|`, `||e_0||_A`, `||g|| / eta`).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import cg_iterates
from verify._tolerance import compare
from verify.identities._common import at_most, reference, solve_tolerance
from verify.identities._registry import MARGIN, detectable, identity, result

__all__ = [
    "KAPPA_TARGET",
    "cg_beats_gradient_descent",
    "damped_inverse_spectrum",
    "damped_newton_stretch_unbounded",
    "gradient_descent_rate_is_kappa",
]

GROSSE_S2 = "Grosse ch.4 s2.1 eq. (5), s3 (seed 002)"
GROSSE_S4 = "Grosse ch.4 s4 (seed 002); Nocedal & Wright eq. (5.36)"
#: `||G||_2 / eta` of the CG-vs-GD quadratic: `kappa(A) <= 1 + KAPPA_TARGET`.
KAPPA_TARGET = 2.0**6
#: Iterations of the per-iteration comparison (at most n).
CG_ITERATIONS = 10
#: The most GD iterations of the rate control.
GD_ITERATIONS = 200


def _tol(problem: Problem, condition: float) -> float:
    return solve_tolerance(problem, condition)


def _convex(problem: Problem) -> bool:
    return Loss(problem.loss).spec.hessian_psd and bool(np.any(reference(problem).gradient != 0))


def _ggn_eta(problem: Problem) -> float:
    norm = float(np.linalg.norm(reference(problem).ggn, 2))
    return norm / KAPPA_TARGET if norm > 0 else 1.0


@identity("damped_inverse_spectrum", source=GROSSE_S2,
          statement="(G + eta I)^{-1} has eigenvalues (nu_i + eta)^{-1} on G's eigenvectors: the "
                    "damped step stretches g by <= 1/eta; nu/(nu + eta) in [0, 1)",
          applies=_convex)
def damped_inverse_spectrum(problem: Problem):
    """The damped GGN step in G's eigenbasis (module docstring); `eta = ||G||_2 / 64`."""
    ref = reference(problem)
    eta = _ggn_eta(problem)
    values, vectors = np.linalg.eigh(ref.ggn)
    g = ref.gradient
    d = ref.damped_update("ggn", eta)
    tol = _tol(problem, (float(np.abs(values).max()) + eta) / eta)
    spectral = -(vectors.T @ g) / (values + eta)
    pre = values / (values + eta)
    return [
        result("damped_inverse_spectrum", problem,
               compare(vectors.T @ d, spectral, tolerance=tol,
                       magnitude=float(np.linalg.norm(g)) / eta),
               "q_i^T d = -q_i^T g / (nu_i + eta)", GROSSE_S2),
        at_most("damped_inverse_spectrum", problem,
                float(np.linalg.norm(d)) * eta / float(np.linalg.norm(g)) - 1.0, tol,
                "||d|| eta / ||g|| - 1 (stretch at most 1/eta)", GROSSE_S2),
        at_most("damped_inverse_spectrum", problem,
                max(float(pre.max()) - 1.0, -float(pre.min())), tol,
                "distance of nu / (nu + eta) outside [0, 1)", GROSSE_S2),
    ]


def _stretch_eta(problem: Problem) -> float | None:
    """`eta = -2/3 nu_min` where H's lowest eigenvalue is resolved and no eigenvalue meets -eta."""
    ref = reference(problem)
    values = np.linalg.eigvalsh(ref.hessian)
    scale = float(np.abs(values).max())
    eta = -2.0 * float(values[0]) / 3.0
    if eta <= 0:
        return None
    tol = _tol(problem, scale / (eta / 2))
    if not detectable(1.0, tol) or float(np.abs(values + eta).min()) < eta / 4:
        return None
    return eta


@identity("damped_newton_stretch_unbounded", source=GROSSE_S2, negative_control=True,
          statement="at an indefinite H, eta = -2/3 nu_min: (H + eta I)^{-1} stretches q_min by "
                    "2/eta > 1/eta", applies=lambda p: _stretch_eta(p) is not None)
def damped_newton_stretch_unbounded(problem: Problem):
    """Negative control of the `eta^{-1}` bound: the stretch along `q_min` is `1/|nu + eta|`."""
    ref = reference(problem)
    eta = _stretch_eta(problem)
    assert eta is not None  # `applies`
    values, vectors = np.linalg.eigh(ref.hessian)
    q = vectors[:, 0]
    stretched = np.linalg.solve(ref.hessian + eta * np.eye(problem.n_params), q)
    stretch = float(np.linalg.norm(stretched)) * eta
    tol = _tol(problem, float(np.abs(values).max()) / (eta / 2))
    return at_most("damped_newton_stretch_unbounded", problem, 1.0 - stretch, -MARGIN * tol,
                   f"1 - eta ||(H + eta I)^-1 q_min|| (predicted 1 - 2 = -1; eta = {eta:.3g})",
                   GROSSE_S2, negative_control=True)


def _quadratic(problem: Problem):
    """`(A, b, x*, mu, L)` of the CG-vs-GD quadratic (module docstring)."""
    ref = reference(problem)
    a = ref.ggn + _ggn_eta(problem) * np.eye(problem.n_params)
    values = np.linalg.eigvalsh(a)
    b = -ref.gradient
    return a, b, np.linalg.solve(a, b), float(values[0]), float(values[-1])


def _gd_iterates(a: np.ndarray, b: np.ndarray, x0: np.ndarray, step: float, count: int):
    x, out = x0, [x0]
    for _ in range(count):
        x = x - step * (a @ x - b)
        out.append(x)
    return out


def _a_norm(a: np.ndarray, v: np.ndarray) -> float:
    return float(np.sqrt(max(float(v @ a @ v), 0.0)))


@identity("cg_beats_gradient_descent", source=GROSSE_S4,
          statement="q(x_k^CG) <= q(x_k^GD) per iteration; CG's A-norm error <= 2 rho_CG^k, "
                    "GD's <= rho_GD^k (rho with sqrt(kappa) and kappa; kappa <= 65); for b = -g "
                    "and the worst case b = A (q_min + q_max)",
          applies=_convex)
def cg_beats_gradient_descent(problem: Problem):
    """The Krylov optimality of CG and both rate bounds, k = 1..min(n, CG_ITERATIONS).

    Two right-hand sides: the problem's `-g`, and `A (q_min + q_max)`, GD's worst case (its
    error then shrinks by exactly `rho_GD` per step, as does steepest descent's with exact
    line searches), which CG solves in two iterations. A CG that returns fewer iterates (it
    stopped at a zero residual) is padded with its last.
    """
    a, b, x_star, mu, lip = _quadratic(problem)
    kappa = lip / mu
    count = min(problem.n_params, CG_ITERATIONS)
    tol = _tol(problem, kappa)
    rho_cg = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    rho_gd = (kappa - 1) / (kappa + 1)
    _, vectors = np.linalg.eigh(a)
    worst = vectors[:, 0] + vectors[:, -1]
    out = []
    for what, rhs, solution in (("b = -g", b, x_star), ("b = A (q_min + q_max)", a @ worst, worst)):
        cg = [np.asarray(x, dtype=np.float64)
              for x in cg_iterates(a, rhs, np.zeros(problem.n_params), maxiter=count)]
        cg += [cg[-1]] * (count + 1 - len(cg))
        gd = _gd_iterates(a, rhs, np.zeros(problem.n_params), 2.0 / (lip + mu), count)

        def q(x, rhs=rhs):
            return 0.5 * float(x @ a @ x) - float(rhs @ x)

        q_star, e0 = abs(q(solution)), _a_norm(a, solution)
        worst_q = max((q(x_cg) - q(x_gd)) / q_star for x_cg, x_gd in zip(cg[1:], gd[1:],
                                                                          strict=True))
        worst_cg = max(_a_norm(a, x - solution) / e0 - 2 * rho_cg**k for k, x in enumerate(cg))
        worst_gd = max(_a_norm(a, x - solution) / e0 - rho_gd**k for k, x in enumerate(gd))
        out += [
            at_most("cg_beats_gradient_descent", problem, worst_q, tol,
                    f"{what}: max_k (q(CG_k) - q(GD_k)) / |q*| over {count} iterations",
                    GROSSE_S4),
            at_most("cg_beats_gradient_descent", problem, worst_cg, tol,
                    f"{what}: max_k ||e_k^CG||_A / ||e_0||_A - 2 rho_CG^k (kappa = {kappa:.3g})",
                    GROSSE_S4),
            at_most("cg_beats_gradient_descent", problem, worst_gd, tol,
                    f"{what}: max_k ||e_k^GD||_A / ||e_0||_A - rho_GD^k", GROSSE_S4),
        ]
    return out


def _rate_iterations(problem: Problem) -> int | None:
    """The least k with `rho_GD^k > (MARGIN + 2) (2 rho_CG^k + tol)`, if <= GD_ITERATIONS."""
    _, _, _, mu, lip = _quadratic(problem)
    kappa = lip / mu
    tol = _tol(problem, kappa)
    rho_cg = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    rho_gd = (kappa - 1) / (kappa + 1)
    for k in range(1, GD_ITERATIONS + 1):
        if detectable(rho_gd**k, 2 * rho_cg**k + tol):
            return k
    return None


@identity("gradient_descent_rate_is_kappa", source=GROSSE_S4, negative_control=True,
          statement="GD (step 2/(L + mu)) from e_0 on the extreme eigenvectors has error "
                    "rho_GD^k, above CG's 2 rho_CG^k bound: its rate is kappa, not sqrt(kappa)",
          applies=lambda p: _convex(p) and _rate_iterations(p) is not None)
def gradient_descent_rate_is_kappa(problem: Problem):
    """Negative control: GD does not reach CG's `sqrt(kappa)` rate (hypothesis: detectable k)."""
    a, _, _, mu, lip = _quadratic(problem)
    values, vectors = np.linalg.eigh(a)
    x_star = vectors[:, 0] + vectors[:, -1]
    k = _rate_iterations(problem)
    assert k is not None  # `applies`
    gd = _gd_iterates(a, a @ x_star, np.zeros(problem.n_params), 2.0 / (lip + mu), k)
    kappa = lip / mu
    rho_cg = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    tol = _tol(problem, kappa)
    error = _a_norm(a, gd[-1] - x_star) / _a_norm(a, x_star)
    return at_most("gradient_descent_rate_is_kappa", problem, -error,
                   -MARGIN * (2 * rho_cg**k + tol),
                   f"-||e_k^GD||_A / ||e_0||_A at k = {k} vs 100 x CG's bound 2 rho_CG^k",
                   GROSSE_S4, negative_control=True)
