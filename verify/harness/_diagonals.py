"""Checks of exact curvature diagonals (PROTOCOL s5).

`hessian_diag`, `ggn_diag`, `fisher_diag` (PROTOCOL s13), `empirical_fisher_diag`: against
`diag(C)` of the dense reference, tolerance `TolerancePolicy.rtol` relative to `||diag(MAG(C))||`;
repeated calls identical.
"""

from __future__ import annotations

import numpy as np

from verify.harness._context import CheckContext

__all__ = ["DIAGONALS", "check_diagonal"]

DIAGONALS = {
    "hessian_diag": "hessian",
    "ggn_diag": "ggn",
    "fisher_diag": "fisher",  # PROTOCOL s13
    "empirical_fisher_diag": "empirical_fisher",
}


def check_diagonal(ctx: CheckContext) -> None:
    """`ctx.capability(problem)` equals the exact diagonal."""
    name = ctx.capability
    curvature = DIAGONALS[name]
    b = ctx.policy
    ctx.begin(f"{name}_matches_reference")
    value = ctx.port(name, ctx.problem)
    ctx.compare(
        f"{name}_matches_reference",
        value,
        np.diag(b.matrix(curvature)).copy(),
        tolerance=b.rtol,
        magnitude=float(np.linalg.norm(np.diag(b.matrix_magnitude(curvature)))),
        what=f"the exact diagonal of {curvature} (PROTOCOL s5)",
    )
    ctx.deterministic(f"{name}_deterministic", value, lambda: ctx.port(name, ctx.problem))
