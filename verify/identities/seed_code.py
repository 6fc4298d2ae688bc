"""Seed 004's code, ported: what it computes, and where it is wrong (seed 004).

Each piece of seed 004's code not ported elsewhere has a reference in `ngd_ref.dense` and an
identity stating what the code really computes; where the seed's prose claims more, a negative
control shows the claim fails.

* "Generalized Gauss-Newton": the cell solves `J^T (H_L J J^T + lambda I)^{-1} r` with the
  unscaled stacked J and residuals (`unscaled_damping_ggn_update`; the per-example, i.e.
  block-diagonal, `H_L` here -- the coupled flattened softmax is `lowrank_ggn_push_through`'s
  control). Identity: this is `-(G + c lambda I)^{-1} g` (push-through). Negative control: for
  the mean reduction it is not the `lambda`-damped step `-(G + lambda I)^{-1} g`.
* "BFGS": the rank-one ("Broyden", SR1) update `B + v v^T / (v^T s)`, `v = y - B s`
  (`broyden_rank1_update`): symmetric with `B+ s = y`; the seed notes that it may lose positive
  definiteness -- the control exhibits it at a pair with `y^T s > 0` (`y = B s / 2 + w`,
  `w` orthogonal to s and long), where BFGS keeps it.
* "Shampoo" `mat_power`: "Computes mat_m^p, for p == 1, 2, 4 or 8" by switching on
  `round(log2 p)` (`seed_mat_power`, the port). Identity: it equals `M^p`
  (`matrix_power`, binary exponentiation) for p in {1, 2, 4, 8}; control: not for p in
  {3, 5, 6, 7} (it returns `M^(2^round(log2 p))`).
* "Adam (proper Fisher)": squaring the gradient at model-sampled labels estimates
  `E[ghat^2] = c^2 sum_b diag(J_b^T F_R,b J_b) = c diag(F)` (`sampled_label_second_moment`).
  Control: for the mean reduction (`c = 1/B`, `B > 1`) that is not `diag(F)`.
* "K-FAC": "each tridiagonal block can be inverted independently" -- the inverse of the
  block-tridiagonal part `T` of `F + lambda I` is not assembled from inverses of its blocks:
  `[T^{-1}]_ll != (T_ll)^{-1}` where layers couple (control; two layers or more).

Tolerances: `solve_rtol` with the condition numbers of the systems solved, `rounding_rtol` for
products (depth p for `M^p`), `exact_rtol` against the reference's assembled matrices.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem, layer_slices, unflatten
from ngd_ref import dense as ref
from verify._tolerance import compare, rounding_rtol
from verify.identities._common import (
    at_most,
    default_damping,
    exact_rtol,
    problem_rng,
    reference,
    solve_tolerance,
)
from verify.identities._registry import detectable, identity, result, separated

__all__ = [
    "SEED_EXACT_POWERS",
    "seed_mat_power",
]

GGN = "seed 004 'Generalized Gauss-Newton'"
BFGS = "seed 004 'BFGS' (rank-1 Broyden); Nocedal & Wright eq. (6.24)"
SHAMPOO = "seed 004 'Shampoo' (mat_power)"
ADAM = "seed 004 'Adam (Proper Fisher)'; Martens s5 (seed 003)"
KFAC = "seed 004 'K-FAC' (tridiagonal blocks)"
#: The exponents seed 004's `mat_power` unrolls.
SEED_EXACT_POWERS = (1, 2, 4, 8)
#: Exponents where it is wrong (controls).
SEED_WRONG_POWERS = (3, 5, 6, 7)


def _depth(problem: Problem) -> int:
    return len(problem.layers) + 2


def _solve_tol(problem: Problem, matrix: np.ndarray) -> float:
    return solve_tolerance(problem, float(np.linalg.cond(matrix)))


# -- unscaled-damping Gauss-Newton -----------------------------------------------------------
def _ggn_lambda(problem: Problem) -> float:
    return default_damping(problem, "seed-ggn")


def _unscaled(problem: Problem):
    """`(seed step, -(G + c lambda I)^{-1} g, -(G + lambda I)^{-1} g, tolerance)`."""
    d = reference(problem)
    lam = _ggn_lambda(problem)
    seed = np.asarray(ref.unscaled_damping_ggn_update(problem, lam), dtype=np.float64)
    tol = max(_solve_tol(problem, d.ggn + problem.scale * lam * np.eye(problem.n_params)),
              _solve_tol(problem, d.ggn + lam * np.eye(problem.n_params)))
    return seed, d.damped_update("ggn", problem.scale * lam), d.damped_update("ggn", lam), tol


def _convex(problem: Problem) -> bool:
    return Loss(problem.loss).spec.hessian_psd and bool(np.any(reference(problem).gradient != 0))


@identity("seed_gauss_newton_damping_is_scaled", source=GGN,
          statement="J^T (H_L J J^T + lambda I)^{-1} r = (G + c lambda I)^{-1} g: the seed's "
                    "unscaled damping is lambda / B for the mean", applies=_convex)
def seed_gauss_newton_damping_is_scaled(problem: Problem):
    """Push-through with the unscaled J and r (module docstring)."""
    seed, scaled, _, tol = _unscaled(problem)
    return result("seed_gauss_newton_damping_is_scaled", problem,
                  compare(seed, scaled, tolerance=tol),
                  "seed step = -(G + c lambda I)^{-1} g", GGN)


def _unscaled_differs(problem: Problem) -> bool:
    if not _convex(problem) or problem.scale == 1.0:
        return False
    _, scaled, plain, tol = _unscaled(problem)
    return detectable(float(np.linalg.norm(scaled - plain)) / float(np.linalg.norm(plain)), tol)


@identity("seed_gauss_newton_not_lambda_damped", source=GGN, negative_control=True,
          statement="for the mean reduction the seed's step is not the lambda-damped GN step",
          applies=_unscaled_differs)
def seed_gauss_newton_not_lambda_damped(problem: Problem):
    """Negative control (hypothesis: the two dampings' steps differ detectably)."""
    seed, _, plain, tol = _unscaled(problem)
    return separated("seed_gauss_newton_not_lambda_damped", problem,
                     compare(seed, plain, tolerance=tol),
                     "seed step != -(G + lambda I)^{-1} g", GGN)


# -- Broyden rank-1 ----------------------------------------------------------------------------
def _spd(problem: Problem) -> np.ndarray:
    """`G + (|lambda_min(G)| + ||G||_2 / 10) I`, as the methods' BFGS checks use."""
    g = reference(problem).ggn
    values = np.linalg.eigvalsh(g)
    return g + (abs(min(float(values[0]), 0.0)) + float(np.abs(values).max()) / 10
                + np.finfo(float).tiny) * np.eye(g.shape[0])


def _sr1_pair(problem: Problem, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`s` seeded, `y = B s / 2 + w`, `w` orthogonal to s, `||w|| = 10 ||B||_2 ||s||`.

    `y^T s = s^T B s / 2 > 0`, `v = y - B s = w - B s / 2` with `v^T s = -s^T B s / 2 < 0` and
    `|v|^4 / |v^T s|` far above `v^T B v`: SR1 makes `v^T B+ v < 0`.
    """
    rng = problem_rng(problem, "sr1")
    s = rng.standard_normal(problem.n_params)
    w = rng.standard_normal(problem.n_params)
    w -= (w @ s) / (s @ s) * s
    w *= 10 * float(np.linalg.norm(b, 2)) * float(np.linalg.norm(s)) / float(np.linalg.norm(w))
    return s, b @ s / 2 + w


def _sr1_tol(problem: Problem, b: np.ndarray, s: np.ndarray, y: np.ndarray) -> float:
    v = y - b @ s
    amplification = float(np.linalg.norm(v) * np.linalg.norm(s) / abs(v @ s))
    return solve_tolerance(problem, amplification * float(np.linalg.cond(b)))


@identity("broyden_rank1_secant", source=BFGS,
          statement="B+ = B + v v^T / (v^T s), v = y - B s, is symmetric with B+ s = y",
          applies=lambda p: p.n_params >= 2)
def broyden_rank1_secant(problem: Problem):
    """SR1's secant condition and symmetry at `_sr1_pair`."""
    b = _spd(problem)
    s, y = _sr1_pair(problem, b)
    updated = ref.broyden_rank1_update(b, s, y)
    tol = _sr1_tol(problem, b, s, y)
    norm = float(np.linalg.norm(updated, 2))
    return [result("broyden_rank1_secant", problem,
                   compare(updated @ s, y, tolerance=tol,
                           magnitude=norm * float(np.linalg.norm(s)) + float(np.linalg.norm(y))),
                   "B+ s = y", BFGS),
            result("broyden_rank1_secant", problem,
                   compare(updated, updated.T, tolerance=tol, magnitude=norm), "B+ = B+^T", BFGS)]


@identity("broyden_rank1_loses_definiteness", source=BFGS, negative_control=True,
          statement="with y^T s > 0 the rank-1 update can be indefinite (BFGS is not)",
          applies=lambda p: p.n_params >= 2)
def broyden_rank1_loses_definiteness(problem: Problem):
    """Negative control: `lambda_min(B+_SR1) < 0` while `lambda_min(B+_BFGS) > 0`, same pair."""
    b = _spd(problem)
    s, y = _sr1_pair(problem, b)
    tol = _sr1_tol(problem, b, s, y)
    sr1 = ref.broyden_rank1_update(b, s, y)
    bfgs = ref.bfgs_update(b, s, y)
    sr1_low = float(np.linalg.eigvalsh(sr1)[0]) / float(np.linalg.norm(sr1, 2))
    bfgs_low = float(np.linalg.eigvalsh(bfgs)[0]) / float(np.linalg.norm(bfgs, 2))
    return [at_most("broyden_rank1_loses_definiteness", problem, sr1_low, -100 * tol,
                    "lambda_min(B+_SR1) / ||B+|| (y^T s > 0)", BFGS, negative_control=True),
            at_most("broyden_rank1_loses_definiteness", problem, -bfgs_low, -tol,
                    "-lambda_min(B+_BFGS) / ||B+|| on the same pair", BFGS)]


# -- mat_power -------------------------------------------------------------------------------
def seed_mat_power(matrix: np.ndarray, p: int) -> np.ndarray:
    """Seed 004's `mat_power`: `M^(2^round(log2 p))` (`switch` over the unrolled 1, 2, 4, 8)."""
    exponent = int(np.round(np.log2(p)))
    out = matrix
    for _ in range(exponent):
        out = out @ out
    return out


def _statistic(problem: Problem) -> np.ndarray:
    """Shampoo's first-layer left statistic plus `I`, scaled to spectral norm 2 (`M^p` varies)."""
    weight, bias = unflatten(problem.layers, reference(problem).gradient)[0]
    left = np.asarray(ref.shampoo_statistics([np.column_stack([weight, bias])], 0.0)[0],
                      dtype=np.float64)
    m = left + np.eye(left.shape[0]) * max(float(np.linalg.norm(left, 2)), 1.0)
    return 2.0 * m / float(np.linalg.norm(m, 2))


def _power_tol(matrix: np.ndarray, p: int) -> float:
    return rounding_rtol("float64", length=matrix.shape[0], depth=p)


@identity("matrix_power_by_squaring", source=SHAMPOO,
          statement="matrix_power(M, p) = Q diag(mu^p) Q^T for p = 1..8; the seed's mat_power "
                    "agrees for p in {1, 2, 4, 8}")
def matrix_power_by_squaring(problem: Problem):
    """Binary exponentiation against the eigendecomposition; the seed's port on its own powers."""
    m = _statistic(problem)
    values, vectors = np.linalg.eigh(m)
    out = []
    for p in range(1, 9):
        exact = (vectors * values**p) @ vectors.T
        tol = _power_tol(m, p) * float(np.linalg.cond(vectors))
        out.append(result("matrix_power_by_squaring", problem,
                          compare(ref.matrix_power(m, p), exact, tolerance=tol),
                          f"M^{p} = Q diag(mu^{p}) Q^T", SHAMPOO))
        if p in SEED_EXACT_POWERS:
            out.append(result("matrix_power_by_squaring", problem,
                              compare(seed_mat_power(m, p), exact, tolerance=tol),
                              f"seed mat_power(M, {p}) = M^{p}", SHAMPOO))
    return out


@identity("seed_mat_power_wrong_off_powers_of_two", source=SHAMPOO, negative_control=True,
          statement="the seed's mat_power(M, p) != M^p for p in {3, 5, 6, 7} (it returns "
                    "M^(2^round(log2 p)))")
def seed_mat_power_wrong_off_powers_of_two(problem: Problem):
    """Negative control; `||M|| = 2` so `M^q != M^p` for `q != p` by at least `2^p`."""
    m = _statistic(problem)
    return [separated("seed_mat_power_wrong_off_powers_of_two", problem,
                      compare(seed_mat_power(m, p), ref.matrix_power(m, p),
                              tolerance=_power_tol(m, 8)),
                      f"seed mat_power(M, {p}) != M^{p}", SHAMPOO)
            for p in SEED_WRONG_POWERS]


# -- sampled-label Adam ------------------------------------------------------------------------
@identity("sampled_label_adam_estimates_scaled_fisher_diagonal", source=ADAM,
          statement="E_y[ghat^2] at model-sampled labels = c^2 sum_b diag(J_b^T F_R J_b) "
                    "= c diag(F)")
def sampled_label_adam(problem: Problem):
    """The exact expectation (`sampled_label_second_moment`) against `c diag(F)`."""
    d = reference(problem)
    expected = np.asarray(ref.sampled_label_second_moment(problem), dtype=np.float64)
    return result("sampled_label_adam_estimates_scaled_fisher_diagonal", problem,
                  compare(expected, problem.scale * np.diag(d.fisher),
                          tolerance=exact_rtol(problem),
                          magnitude=problem.scale * float(np.linalg.norm(np.diag(d.fisher)))),
                  "E[ghat^2] = c diag(F)", ADAM)


@identity("sampled_label_adam_not_fisher_diagonal", source=ADAM, negative_control=True,
          statement="for the mean reduction (B > 1) the 'proper Fisher' Adam statistic is "
                    "diag(F) / B, not diag(F)",
          applies=lambda p: p.scale != 1.0 and bool(np.any(np.diag(reference(p).fisher) != 0)))
def sampled_label_adam_not_fisher_diagonal(problem: Problem):
    """Negative control of seed 004's claim that the statistic is the Fisher's diagonal."""
    d = reference(problem)
    expected = np.asarray(ref.sampled_label_second_moment(problem), dtype=np.float64)
    return separated("sampled_label_adam_not_fisher_diagonal", problem,
                     compare(expected, np.diag(d.fisher), tolerance=exact_rtol(problem)),
                     "E[ghat^2] != diag(F)", ADAM)


# -- block-tridiagonal K-FAC -------------------------------------------------------------------
def _tridiagonal(problem: Problem):
    """`(T, T^{-1} diagonal blocks, inverted diagonal blocks, tol)` for `F + lambda I`."""
    d = reference(problem)
    lam = default_damping(problem, "tridiagonal")
    damped = d.fisher + lam * np.eye(problem.n_params)
    slices = layer_slices(problem.layers)
    t = np.zeros_like(damped)
    for i, a in enumerate(slices):
        for j, b in enumerate(slices):
            if abs(i - j) <= 1:
                t[a, b] = damped[a, b]
    inverse = np.linalg.inv(t)
    joint = np.concatenate([inverse[sl, sl].ravel() for sl in slices])
    separate = np.concatenate([np.linalg.inv(t[sl, sl]).ravel() for sl in slices])
    return joint, separate, _solve_tol(problem, t)


def _layers_couple(problem: Problem) -> bool:
    if len(problem.layers) < 2:
        return False
    joint, separate, tol = _tridiagonal(problem)
    return detectable(float(np.linalg.norm(joint - separate)) / float(np.linalg.norm(joint)), tol)


@identity("tridiagonal_blocks_not_invertible_independently", source=KFAC, negative_control=True,
          statement="the inverse of the block-tridiagonal part T of F + lambda I has diagonal "
                    "blocks [T^-1]_ll != (T_ll)^-1 where layers couple", applies=_layers_couple)
def tridiagonal_blocks_not_invertible_independently(problem: Problem):
    """Negative control of seed 004's 'each tridiagonal block can be inverted independently'."""
    joint, separate, tol = _tridiagonal(problem)
    return separated("tridiagonal_blocks_not_invertible_independently", problem,
                     compare(separate, joint, tolerance=tol),
                     "blockwise inverses != blocks of the inverse", KFAC)


# -- power iteration -------------------------------------------------------------------------
#: Steps of the power-iteration identity, and the seed's own defaults.
POWER_STEPS = 30
SEED_POWER_TOLERANCE = 1e-6
SEED_POWER_STEPS = 100


def seed_power_iter(matrix: np.ndarray, start: np.ndarray) -> tuple[float, int]:
    """Seed 004's `power_iter`: absolute exit `|s_new - s| > 1e-6`, at most 100 steps.

    Returns `(s, steps)`; `s` starts at 0 as in the seed (`jnp.zeros([])`).
    """
    v, s, steps = start, 0.0, 0
    while steps < SEED_POWER_STEPS:
        v = v / np.linalg.norm(v)
        s_v = matrix @ v
        s_new = float(v @ s_v)
        steps += 1
        done = not abs(s_new - s) > SEED_POWER_TOLERANCE
        v, s = s_v, s_new
        if done:
            break
    return s, steps


def _power_data(problem: Problem):
    """`(M, start, eigenvalues, tan^2 theta_0)` for the power-iteration checks."""
    m = _statistic(problem)
    values, vectors = np.linalg.eigh(m)
    start = problem_rng(problem, "power").uniform(-1.0, 1.0, m.shape[0])
    c = vectors.T @ start
    tan2 = float(np.sum(c[:-1] ** 2) / c[-1] ** 2)
    return m, start, values, tan2


@identity("power_iteration_converges", source=SHAMPOO.replace("mat_power", "power_iter"),
          statement="power iteration's Rayleigh quotient: lambda_max - s_k <= (lambda_max - "
                    "lambda_min) tan^2(theta_0) (lambda_2 / lambda_max)^(2k), s_k <= lambda_max")
def power_iteration_converges(problem: Problem):
    """Golub & Van Loan's bound for `power_iteration` after `POWER_STEPS` steps (PSD M)."""
    m, start, values, tan2 = _power_data(problem)
    _, s, _ = ref.power_iteration(m, start, iterations=POWER_STEPS)
    lam, tol = float(values[-1]), _power_tol(m, 2) * float(np.linalg.cond(m))
    ratio = float(values[-2] / values[-1]) if values.size > 1 else 0.0
    bound = (lam - float(values[0])) * tan2 * ratio ** (2 * POWER_STEPS)
    source = "seed 004 'Shampoo' (power_iter); Golub & Van Loan Thm 8.2.1"
    return [at_most("power_iteration_converges", problem, (lam - float(s)) / lam,
                    bound / lam + tol, f"(lambda_max - s_{POWER_STEPS}) / lambda_max", source),
            at_most("power_iteration_converges", problem, (float(s) - lam) / lam, tol,
                    "(s - lambda_max) / lambda_max (Rayleigh quotient)", source)]


def _tiny_power_gap(problem: Problem) -> bool:
    """Where the first Rayleigh quotient misses lambda_max detectably (the seed stops there)."""
    m, start, values, _ = _power_data(problem)
    first = float(start @ m @ start / (start @ start))
    return detectable(1.0 - first / float(values[-1]), _power_tol(m, 2) * float(np.linalg.cond(m)))


@identity("seed_power_iter_absolute_tolerance", negative_control=True,
          source="seed 004 'Shampoo' (power_iter: error_tolerance=1e-6, absolute)",
          statement="on M scaled below 1e-6 the seed's absolute exit stops after one step, "
                    "missing lambda_max; the relative test does not", applies=_tiny_power_gap)
def seed_power_iter_absolute_tolerance(problem: Problem):
    """Negative control: `M' = 2^-30 M` (norm ~ 2e-9): the seed stops at the first quotient."""
    m, start, values, _ = _power_data(problem)
    scaled = 2.0**-30 * m
    lam = 2.0**-30 * float(values[-1])
    s, steps = seed_power_iter(scaled, start)
    _, good, _ = ref.power_iteration(scaled, start, iterations=SEED_POWER_STEPS,
                                     rtol=SEED_POWER_TOLERANCE)
    tol = _power_tol(m, 2) * float(np.linalg.cond(m))
    source = "seed 004 'Shampoo' (power_iter)"
    return [at_most("seed_power_iter_absolute_tolerance", problem, -(1.0 - s / lam), -100 * tol,
                    f"-(lambda_max - s_seed) / lambda_max after {steps} step(s)", source,
                    negative_control=True),
            at_most("seed_power_iter_absolute_tolerance", problem,
                    (1.0 - float(good) / lam), 1.0 - s / lam,
                    "relative test: its error <= the seed's", source)]
