"""Checks of the seeds' other second-order methods (PROTOCOL s9; seed 004 and seed 002).

Every input is built from the problem so the checks run over the whole zoo:

* `trust_region_update(problem, damping)`: `-(|H| + lambda I)^{-1} grad h` with
  `|H| = Q |Lambda| Q^T`, against `ngd_ref.dense.trust_region_update`, lambda in {1, 1/10};
* `lowrank_ggn_update(problem, damping)`: `-(G + lambda I)^{-1} grad h` (push-through),
  against `ngd_ref.dense.lowrank_ggn_update`;
* `bfgs_update(B, s, y)` with `B = F + I` (F the true Fisher, always PSD, unlike G for
  `gaussian_logvar`), a probe `s` and `y = (F + I/2) s` (so `y^T s > 0`);
* `lbfgs_direction(g, s_list, y_list, gamma=1/2)` with three such pairs, oldest first;
* `lbfgs_step(problem, s_list, y_list, lr=1/4, gamma=1/2)` (protocol extension) with the same
  pairs: the new parameters, `s` and `y = grad h(theta') - grad h(theta)` by value against
  `ngd_ref.dense.lbfgs_step`, each within an absolute bound derived in `_lbfgs_step_bounds`
  (`y` is a difference of two gradients, so its bound is in units of the gradients'
  magnitudes, not of `||y||`). This is what catches seed 004's L-BFGS bug (`y` formed from
  the two-loop's overwritten gradient);
* `inverse_root(M, p, ridge)` for `M = F`, `p` in {1, 2, 3, 4, 6} (3 and 6 are not powers of
  two: repeated square roots fail) and a ridge `||F||_2/100 + 1/64`;
* `shampoo_direction(G, L, R, eps)` with the first layer's weight-shaped gradient `G`,
  `L = G G^T`, `R = G^T G`, `eps = 1/10`;
* `hutchinson_diag(matvec, n, num_samples, seed)` on the Hessian: the exact-variance
  statistical tests of the sampled estimators (`verify.harness._sampled`, PROTOCOL s11).
More inputs for the section 9 checks (generic BFGS pairs, defaults, accumulated Shampoo
statistics, Hutchinson on a diagonal operator) are in `verify.harness._method_inputs`.
Deterministic tolerances follow `verify._tolerance` as in `verify._policy`; the solves use the
condition number of the system solved.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ngd_ref import Problem, layer_slices
from ngd_ref.dense import (
    absolute_hessian,
    bfgs_update,
    inverse_root,
    lbfgs_direction,
    lbfgs_step,
    lowrank_ggn_update,
    shampoo_direction,
    trust_region_update,
)
from verify._policy import tolerance_policy
from verify._report import Status
from verify._tolerance import rounding_rtol
from verify.harness._context import CheckContext
from verify.harness._faults import readonly
from verify.harness._sampled import check_hutchinson_diag

__all__ = ["METHOD_CHECKS"]

_DAMPINGS = (1.0, 0.1)
#: L-BFGS memory, initial scale and step size (dyadic: exact in float32)
_MEMORY, _GAMMA, _LR = 3, 0.5, 0.25
#: orders of `inverse_root` (issue 14: powers of two alone let repeated square roots pass)
_ROOT_ORDERS = (1, 2, 3, 4, 6)


def _spd_pair(ctx: CheckContext) -> tuple[np.ndarray, np.ndarray]:
    fisher = ctx.policy.matrix("fisher")
    eye = np.eye(fisher.shape[0])
    return fisher + eye, fisher + 0.5 * eye


def _check_damped_solves(ctx: CheckContext, capability: str, matrix: np.ndarray, kind: str,
                         reference: Callable[[Problem, float], np.ndarray], what: str) -> None:
    """`capability(problem, lambda)` = `-(matrix + lambda I)^{-1} grad h` for each damping.

    `kind` names the curvature whose magnitude bounds `matrix`'s rounding; `what` is the
    statement, with `{damping}` where lambda goes.
    """
    b = ctx.policy
    for damping in _DAMPINGS:
        tolerance, kappa = b.solve_tolerance(
            matrix, b.matrix_magnitude(kind), damping, b.ref.gradient, b.gradient_magnitude
        )
        ctx.begin(capability)
        value = ctx.port(capability, ctx.problem, damping)
        ctx.compare(
            capability,
            value,
            reference(ctx.problem, damping),
            tolerance=tolerance,
            what=f"{what.format(damping=f'{damping:g}')} (PROTOCOL s9; kappa {kappa:.1e})",
        )


def check_trust_region_update(ctx: CheckContext) -> None:
    """`-(|H| + lambda I)^{-1} grad h` against the reference."""
    _check_damped_solves(ctx, "trust_region_update",
                         absolute_hessian(ctx.policy.matrix("hessian")), "hessian",
                         trust_region_update, "-(|H| + {damping} I)^-1 grad h")


def check_lowrank_ggn_update(ctx: CheckContext) -> None:
    """`-(G + lambda I)^{-1} grad h` in output space, against the reference."""
    _check_damped_solves(ctx, "lowrank_ggn_update", ctx.policy.matrix("ggn"), "ggn",
                         lowrank_ggn_update, "-(G + {damping} I)^-1 grad h by push-through")


def check_bfgs_update(ctx: CheckContext) -> None:
    """The BFGS Hessian-approximation update against the reference."""
    bmat, a2 = _spd_pair(ctx)
    (s,) = ctx.probe(bmat.shape[0])
    compare_bfgs_update(ctx, "bfgs_update", bmat, s, a2 @ s,
                        "B + y y^T/(y^T s) - B s s^T B/(s^T B s) (PROTOCOL s9)")


def compare_bfgs_update(ctx: CheckContext, check: str, bmat: np.ndarray, s: np.ndarray,
                        y: np.ndarray, what: str) -> None:
    """The port's `bfgs_update(B, s, y)` against the reference, as check `check`.

    The magnitude is eq. (BFGS)'s terms on absolute values:
    `|B| + |y||y|^T / |y^T s| + |Bs||Bs|^T / |s^T B s|`.
    """
    bs = bmat @ s
    magnitude = np.linalg.norm(
        np.abs(bmat)
        + np.outer(np.abs(y), np.abs(y)) / abs(y @ s)
        + np.outer(np.abs(bs), np.abs(bs)) / abs(s @ bs)
    )
    ctx.begin(check)
    value = ctx.port("bfgs_update", readonly(bmat), s, readonly(y))
    ctx.compare(check, value, bfgs_update(bmat, s, y), tolerance=ctx.policy.rtol,
                magnitude=float(magnitude), what=what)


def _lbfgs_memory(ctx: CheckContext) -> tuple[np.ndarray, list, list]:
    """Return a probe `g` and three pairs `y = (F + I/2) s` (so `y^T s > 0`), oldest first."""
    _, a2 = _spd_pair(ctx)
    probes = ctx.probe(a2.shape[0], 1 + _MEMORY)
    g, s_list = probes[0], probes[1:]
    return g, s_list, [readonly(a2 @ s) for s in s_list]


def two_loop_magnitude(v: np.ndarray, s_list: list, y_list: list, gamma: float) -> np.ndarray:
    """`MAG(H_k v)`: the two-loop recursion evaluated on absolute values (elementwise bound).

    Both loops run on `|v|`, `|s_i|`, `|y_i|` with every update added in absolute value, and
    `rho_i = 1/(s_i^T y_i)` replaced by `|s_i|^T |y_i| / (s_i^T y_i)^2`, the magnitude of its
    own rounding error (`d(1/x) = -dx/x^2`, `|dx| <= u n |s|^T |y|`). So `|H_k v| <= MAG`
    entrywise and a computation in precision `u` is off by at most
    `rounding_rtol(length=n, depth=2m) * ||MAG||` (the policy of `verify._tolerance`); the
    recursion is linear in `v`, so the same bound carries an error `|dv|` through it.
    """
    pairs = [(np.abs(s), np.abs(y), float(s @ y)) for s, y in zip(s_list, y_list, strict=True)]
    rhos = [(s @ y) / sy**2 for s, y, sy in pairs]
    q, alphas = np.abs(v), []
    for (s, y, _), rho in zip(reversed(pairs), reversed(rhos), strict=True):
        alphas.append(rho * (s @ q))
        q = q + alphas[-1] * y
    r = abs(gamma) * q
    for (s, y, _), rho, alpha in zip(pairs, rhos, reversed(alphas), strict=True):
        r = r + (alpha + rho * (y @ r)) * s
    return r


def check_lbfgs_direction(ctx: CheckContext) -> None:
    """Compare the L-BFGS two-loop direction with the reference (MAG: `two_loop_magnitude`)."""
    g, s_list, y_list = _lbfgs_memory(ctx)
    ctx.begin("lbfgs_direction")
    value = ctx.port("lbfgs_direction", g, list(s_list), list(y_list), _GAMMA)
    ctx.compare(
        "lbfgs_direction",
        value,
        lbfgs_direction(g, s_list, y_list, _GAMMA),
        tolerance=rounding_rtol(ctx.dtype, length=g.shape[0], depth=2 * _MEMORY),
        magnitude=float(np.linalg.norm(two_loop_magnitude(g, s_list, y_list, _GAMMA))),
        what="H_k g, BFGS inverse updates from gamma I, pairs oldest first (PROTOCOL s9)",
    )


def _lbfgs_step_bounds(
    ctx: CheckContext, s_list: list, y_list: list, new_params: np.ndarray
) -> tuple[float, float]:
    """Absolute error bounds `(E_params, E_y)` a correct port stays within.

    With `rtol = TolerancePolicy.rtol` (the gradient's rounding policy) and `rtol_k` the same with
    `2m` more levels of depth (the two loops):

    * `theta' = theta - lr H_k g`: `g` is known to `rtol MAG(g)` and the two loops add their
      own rounding, so the step is off by at most `e_s = rtol_k lr MAG_k(MAG(g))`
      entrywise (`MAG_k = two_loop_magnitude`, linear in its argument); rounding `theta'` to
      the port's precision adds `rtol |theta'|`: `e = rtol |theta'| + e_s`,
      `E_params = ||e||`. `s = theta' - theta` (theta exact) carries the same error;
    * `y = g(theta') - g(theta)` is a difference of two gradients, each known to
      `rtol MAG(g)` (at theta and at theta'), the first evaluated at a point off by `e`,
      which moves it by at most `MAG(H(theta')) e`:
      `E_y = rtol (||MAG(g(theta))|| + ||MAG(g(theta'))||) + ||MAG(H(theta')) e||`.
    """
    b = ctx.policy
    moved = tolerance_policy(ctx.problem.replace(params=new_params), ctx.dtype)
    rtol_k = rounding_rtol(ctx.dtype, length=b.length, depth=b.depth + 2 * _MEMORY)
    e_s = rtol_k * _LR * two_loop_magnitude(b.gradient_magnitude, s_list, y_list, _GAMMA)
    e = b.rtol * np.abs(new_params) + e_s
    e_y = b.rtol * float(
        np.linalg.norm(b.gradient_magnitude) + np.linalg.norm(moved.gradient_magnitude)
    ) + float(np.linalg.norm(moved.matrix_magnitude("hessian") @ e))
    return float(np.linalg.norm(e)), e_y


def check_lbfgs_step(ctx: CheckContext) -> None:
    """One L-BFGS iteration (extension `lbfgs_step`): `theta'`, `s` and `y` by value.

    `y` must be `grad h(theta') - grad h(theta)` with the raw gradient: seed 004's bug (`y`
    from the two-loop's overwritten gradient `q`) is off by `g - q = sum_i alpha_i y_i`.
    Each output is held to the absolute bound of `_lbfgs_step_bounds` (passed to `compare`
    as `tolerance = rtol`, `magnitude = bound / rtol`).
    """
    _, s_list, y_list = _lbfgs_memory(ctx)
    expected = lbfgs_step(ctx.problem, s_list, y_list, _LR, _GAMMA)
    limit = ctx.policy.overflow
    if not all(np.all(np.isfinite(part)) for part in expected) or float(np.max(
            tolerance_policy(ctx.problem.replace(params=expected[0]), ctx.dtype)
            .gradient_magnitude)) > limit:
        ctx.record("lbfgs_step", Status.SKIP, "not checked: the reference step leaves the region "
                   f"where h and its gradient are finite in {ctx.dtype} (MAG(grad h(theta')) "
                   f"overflows {limit:.3g})")
        return
    e_params, e_y = _lbfgs_step_bounds(ctx, s_list, y_list, expected[0])
    ctx.begin("lbfgs_step")
    value = ctx.port("lbfgs_step", ctx.problem, list(s_list), list(y_list), _LR, _GAMMA)
    try:
        parts = tuple(value)
    except TypeError:
        parts = ()
    if len(parts) != 3:
        ctx.record(
            "lbfgs_step",
            Status.FAIL,
            f"expected a triple (new_params, s, y), got {type(value).__name__}"
            + (f" of length {len(parts)}" if parts else ""),
        )
        return
    rtol = ctx.policy.rtol
    for label, actual, desired, bound, what in zip(
        ("params", "s", "y"),
        parts,
        expected,
        (e_params, e_params, e_y),
        (
            f"theta' = theta - {_LR:g} H_k grad h (gamma {_GAMMA:g}, pairs oldest first)",
            "s = theta' - theta",
            "y = grad h(theta') - grad h(theta), from the raw gradient (seed 004 `lbfgs` "
            "forms it from the two-loop's overwritten gradient)",
        ),
        strict=True,
    ):
        ctx.compare(
            f"lbfgs_step_{label}",
            actual,
            desired,
            tolerance=rtol,
            magnitude=bound / rtol,
            what=f"{what} (PROTOCOL extension lbfgs_step)",
        )


def check_inverse_root(ctx: CheckContext) -> None:
    """`(M + ridge I)^{-1/p}` for p in `_ROOT_ORDERS`."""
    m = ctx.policy.matrix("fisher")
    ridge = float(np.linalg.norm(m, 2)) / 100.0 + 1.0 / 64.0
    kappa = float(np.linalg.cond(m + ridge * np.eye(m.shape[0])))
    for p in _ROOT_ORDERS:
        ctx.begin("inverse_root")
        value = ctx.port("inverse_root", readonly(m), p, ridge)
        ctx.compare(
            "inverse_root",
            value,
            inverse_root(m, p, ridge),
            tolerance=ctx.policy.solve_rtol(kappa, length=m.shape[0], depth=2),
            what=f"(M + {ridge:.3g} I)^(-1/{p}) (PROTOCOL s9; kappa {kappa:.1e})",
        )


def check_shampoo_direction(ctx: CheckContext) -> None:
    """`(L + eps I)^{-1/4} G (R + eps I)^{-1/4}` with statistics of the first layer's gradient."""
    layer = ctx.problem.layers[0]
    sl = layer_slices(ctx.problem.layers)[0]
    grad = ctx.policy.ref.gradient[sl].reshape(layer.weight_shape, order="F")
    left, right, eps = grad @ grad.T, grad.T @ grad, 0.1
    compare_shampoo(ctx, "shampoo_direction", grad, left, right, eps,
                    "(L + eps I)^(-1/4) G (R + eps I)^(-1/4) (PROTOCOL s9; Shampoo)")


def compare_shampoo(ctx: CheckContext, check: str, grad: np.ndarray, left: np.ndarray,
                    right: np.ndarray, eps: float, what: str) -> None:
    """One `shampoo_direction` call against the reference, or not checked where undetermined.

    Tolerance `TolerancePolicy.solve_rtol(kappa(L + eps I) + kappa(R + eps I))` (length
    `G.size`, depth 3: two inverse roots and the products). Where it is >= 1 (`determined`:
    `eps` below the dtype's resolution of `||L||`, e.g. a float32 port on a problem with a
    huge gradient), a correct port's eigenvalues of `L + eps I` can come out negative and its
    root NaN: the check is reported as not checked, with the condition number.
    """
    condition = float(
        np.linalg.cond(left + eps * np.eye(left.shape[0]))
        + np.linalg.cond(right + eps * np.eye(right.shape[0]))
    )
    tolerance = ctx.policy.solve_rtol(condition, length=grad.size, depth=3)
    if not ctx.policy.determined(tolerance):
        ctx.record(check, Status.SKIP,
                   f"not checked: L + eps I and R + eps I are singular to {ctx.dtype} precision "
                   f"(kappa sum {condition:.2e}, relative tolerance {tolerance:.2e} >= 1)")
        return
    ctx.begin(check)
    value = ctx.port("shampoo_direction", readonly(grad), readonly(left), readonly(right), eps)
    ctx.compare(check, value, shampoo_direction(grad, left, right, eps), tolerance=tolerance,
                what=what)


METHOD_CHECKS = {
    "trust_region_update": check_trust_region_update,
    "bfgs_update": check_bfgs_update,
    "lbfgs_direction": check_lbfgs_direction,
    "hutchinson_diag": check_hutchinson_diag,
    "inverse_root": check_inverse_root,
    "shampoo_direction": check_shampoo_direction,
    "lowrank_ggn_update": check_lowrank_ggn_update,
    "lbfgs_step": check_lbfgs_step,
}
