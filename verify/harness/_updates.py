"""Checks of damped updates (PROTOCOL s5: `damped_update(problem, curvature, damping)`).

For every curvature in {hessian, ggn, fisher, empirical_fisher} and two dampings, the port's
`-(C + lambda I)^{-1} grad h` (Grosse ch. 4 eq. 5 for the Newton step, eq. 13 for the damped
Gauss-Newton/natural gradient step, seed 002) is compared with the dense solve, tolerance
`solve_rtol` with the condition number of `C + lambda I` (see `verify._policy`). The dampings are
1 and 1/10; for the (possibly indefinite) Hessian both are shifted by `2 max(0, -lambda_min(H))`
so that `H + lambda I` is positive definite and the step is well defined.
"""

from __future__ import annotations

import numpy as np

from verify.harness._context import CheckContext

__all__ = ["CURVATURES", "DAMPINGS", "check_damped_update", "dampings_for"]

CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")
DAMPINGS = (1.0, 0.1)


def dampings_for(matrix: np.ndarray) -> tuple[float, ...]:
    """`DAMPINGS`, shifted for an indefinite matrix so that `C + lambda I` is positive definite."""
    shift = 2.0 * max(0.0, -float(np.linalg.eigvalsh(matrix)[0]))
    return tuple(d + shift for d in DAMPINGS)


def check_damped_update(ctx: CheckContext) -> None:
    """`damped_update` for every curvature and both dampings."""
    b = ctx.policy
    ref = b.ref
    for curvature in CURVATURES:
        matrix = b.matrix(curvature)
        for damping in dampings_for(matrix):
            check = f"damped_update_{curvature}"
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
                what=f"-({curvature} + {damping:.3g} I)^-1 grad h (Grosse eq. 13; "
                f"kappa {kappa:.1e})",
            )
