"""Checks of the objective and the dense curvature matrices (PROTOCOL s3 and s5).

* `loss`, `gradient`: against the dense reference (`h = c sum_b L_b`, `grad h = c sum_b
  J_b^T dL/dz_b`, Martens s3), repeated calls identical.
* `hessian`, `ggn`, `fisher`, `empirical_fisher`: against the exact dense matrices
  (Martens s3, s5, s7; seeds 000/001 for the Fisher), symmetry (all four are symmetric by
  definition), repeated calls identical.
Tolerances: `TolerancePolicy.rtol` relative to `max(||desired||, MAG)` (see `verify._policy`).
"""

from __future__ import annotations

import numpy as np

from verify.harness._context import CheckContext

__all__ = ["check_gradient", "check_loss", "check_matrix"]

_SOURCES = {
    "hessian": "H, the Hessian of h (PROTOCOL s3)",
    "ggn": "G = c sum_b J_b^T H_L,b J_b (Martens s3, seed 003)",
    "fisher": "F = c sum_b J_b^T F_R,b J_b, exact expectation (Martens s5, seed 003)",
    "empirical_fisher": "EF = c sum_b g_b g_b^T (Martens s7, seed 003)",
}


def check_loss(ctx: CheckContext) -> None:
    """`loss(problem)` equals `h(theta)`."""
    b = ctx.policy
    ctx.begin("loss_matches_reference")
    value = ctx.port("loss", ctx.problem)
    ctx.compare(
        "loss_matches_reference",
        value,
        float(b.ref.loss),
        tolerance=b.rtol,
        magnitude=b.loss_magnitude,
        what="h = c sum_b L(y_b, f(x_b)) (PROTOCOL s1)",
    )
    ctx.deterministic("loss_deterministic", value, lambda: ctx.port("loss", ctx.problem))


def check_gradient(ctx: CheckContext) -> None:
    """`gradient(problem)` equals `grad h`."""
    b = ctx.policy
    ctx.begin("gradient_matches_reference")
    value = ctx.port("gradient", ctx.problem)
    ctx.compare(
        "gradient_matches_reference",
        value,
        b.ref.gradient,
        tolerance=b.rtol,
        magnitude=float(np.linalg.norm(b.gradient_magnitude)),
        what="grad h = c sum_b J_b^T dL/dz_b (Martens s3)",
    )
    ctx.deterministic("gradient_deterministic", value, lambda: ctx.port("gradient", ctx.problem))


def check_matrix(ctx: CheckContext) -> None:
    """A dense curvature matrix (`ctx.capability` names it) against the reference."""
    name = ctx.capability
    b = ctx.policy
    magnitude = float(np.linalg.norm(b.matrix_magnitude(name)))
    ctx.begin(f"{name}_matches_reference")
    value = ctx.port(name, ctx.problem)
    comparison = ctx.compare(
        f"{name}_matches_reference",
        value,
        b.matrix(name),
        tolerance=b.rtol,
        magnitude=magnitude,
        what=_SOURCES[name],
    )
    if not comparison.reason:
        ctx.symmetric(f"{name}_symmetric", value, tolerance=b.rtol, magnitude=magnitude)
    ctx.deterministic(f"{name}_deterministic", value, lambda: ctx.port(name, ctx.problem))
