"""Checks of curvature-vector products (PROTOCOL s5).

Capabilities: `hvp`, `ggn_vp`, `fisher_vp`, `empirical_fisher_vp`.

For two probe vectors `v, w` (dyadic, exact in float32) and scalars `a = 3/4, b = -5/4`:

* `C v` against the dense reference's `C @ v`, tolerance `TolerancePolicy.rtol` relative to
  `||MAG(C) |v| ||` (the product's magnitude);
* linearity `C(a v + b w) = a C v + b C w` -- a port that caches, normalizes or
  otherwise treats its argument non-linearly fails even where its `C v` happens to match;
* repeated calls identical.
"""

from __future__ import annotations

import numpy as np

from verify.harness._context import CheckContext

__all__ = ["PRODUCTS", "check_product"]

#: product method -> the curvature matrix it multiplies by
PRODUCTS = {
    "hvp": "hessian",
    "ggn_vp": "ggn",
    "fisher_vp": "fisher",
    "empirical_fisher_vp": "empirical_fisher",
}

_A, _B = 0.75, -1.25


def check_product(ctx: CheckContext) -> None:
    """`ctx.capability(problem, v)` equals `C v`, is linear in v and deterministic."""
    name = ctx.capability
    curvature = PRODUCTS[name]
    b = ctx.policy
    matrix, mag = b.matrix(curvature), b.matrix_magnitude(curvature)
    v, w = ctx.probe(ctx.problem.n_params, 2)
    ctx.begin(f"{name}_matches_reference")
    cv = ctx.port(name, ctx.problem, v)
    ctx.compare(
        f"{name}_matches_reference",
        cv,
        matrix @ v,
        tolerance=b.rtol,
        magnitude=float(np.linalg.norm(mag @ np.abs(v))),
        what=f"{curvature} times a probe vector (PROTOCOL s5)",
    )
    ctx.begin(f"{name}_linear")
    cw = ctx.port(name, ctx.problem, w)
    combined = ctx.port(name, ctx.problem, _A * v + _B * w)
    cv_arr = ctx.require_shape(f"{name}_linear", cv, v.shape)
    cw_arr = ctx.require_shape(f"{name}_linear", cw, v.shape) if cv_arr is not None else None
    if cv_arr is not None and cw_arr is not None:
        ctx.compare(
            f"{name}_linear",
            combined,
            _A * cv_arr + _B * cw_arr,
            tolerance=b.rtol,
            magnitude=float(np.linalg.norm(mag @ np.abs(_A * v) + mag @ np.abs(_B * w))),
            what="C(a v + b w) = a C v + b C w",
        )
    ctx.deterministic(f"{name}_deterministic", cv, lambda: ctx.port(name, ctx.problem, v))
