"""Checks of damped updates (PROTOCOL s5: `damped_update(problem, curvature, damping)`).

For every curvature in {hessian, ggn, fisher, empirical_fisher} and two dampings, the port's
`-(C + lambda I)^{-1} grad h` (Grosse ch. 4 eq. 5 for the Newton step, eq. 13 for the damped
Gauss-Newton/natural gradient step, seed 002) is compared with the dense solve, tolerance
`solve_rtol` with the condition number of `C + lambda I` (see `verify._policy`). The dampings are
1 and 1/10; for the (possibly indefinite) Hessian both are shifted by `2 max(0, -lambda_min(H))`
so that `H + lambda I` is positive definite and the step is well defined.

`damped_update_indefinite` (issue 14): the protocol's formula holds for any nonsingular
`C + lambda I`, so where H is indefinite it is also checked at a damping that leaves
`H + lambda I` indefinite: `indefinite_damping` picks, among the midpoints
`lambda = -(l_i + l_{i+1})/2 >= 0` between consecutive eigenvalues of H with `l_i < 0`, the
one farthest from the spectrum (the best-conditioned indefinite system). A port that adds
damping until a Cholesky factorization succeeds, or solves `|H| + lambda I`, fails there;
where H is positive semidefinite the check is recorded as skipped.
"""

from __future__ import annotations

import numpy as np

from verify._report import Status
from verify.harness._context import CheckContext

__all__ = ["CURVATURES", "DAMPINGS", "check_damped_update", "dampings_for", "indefinite_damping"]

CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")
DAMPINGS = (1.0, 0.1)


def dampings_for(matrix: np.ndarray) -> tuple[float, ...]:
    """`DAMPINGS`, shifted for an indefinite matrix so that `C + lambda I` is positive definite."""
    shift = 2.0 * max(0.0, -float(np.linalg.eigvalsh(matrix)[0]))
    return tuple(d + shift for d in DAMPINGS)


def indefinite_damping(matrix: np.ndarray, noise: float = 0.0) -> float | None:
    """A damping `>= 0` leaving `matrix + lambda I` indefinite and nonsingular, or None.

    The midpoint of the widest gap between consecutive eigenvalues `l_i < l_{i+1}` with
    `l_i < -noise` and `l_i + l_{i+1} <= 0` (so `lambda = -(l_i + l_{i+1})/2 >= 0` puts `l_i`
    below and `l_{i+1}` above zero); None when no eigenvalue is below `-noise` (a negative
    eigenvalue at the rounding level of the port's matrix is not an indefinite system).
    """
    values = np.linalg.eigvalsh(matrix)
    gaps = [
        (hi - lo, -(lo + hi) / 2.0)
        for lo, hi in zip(values[:-1], values[1:], strict=True)
        if lo < -noise and hi > lo and lo + hi <= 0
    ]
    return max(gaps)[1] if gaps else None


def check_damped_update(ctx: CheckContext) -> None:
    """`damped_update` for every curvature and both dampings."""
    b = ctx.policy
    for curvature in CURVATURES:
        matrix = b.matrix(curvature)
        for damping in dampings_for(matrix):
            _compare_update(ctx, f"damped_update_{curvature}", curvature, damping)
    noise = b.rtol * float(np.linalg.norm(b.matrix_magnitude("hessian")))
    shift = indefinite_damping(b.matrix("hessian"), noise)
    if shift is None:
        ctx.record("damped_update_indefinite", Status.SKIP,
                   "H is positive semidefinite here: no indefinite damped system to check")
    else:
        _compare_update(ctx, "damped_update_indefinite", "hessian", shift)


def _compare_update(ctx: CheckContext, check: str, curvature: str, damping: float) -> None:
    """One `damped_update` call against the dense solve (Higham Thm 7.2 tolerance)."""
    b = ctx.policy
    ref = b.ref
    matrix = b.matrix(curvature)
    tolerance, kappa = b.solve_tolerance(
        matrix, b.matrix_magnitude(curvature), damping, ref.gradient, b.gradient_magnitude
    )
    ctx.begin(check)
    value = ctx.port("damped_update", ctx.problem, curvature, damping)
    ctx.compare(
        check,
        value,
        ref.damped_update(curvature, damping),
        tolerance=tolerance,
        what=f"-({curvature} + {damping:.3g} I)^-1 grad h (Grosse eq. 13; kappa {kappa:.1e})",
    )
