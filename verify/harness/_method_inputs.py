"""More inputs for the section 9 checks (issue 14): the cases the v1 checks never supplied.

Each function extends one check of `verify.harness._methods` (it runs that check first, then
its own cases) and is registered in its place through `INPUT_CHECKS`:

* `bfgs_update`: a *generic* pair as well -- `y = w + t s` for a second probe `w`, with `t`
  chosen so that `s^T y = s^T B s / 20 > 0` (the update is defined for any `s^T y > 0`;
  the v1 pair always had `s^T y >= s^T B s / 2`). Powell's damped update (which replaces
  `y` when `s^T y < 0.2 s^T B s`) fails here;
* `lbfgs_direction`: `gamma` omitted, which must be PROTOCOL's default 1;
* `inverse_root`: `ridge` omitted (default 0) on the already-ridged matrix, p = 2 (the orders
  p in {1, 2, 3, 4, 6} are in `_methods.check_inverse_root`);
* `shampoo_direction`: statistics accumulated over three gradients, `L = sum_t G_t G_t^T`,
  `R = sum_t G_t^T G_t` with `G_1` the first layer's weight-shaped gradient and `G_2, G_3`
  probe matrices of its shape, and the direction of `G = G_1`: a port that recomputes `L`
  and `R` from `G` fails;
* `hutchinson_diag`: a diagonal operator `v -> d * v` as well (`hutchinson_diagonal`).
  Every Rademacher sample `z * (d * z)` equals `d` exactly, so the estimate is `d` up to the
  rounding of a mean of `N` equal terms, `rounding_rtol(length=N)` relative to `||d||`: a
  `1/(N-1)` divisor (relative bias `1/(N-1)`) or a non-Rademacher probe fails. The
  statistical test on the Hessian is `_methods.check_hutchinson_diag`'s, unchanged.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import layer_slices
from ngd_ref.dense import inverse_root, lbfgs_direction
from verify._tolerance import rounding_rtol
from verify.harness import _methods
from verify.harness._context import CheckContext
from verify.harness._faults import readonly

__all__ = ["DIAGONAL_SAMPLES", "INPUT_CHECKS"]

#: samples of the diagonal-operator Hutchinson check (exact per sample: any N shows a bias)
DIAGONAL_SAMPLES = 64
#: `s^T y` of the generic BFGS pair, as a fraction of `s^T B s` (below Powell's 0.2)
_CURVATURE_FRACTION = 0.05
_SHAMPOO_EPS = 0.1


def check_bfgs_update(ctx: CheckContext) -> None:
    """`_methods.check_bfgs_update`, then a generic pair with small `s^T y > 0`."""
    _methods.check_bfgs_update(ctx)
    bmat, _ = _methods._spd_pair(ctx)
    s, w = ctx.probe(bmat.shape[0], 2)
    t = (_CURVATURE_FRACTION * float(s @ (bmat @ s)) - float(s @ w)) / float(s @ s)
    _methods.compare_bfgs_update(
        ctx, "bfgs_update_generic_pair", bmat, s, w + t * s,
        f"B + y y^T/(y^T s) - B s s^T B/(s^T B s), generic pair with s^T y = "
        f"{_CURVATURE_FRACTION:g} s^T B s > 0 (PROTOCOL s9: no Powell damping)")


def check_lbfgs_direction(ctx: CheckContext) -> None:
    """`_methods.check_lbfgs_direction`, then the same with `gamma` omitted (default 1)."""
    _methods.check_lbfgs_direction(ctx)
    g, s_list, y_list = _methods._lbfgs_memory(ctx)
    ctx.begin("lbfgs_direction_default_gamma")
    value = ctx.port("lbfgs_direction", g, list(s_list), list(y_list))
    ctx.compare(
        "lbfgs_direction_default_gamma",
        value,
        lbfgs_direction(g, s_list, y_list, 1.0),
        tolerance=rounding_rtol(ctx.dtype, length=g.shape[0], depth=2 * len(s_list)),
        magnitude=float(np.linalg.norm(_methods.two_loop_magnitude(g, s_list, y_list, 1.0))),
        what="H_k g with gamma omitted: PROTOCOL s9's default gamma = 1",
    )


def check_inverse_root(ctx: CheckContext) -> None:
    """`_methods.check_inverse_root`, then `ridge` omitted on an already-ridged matrix."""
    _methods.check_inverse_root(ctx)
    m = ctx.policy.matrix("fisher")
    ridged = m + (float(np.linalg.norm(m, 2)) / 100.0 + 1.0 / 64.0) * np.eye(m.shape[0])
    kappa = float(np.linalg.cond(ridged))
    ctx.begin("inverse_root_default_ridge")
    value = ctx.port("inverse_root", readonly(ridged), 2)
    ctx.compare(
        "inverse_root_default_ridge",
        value,
        inverse_root(ridged, 2, 0.0),
        tolerance=ctx.policy.solve_rtol(kappa, length=m.shape[0], depth=2),
        what=f"M^(-1/2) with ridge omitted: PROTOCOL s9's default ridge = 0 (kappa {kappa:.1e})",
    )


def check_shampoo_direction(ctx: CheckContext) -> None:
    """`_methods.check_shampoo_direction`, then statistics accumulated over three gradients."""
    _methods.check_shampoo_direction(ctx)
    layer = ctx.problem.layers[0]
    shape = layer.weight_shape  # a convolution's Wbar is c_out x (c_in k_h k_w + 1) (s12)
    sl = layer_slices(ctx.problem.layers)[0]
    grad = ctx.policy.ref.gradient[sl].reshape(shape, order="F")
    scale = max(float(np.linalg.norm(grad)), 1.0 / 64.0)
    others = [p.reshape(shape) * scale for p in ctx.probe(grad.size, 2)]
    left = sum(g @ g.T for g in (grad, *others))
    right = sum(g.T @ g for g in (grad, *others))
    _methods.compare_shampoo(
        ctx, "shampoo_direction_accumulated", grad, left, right, _SHAMPOO_EPS,
        "(L + eps I)^(-1/4) G (R + eps I)^(-1/4) with L, R summed over three gradients "
        "(PROTOCOL s9: L and R are inputs, not G G^T and G^T G)")


def check_hutchinson_diag(ctx: CheckContext) -> None:
    """`_methods.check_hutchinson_diag`, then `hutchinson_diagonal`."""
    _methods.check_hutchinson_diag(ctx)
    hutchinson_diagonal(ctx)


def hutchinson_diagonal(ctx: CheckContext) -> None:
    """On `v -> d * v` every Rademacher sample is exactly `d`: the estimate must be `d`."""
    n = ctx.problem.n_params
    (d,) = ctx.probe(n)

    def matvec(v):
        return d * np.asarray(v, dtype=np.float64)

    ctx.begin("hutchinson_diag_diagonal_operator")
    value = ctx.port("hutchinson_diag", matvec, n, DIAGONAL_SAMPLES, ctx.seed)
    ctx.compare(
        "hutchinson_diag_diagonal_operator",
        value,
        d,
        tolerance=rounding_rtol(ctx.dtype, length=DIAGONAL_SAMPLES, depth=1),
        what=f"mean of z * (d * z) over {DIAGONAL_SAMPLES} Rademacher z on a diagonal operator: "
        "every sample is exactly d (PROTOCOL s9; a 1/(N-1) divisor or a non-Rademacher "
        "probe is off by at least 1/(N-1))",
    )


#: capability -> the extended check (replaces `_methods.METHOD_CHECKS`'s entry)
INPUT_CHECKS = {
    "bfgs_update": check_bfgs_update,
    "lbfgs_direction": check_lbfgs_direction,
    "inverse_root": check_inverse_root,
    "shampoo_direction": check_shampoo_direction,
    "hutchinson_diag": check_hutchinson_diag,
}
