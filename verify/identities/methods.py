"""Identities of the seeds' other second-order methods (seed 004; Grosse ch. 4, seed 002).

Each identity computes both sides with the dense reference (`ngd_ref.dense`) and holds them to
a tolerance from `verify._tolerance`; every theorem has a negative control that shows where it
breaks -- including each bug of seed 004's code, so the battery proves it can see them:

* Newton (Grosse eqs. (1), (5), (6)): the damped Newton step is the stationary point, and with
  `H + lambda I` positive definite the minimizer, of the quadratic model; the |H| step is a
  descent direction; at an indefinite `H` the Newton step climbs along negative curvature.
* BFGS / L-BFGS (seed 004; Nocedal & Wright (6.17), (6.19), Alg. 7.4): secant condition,
  symmetry, positive definiteness iff `y^T s > 0`; two-loop == dense inverse BFGS; on a
  quadratic with `A`-conjugate exact pairs `H_k A = I` on the span (and not without
  conjugacy); seed 004's `y` from the overwritten gradient is not the secant pair.
* Diagonals: exact diagonals without the `n x n` matrix; Hutchinson unbiased with variance
  `sum_{j != i} A_ij^2` (Hoeffding tests, false-positive rate 1e-6); `vjp` with ones is `H @ 1`;
  bias-corrected running averages; Adam's mean of squares vs square of the mean.
* Low rank (push-through): output-space step == dense damped GGN step; the seed's coupled
  flattened-softmax Hessian is not.
* Shampoo: eigh and coupled-Newton inverse roots agree to the iteration's bound; one step
  from zero statistics tends to the polar factor `U V^T` as `eps -> 0`; exponent `-1/2` does not.

Damping used throughout: `lambda = |lambda_min(H)| + ||H||_2 / 10` for "positive definite"
statements (so `H + lambda I` is safely positive definite) and `||H||_2 / 10` otherwise.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import NamedTuple

import numpy as np

from ngd_ref import Loss, Probabilities, Problem, layer_slices
from ngd_ref import dense as ref
from verify._report import CheckResult, Status
from verify._tolerance import compare, hoeffding_bound, rounding_rtol
from verify.identities._common import solve_tolerance
from verify.identities._registry import detectable, identity, result, separated

__all__: list[str] = []

_SEED_004 = "seed 004"
_GROSSE = "Grosse ch.4 (seed 002)"
_NW = "Nocedal & Wright (6.17), (6.19), Alg. 7.4"
_HUTCHINSON_SAMPLES = 1000
_EMA_BETA = 0.999
_EMA_STEPS = 10


# -- shared pieces ---------------------------------------------------------------------------
def _depth(problem: Problem) -> int:
    """Error-propagation depth of a second-order quantity: layers + loss + differentiation."""
    return len(problem.layers) + 2


def _rng(problem: Problem, salt: str) -> np.random.Generator:
    """Return a generator seeded from the problem's name (reproducible checks)."""
    return np.random.default_rng(zlib.crc32(f"{problem.name}/{salt}".encode()))


def _spectrum(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    return np.linalg.eigh(ref.dense(problem).hessian)


def _norm2(matrix: np.ndarray) -> float:
    return float(np.linalg.norm(matrix, 2))


def _condition(matrix: np.ndarray) -> float:
    values = np.abs(np.linalg.eigvalsh(matrix))
    return float(values.max() / values.min()) if values.min() > 0 else math.inf


def _pd_damping(problem: Problem) -> float:
    """`|lambda_min(H)| + ||H||_2 / 10`: makes `H + lambda I` positive definite."""
    values, _ = _spectrum(problem)
    return float(abs(min(values[0], 0.0)) + np.abs(values).max() / 10)


def _quadratic(problem: Problem) -> np.ndarray:
    """Return the SPD `A = G + (|lambda_min(G)| + ||G||_2 / 10) I` of a quadratic model.

    (`G` is indefinite when the loss is not convex in `z`, e.g. `nll_probs`, `gaussian_logvar`.)
    """
    g = ref.dense(problem).ggn
    values = np.linalg.eigvalsh(g)
    shift = abs(min(float(values[0]), 0.0)) + float(np.abs(values).max()) / 10
    return g + shift * np.eye(g.shape[0])


def _holds(name: str, problem: Problem, margin: float, tolerance: float, what: str, source: str,
           *, negative_control: bool = False) -> CheckResult:
    """Pass iff the normalized `margin` of a strict inequality exceeds `tolerance`.

    `margin` is the inequality's slack in the units of its own scale (e.g. `lambda_min(B)/||B||`
    for "B is positive definite"), so rounding alone can never make it hold or fail.
    """
    held = margin > tolerance
    return CheckResult(name, "negative_control" if negative_control else "identity", problem.name,
                       Status.PASS if held else Status.FAIL, margin, tolerance,
                       f"{what} [{source}]: margin {margin:.2e} {'>' if held else '<='} "
                       f"tol {tolerance:.2e}")


# -- Newton and the |H| trust region ---------------------------------------------------------
def _saddle_damping(problem: Problem) -> float | None:
    """`lam = -lambda_min(H) / 2` leaving `H + lam I` indefinite and nonsingular, or None.

    Needs `lambda_min(H) < -100 rtol ||H||` and every `|nu_i + lam| > 100 rtol ||H||`
    (`rtol` the rounding of H): the damped matrix has a resolved negative eigenvalue and no
    numerically zero one.
    """
    values, _ = _spectrum(problem)
    scale = float(np.abs(values).max())
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    if values[0] >= -100 * rtol * scale:
        return None
    lam = -float(values[0]) / 2
    return lam if float(np.abs(values + lam).min()) > 100 * rtol * scale else None


@identity("newton_step_minimizes_quadratic_model", source=f"{_GROSSE} eqs. (1), (5); {_SEED_004}",
          statement="(H + lam I) d_N = -grad h; H + lam I > 0 makes d_N the model's minimizer, "
                    "an indefinite H + lam I (lam = -lambda_min(H)/2) a saddle of it")
def _newton_minimizes(problem: Problem) -> list[CheckResult]:
    """The damped Newton step is the model's stationary point, at a PD and an indefinite shift.

    At `lam = _pd_damping` it is the minimizer (`lambda_min(H + lam I) > 0`); where H is
    detectably indefinite, at `lam = _saddle_damping` it is still the stationary point (the
    residual of a backward-stable solve is `rtol ||H + lam I|| ||d||` whatever the condition
    number) but a saddle (`lambda_min(H + lam I) < 0`): the PD case alone cannot tell a
    Newton step from one of `|H + lam I|`, which coincide there.
    """
    name, source = "newton_step_minimizes_quadratic_model", f"{_GROSSE} eq. (5)"
    d = ref.dense(problem)
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    out = []
    shifts = [("positive definite", _pd_damping(problem)), ("indefinite", _saddle_damping(problem))]
    for what, lam in shifts:
        if lam is None:
            continue
        damped = d.hessian + lam * np.eye(problem.n_params)
        step = ref.newton_update(problem, lam)
        stationary = compare(damped @ step, -d.gradient, tolerance=rtol,
                             magnitude=_norm2(damped) * float(np.linalg.norm(step)))
        # m(d_N + e) - m(d_N) = e^T (H + lam I) e / 2 > 0 for all e != 0 iff lambda_min > 0.
        curvature = float(np.linalg.eigvalsh(damped)[0]) / _norm2(damped)
        out.append(result(name, problem, stationary,
                          f"{what} H + {lam:.3g} I: model gradient vanishes at d_N", source))
        if what == "positive definite":
            out.append(_holds(name, problem, curvature, rtol,
                              "model curvature lambda_min(H + lam I) > 0", source))
        else:
            out.append(_holds(name, problem, -curvature, rtol,
                              "model curvature lambda_min(H + lam I) < 0: d_N is a saddle",
                              source))
    return out


@identity("trust_region_step_is_descent",
          source=f"{_SEED_004} 'Trust Region Newton'; {_GROSSE} eq. (6)",
          statement="grad h^T d_TR <= -||grad h||^2 / (||H||_2 + lam) < 0")
def _trust_region_descent(problem: Problem) -> CheckResult:
    d = ref.dense(problem)
    values, _ = _spectrum(problem)
    lam = float(np.abs(values).max()) / 10
    step = ref.trust_region_update(problem, lam)
    g = d.gradient
    bound = float(g @ g) / (float(np.abs(values).max()) + lam)
    # Relative slack of -g^T d >= bound; exact arithmetic gives >= 0.
    margin = (-float(g @ step) - bound) / bound + 1.0
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    return _holds("trust_region_step_is_descent", problem, margin, rtol,
                  "-g^T d_TR / (||g||^2 / (||H|| + lam)) >= 1 (descent)", f"{_GROSSE} eq. (6)")


def _indefinite(problem: Problem) -> bool:
    values, vectors = _spectrum(problem)
    scale = np.abs(values).max()
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    if values[0] >= -100 * rtol * scale:
        return False
    g = ref.dense(problem).gradient
    return abs(float(vectors[:, 0] @ g)) > 100 * rtol * float(np.linalg.norm(g))


@identity("newton_step_climbs_at_indefinite_hessian",
          source=f"{_SEED_004} 'Trust Region Newton'", applies=_indefinite, negative_control=True,
          statement="with lam < |lambda_min(H)|, d_N and d_TR point in opposite ways along "
                    "negative curvature (Newton ascends, |H| descends)")
def _newton_climbs(problem: Problem) -> CheckResult:
    values, vectors = _spectrum(problem)
    lam = abs(float(values[0])) / 2
    negative = vectors[:, values + lam < 0]
    newton = negative.T @ ref.newton_update(problem, lam)
    trust = negative.T @ ref.trust_region_update(problem, lam)
    g = negative.T @ ref.dense(problem).gradient
    rtol = solve_tolerance(problem, float(np.abs(values).max()) / float(np.abs(values + lam).min()))
    check = separated("newton_step_climbs_at_indefinite_hessian", problem,
                      compare(newton, trust, tolerance=rtol),
                      "Newton and |H| steps differ on the negative eigenspace", _SEED_004)
    if not (float(g @ newton) > 0 > float(g @ trust)):
        return CheckResult(check.check, check.capability, check.problem, Status.FAIL, check.error,
                           check.tolerance, f"expected g^T P d_N > 0 > g^T P d_TR, got "
                           f"{float(g @ newton):.2e} and {float(g @ trust):.2e}")
    return check


# -- BFGS --------------------------------------------------------------------------------------
def _secant_pair(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """`s = -grad h / ||H||_2`, `y = grad h(theta + s) - grad h(theta)` (a real secant pair)."""
    d = ref.dense(problem)
    s = -d.gradient / _norm2(d.hessian)
    moved = ref.DenseCurvature(problem, params=d.theta + s)
    return s, moved.gradient - d.gradient


def _bfgs_tolerance(problem: Problem, B: np.ndarray, s: np.ndarray, y: np.ndarray) -> float:
    # The update divides by y^T s and s^T B s: relative to the natural scales, cancellation
    # amplifies rounding by ||y|| ||s|| / |y^T s| (the angle between s and y).
    amplification = float(np.linalg.norm(y) * np.linalg.norm(s) / abs(y @ s))
    return solve_tolerance(problem, amplification * _condition(B))


@identity("bfgs_secant_and_symmetry", source=f"{_SEED_004} 'BFGS'; {_NW}",
          statement="B+ s = y and B+ = B+^T for B+ = bfgs_update(B, s, y)")
def _bfgs_secant(problem: Problem) -> list[CheckResult]:
    name = "bfgs_secant_and_symmetry"
    B = _quadratic(problem)
    s, y = _secant_pair(problem)
    updated = ref.bfgs_update(B, s, y)
    rtol = _bfgs_tolerance(problem, B, s, y)
    magnitude = _norm2(updated) * float(np.linalg.norm(s)) + float(np.linalg.norm(y))
    return [result(name, problem, compare(updated @ s, y, tolerance=rtol, magnitude=magnitude),
                   "secant condition B+ s = y", _NW),
            result(name, problem, compare(updated, updated.T, tolerance=rtol,
                                          magnitude=_norm2(updated)), "symmetry of B+", _NW)]


def _eigen_pair(problem: Problem, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact quadratic pair along an eigenvector of H: `s = v_index`, `y = H s`."""
    values, vectors = _spectrum(problem)
    s = vectors[:, index]
    return s, ref.dense(problem).hessian @ s


#: cos(y, s) of the oblique pair of `bfgs_preserves_positive_definiteness`.
_OBLIQUE_COSINE = 0.1


def _curvature_pairs(problem: Problem, B: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Pairs with `y^T s > 0`: the eigen pair, generic ones, and an oblique one.

    * `s = v_max(H)`, `y = lambda_max s` (parallel: the update's cross terms vanish);
    * the real secant pair (`_secant_pair`) where its `y^T s > 0`;
    * `y = A s` for a seeded Gaussian `s` and the SPD `A = _quadratic` (`y^T s = s^T A s > 0`);
    * oblique: `cos(y, s) = _OBLIQUE_COSINE`, `||y|| = 10 ||B||_2 ||s||` (a long `y` nearly
      orthogonal to `s`: the hard case, where a wrong cross term is not dwarfed by `B`).
    """
    pairs = [("eigen pair", *_eigen_pair(problem, -1))]
    s, y = _secant_pair(problem)
    if float(y @ s) > 0:
        pairs.append(("secant pair", s, y))
    s = _rng(problem, "bfgs-generic").standard_normal(problem.n_params)
    pairs.append(("y = A s", s, _quadratic(problem) @ s))
    w = _rng(problem, "bfgs-oblique").standard_normal(problem.n_params)
    w -= (w @ s) / (s @ s) * s
    w *= np.sqrt(1 - _OBLIQUE_COSINE**2) / np.linalg.norm(w)
    y = 10 * _norm2(B) * (_OBLIQUE_COSINE * s + np.linalg.norm(s) * w)
    pairs.append(("oblique pair", s, y))
    return pairs


def _bfgs_margin_bound(B: np.ndarray, s: np.ndarray, y: np.ndarray) -> float:
    """A lower bound on `lambda_min(B+) / ||B+||_2`, from B, s, y alone.

    `H+ = (I - rho s y^T) B^{-1} (I - rho y s^T) + rho s s^T` (N&W eq. (6.17), `rho = 1/y^T s`)
    gives `1/lambda_min(B+) = ||H+|| <= ||B^{-1}|| (1 + rho |s| |y|)^2 + rho |s|^2`, and
    `||B+|| <= ||B|| + rho |y|^2`. A pair whose bound is not detectable (y^T s tiny against
    `|s| |y|`: B+ is PD in exact arithmetic, singular to rounding) is left out.
    """
    rho = 1.0 / float(y @ s)
    ns, ny = float(np.linalg.norm(s)), float(np.linalg.norm(y))
    inv_norm = 1.0 / float(np.linalg.eigvalsh(B)[0])
    lowest = 1.0 / (inv_norm * (1 + rho * ns * ny) ** 2 + rho * ns * ns)
    return lowest / (_norm2(B) + rho * ny * ny)


@identity("bfgs_preserves_positive_definiteness", source=_NW,
          applies=lambda p: float(_spectrum(p)[0][-1]) > 0,
          statement="B > 0 and y^T s > 0 imply bfgs_update(B, s, y) > 0 (eigen, secant, "
                    "generic and oblique pairs)")
def _bfgs_pd(problem: Problem) -> list[CheckResult]:
    """`lambda_min(sym(B+)) / ||B+|| > tol` for each pair of `_curvature_pairs`.

    The symmetric part is tested (symmetry itself is `bfgs_secant_and_symmetry`'s); pairs
    whose guaranteed margin (`_bfgs_margin_bound`) is not detectable are left out.
    """
    B = _quadratic(problem)
    out = []
    for what, s, y in _curvature_pairs(problem, B):
        if not detectable(_bfgs_margin_bound(B, s, y), _bfgs_tolerance(problem, B, s, y)):
            continue
        updated = ref.bfgs_update(B, s, y)
        margin = float(np.linalg.eigvalsh((updated + updated.T) / 2)[0]) / _norm2(updated)
        out.append(_holds("bfgs_preserves_positive_definiteness", problem, margin,
                          _bfgs_tolerance(problem, B, s, y),
                          f"{what}: lambda_min(B+)/||B+|| > 0 with y^T s > 0", _NW))
    return out


@identity("bfgs_loses_definiteness_when_curvature_negative", source=_NW, applies=_indefinite,
          negative_control=True,
          statement="y^T s < 0 gives s^T B+ s = y^T s < 0: B+ is not positive definite")
def _bfgs_not_pd(problem: Problem) -> CheckResult:
    B = _quadratic(problem)
    s, y = _eigen_pair(problem, 0)    # y^T s = lambda_min(H) < 0
    updated = ref.bfgs_update(B, s, y)
    margin = -float(np.linalg.eigvalsh(updated)[0]) / _norm2(updated)
    return _holds("bfgs_loses_definiteness_when_curvature_negative", problem, margin,
                  100 * _bfgs_tolerance(problem, B, s, y),
                  "-lambda_min(B+)/||B+|| > 100 tol with y^T s < 0", _NW, negative_control=True)


# -- L-BFGS ------------------------------------------------------------------------------------
_MEMORY = 3


def _pairs(problem: Problem, *, conjugate: bool) -> tuple[np.ndarray, list, list]:
    """Return `A` and `_MEMORY` exact pairs `y_i = A s_i` (A-conjugate if asked).

    At most `n` pairs are A-conjugate in n dimensions (a further one would be conjugated to
    zero, with `y^T s = 0`), so conjugate pairs number `min(_MEMORY, n)`.
    """
    A = _quadratic(problem)
    count = min(_MEMORY, problem.n_params) if conjugate else _MEMORY
    raw = _rng(problem, "lbfgs").standard_normal((count, problem.n_params))
    steps: list[np.ndarray] = []
    for v in raw:
        if conjugate:
            for s in steps:
                v = v - (s @ A @ v) / (s @ A @ s) * s
        steps.append(v)
    return A, steps, [A @ s for s in steps]


def _gamma(steps: list, ys: list) -> float:
    """`s^T y / y^T y` of the newest pair: the initial `H_0 = gamma I` (N&W eq. (7.20)).

    Scaled like `A^{-1}`, so the two-loop's terms stay of the size of the result (with
    `gamma = 1` and `||A|| = 1e10` they would cancel by ten orders of magnitude).
    """
    return float(steps[-1] @ ys[-1] / (ys[-1] @ ys[-1]))


def _lbfgs_tolerance(problem: Problem, A: np.ndarray) -> float:
    return solve_tolerance(problem, _condition(A), depth=2 * _MEMORY + 1)


@identity("lbfgs_two_loop_equals_dense_inverse_bfgs", source=f"{_SEED_004} 'L-BFGS'; {_NW}",
          statement="lbfgs_direction(g, s, y, gamma) = H_k g, H_k = gamma I updated by each pair")
def _lbfgs_dense(problem: Problem) -> CheckResult:
    A, steps, ys = _pairs(problem, conjugate=False)
    gamma = _gamma(steps, ys)
    g = ref.dense(problem).gradient
    dense_h = ref.inverse_bfgs_matrix(steps, ys, gamma, n=problem.n_params)
    desired = dense_h @ g
    rtol = _lbfgs_tolerance(problem, A)
    return result("lbfgs_two_loop_equals_dense_inverse_bfgs", problem,
                  compare(ref.lbfgs_direction(g, steps, ys, gamma), desired, tolerance=rtol,
                          magnitude=_norm2(dense_h) * float(np.linalg.norm(g))),
                  "two-loop recursion == dense inverse-BFGS matrix times g", _NW)


@identity("lbfgs_inverts_quadratic_on_span", source=f"{_NW}; N&W s6.1 (quadratic termination)",
          statement="A-conjugate exact pairs y_i = A s_i: H_k A s_j = s_j for every stored j")
def _lbfgs_span(problem: Problem) -> CheckResult:
    A, steps, ys = _pairs(problem, conjugate=True)
    got = np.stack([ref.lbfgs_direction(y, steps, ys, _gamma(steps, ys)) for y in ys])
    return result("lbfgs_inverts_quadratic_on_span", problem,
                  compare(got, np.stack(steps), tolerance=_lbfgs_tolerance(problem, A)),
                  "L-BFGS reproduces A^{-1} on span{y_i}", _NW)


@identity("lbfgs_span_needs_conjugate_pairs", source=_NW, negative_control=True,
          statement="without A-conjugacy only the newest secant equation holds: H_k y_0 != s_0")
def _lbfgs_span_control(problem: Problem) -> CheckResult:
    A, steps, ys = _pairs(problem, conjugate=False)
    return separated("lbfgs_span_needs_conjugate_pairs", problem,
                     compare(ref.lbfgs_direction(ys[0], steps, ys, _gamma(steps, ys)), steps[0],
                             tolerance=_lbfgs_tolerance(problem, A)),
                     "H_k y_0 != s_0 for non-conjugate pairs", _NW)


def _seed_pair(problem: Problem):
    """`(seed's y, secant y, tolerance, comparison scale)` of seed 004's L-BFGS pair.

    The seed's two-loop overwrites the gradient: `q = g - sum_i alpha_i y_i`, so its
    `grad(theta + s) - q` differs from the secant pair by `g - q = sum_i alpha_i y_i`.
    """
    A, steps, ys = _pairs(problem, conjugate=False)
    g = ref.dense(problem).gradient
    _, s, y = ref.lbfgs_step(problem, steps, ys, 1.0 / _norm2(A))
    q = g.copy()                                          # the seed's rebound `grad_z`
    for s_i, y_i in reversed(list(zip(steps, ys, strict=True))):
        q = q - (s_i @ q) / (y_i @ s_i) * y_i
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    with np.errstate(over="ignore"):     # an overflowing y gives scale inf: nothing detectable
        scale = max(float(np.linalg.norm(y)), float(np.linalg.norm(y + g) + np.linalg.norm(g)))
    return (y + g) - q, y, rtol, scale, g - q


def _seed_pair_detectable(problem: Problem) -> bool:
    """`||sum_i alpha_i y_i||` exceeds 102 tolerances of the gradients' scale.

    Fails e.g. where the L-BFGS step overflows the loss (poisson: `grad(theta + s)` of
    1e179 swamps `g - q`) or where `g = 0`.
    """
    _, _, rtol, scale, diff = _seed_pair(problem)
    return detectable(float(np.linalg.norm(diff)) / scale, rtol)


@identity("lbfgs_seed_pair_uses_overwritten_gradient", source=f"{_SEED_004} `lbfgs`",
          negative_control=True, applies=_seed_pair_detectable,
          statement="seed 004 forms y = grad(theta + s) - q with q the two-loop's overwritten "
                    "gradient; the secant pair needs y = grad(theta + s) - grad(theta)")
def _lbfgs_seed_bug(problem: Problem) -> CheckResult:
    """Hypothesis: `g - q = sum_i alpha_i y_i` is detectable (`_seed_pair_detectable`)."""
    seed_y, y, rtol, scale, _ = _seed_pair(problem)
    return separated("lbfgs_seed_pair_uses_overwritten_gradient", problem,
                     compare(seed_y, y, tolerance=rtol, magnitude=scale),
                     "the seed's y differs from the secant pair", f"{_SEED_004} `lbfgs`")


# -- diagonals ---------------------------------------------------------------------------------
@identity("exact_diagonals", source="PROTOCOL s5; Martens s7 (seed 003)",
          statement="diag(G) = c sum_b diag(J_b^T H_L J_b) and diag(EF) = c sum_b g_b^2, "
                    "computed without the n x n matrices, equal the matrices' diagonals")
def _exact_diagonals(problem: Problem) -> list[CheckResult]:
    d = ref.dense(problem)
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    out = []
    for label, got, matrix in (("ggn", ref.ggn_diag(problem), d.ggn),
                               ("empirical_fisher", ref.empirical_fisher_diag(problem),
                                d.empirical_fisher)):
        out.append(result("exact_diagonals", problem,
                          compare(got, np.diagonal(matrix), tolerance=rtol,
                                  magnitude=float(np.linalg.norm(np.abs(matrix)))),
                          f"diag({label}) without the matrix", "PROTOCOL s5"))
    return out


@identity("hutchinson_unbiased", source="Hutchinson 1990; seed 004 'AdaHessian'",
          statement="E[z * (A z)] = diag(A) and Var[z_i (A z)_i] = sum_{j != i} A_ij^2 "
                    "(Rademacher z; Hoeffding tests, false-positive rate 1e-6)")
def _hutchinson(problem: Problem) -> list[CheckResult]:
    name, source = "hutchinson_unbiased", "Hutchinson; Hoeffding"
    A = ref.dense(problem).hessian
    n, samples = problem.n_params, _HUTCHINSON_SAMPLES
    seed = zlib.crc32(problem.name.encode())
    estimate = ref.hutchinson_diag(lambda v: A @ v, n, samples, seed=seed)
    width = ref.hutchinson_range(A)
    scale = float(width.max()) or 1.0
    # Both tests share the 1e-6 budget: 2n simultaneous per-coordinate tests.
    mean_bound = np.array([hoeffding_bound(w, samples, tests=2 * n) for w in width])
    mean_excess = float(np.max((np.abs(estimate - np.diagonal(A)) - mean_bound) / scale))
    # Variance: the squared deviations (x - A_ii)^2 lie in [0, R_i^2] and average to the variance.
    probes = np.random.default_rng(zlib.crc32(f"{problem.name}/var".encode())) \
        .integers(0, 2, size=(samples, n)) * 2.0 - 1.0
    deviations = (probes * (probes @ A.T) - np.diagonal(A)) ** 2
    var_bound = np.array([hoeffding_bound((w / 2) ** 2, samples, tests=2 * n) for w in width])
    var_excess = float(np.max((np.abs(deviations.mean(axis=0) - ref.hutchinson_variance(A))
                               - var_bound) / scale**2))
    rtol = rounding_rtol("float64", length=n * samples, depth=_depth(problem))
    return [_holds(name, problem, -mean_excess, -rtol,
                   "|mean - diag(A)| within its Hoeffding bound for every i", source),
            _holds(name, problem, -var_excess, -rtol,
                   "sample variance within its Hoeffding bound of sum_{j != i} A_ij^2", source)]


def _off_diagonal_row_sums(problem: Problem) -> bool:
    """`||(H - Diag(H)) 1||` exceeds 102 tolerances of `||H||`: `H @ 1 != diag(H)` detectably.

    Fails where H is diagonal (e.g. zero: dead ReLUs before a linear mse output) or its
    off-diagonal rows happen to cancel.
    """
    H = ref.dense(problem).hessian
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    rows = (H - np.diag(np.diagonal(H))) @ np.ones(problem.n_params)
    return detectable(float(np.linalg.norm(rows)) / max(float(np.linalg.norm(H)), 1e-300), rtol)


@identity("vjp_with_ones_is_not_the_diagonal",
          source=f"{_SEED_004} 'Diagonal Newton', 'AdaHessian'",
          negative_control=True, applies=_off_diagonal_row_sums,
          statement="vjp(grad)(ones) = H @ 1 != diag(H) where H's off-diagonal row sums are not 0")
def _vjp_ones(problem: Problem) -> CheckResult:
    """Hypothesis: the off-diagonal row sums of H are detectably nonzero."""
    H = ref.dense(problem).hessian
    rtol = rounding_rtol("float64", length=problem.n_params, depth=_depth(problem))
    return separated("vjp_with_ones_is_not_the_diagonal", problem,
                     compare(H @ np.ones(problem.n_params), ref.hessian_diag(problem),
                             tolerance=rtol, magnitude=float(np.linalg.norm(np.abs(H)))),
                     "the seed's H @ 1 differs from diag(H)", _SEED_004)


@identity("ema_bias_correction_exact", source=f"{_SEED_004} 'AdaHessian'; Adam",
          statement="constant estimates D: v_T / (1 - beta^T) = D^2 for every T")
def _ema(problem: Problem) -> CheckResult:
    diag = ref.hessian_diag(problem)
    got = ref.ema_second_moment([diag] * _EMA_STEPS, _EMA_BETA)
    rtol = rounding_rtol("float64", length=_EMA_STEPS, depth=2)
    return result("ema_bias_correction_exact", problem, compare(got, diag**2, tolerance=rtol),
                  "bias-corrected running average of a constant", _SEED_004)


@identity("ema_without_bias_correction_is_biased", source=f"{_SEED_004} 'AdaHessian'; Adam",
          negative_control=True, statement="v_T = (1 - beta^T) D^2 != D^2 without the correction")
def _ema_control(problem: Problem) -> CheckResult:
    diag = ref.hessian_diag(problem)
    corrected = ref.ema_second_moment([diag] * _EMA_STEPS, _EMA_BETA)
    raw = corrected * (1 - _EMA_BETA**_EMA_STEPS)
    rtol = rounding_rtol("float64", length=_EMA_STEPS, depth=2)
    return separated("ema_without_bias_correction_is_biased", problem,
                     compare(raw, diag**2, tolerance=rtol), "uncorrected v_T differs from D^2",
                     _SEED_004)


@identity("adam_second_moment_variance_decomposition", source=f"{_SEED_004} 'Adagrad and Adam'",
          applies=lambda p: p.reduction == "mean",
          statement="diag(EF) - (grad h)^2 = (1/B) sum_b (g_b - mean g)^2 (mean reduction)")
def _adam_identity(problem: Problem) -> CheckResult:
    g = ref.dense(problem).per_example_gradients
    spread = np.mean((g - g.mean(axis=0)) ** 2, axis=0)
    ef = ref.empirical_fisher_diag(problem)
    rtol = rounding_rtol("float64", length=problem.batch_size, depth=_depth(problem))
    return result("adam_second_moment_variance_decomposition", problem,
                  compare(ef - ref.squared_gradient(problem), spread, tolerance=rtol,
                          magnitude=float(np.linalg.norm(ef))),
                  "mean of squares = square of mean + per-example variance", _SEED_004)


def _mean_of_squares_gap(problem: Problem) -> bool:
    """`c sum_b g_b^2 - (c sum_b g_b)^2` is detectably nonzero relative to `diag(EF)`.

    Predicted from the per-example gradients by the variance decomposition:
    `c sum_b (g_b - mean g)^2 + c B (1 - c B) (mean g)^2` -- the spread alone for the mean
    reduction (`c B = 1`), while for the sum reduction the second term is negative and the two
    can cancel; zero for one example or identical ones.
    """
    g = ref.dense(problem).per_example_gradients
    c, batch = problem.scale, problem.batch_size
    mean = g.mean(axis=0)
    gap = c * np.sum((g - mean) ** 2, axis=0) + c * batch * (1 - c * batch) * mean**2
    ef = ref.empirical_fisher_diag(problem)
    rtol = rounding_rtol("float64", length=problem.batch_size, depth=_depth(problem))
    return detectable(float(np.linalg.norm(gap)) / max(float(np.linalg.norm(ef)), 1e-300), rtol)


@identity("adam_square_of_mean_is_not_empirical_fisher", source=f"{_SEED_004} 'Adagrad and Adam'",
          applies=_mean_of_squares_gap, negative_control=True,
          statement="(grad h)^2 != c sum_b g_b^2 where c sum (g_b - mean)^2 + cB(1 - cB) mean^2 "
                    "is detectably nonzero")
def _adam_control(problem: Problem) -> CheckResult:
    """Hypothesis: the variance-decomposition gap (`_mean_of_squares_gap`) is detectable."""
    ef = ref.empirical_fisher_diag(problem)
    rtol = rounding_rtol("float64", length=problem.batch_size, depth=_depth(problem))
    return separated("adam_square_of_mean_is_not_empirical_fisher", problem,
                     compare(ref.squared_gradient(problem), ef, tolerance=rtol),
                     "square of the mean gradient differs from diag(EF)", _SEED_004)


# -- low-rank GGN ------------------------------------------------------------------------------
_LOWRANK_DAMPING_FRACTION = 0.1


def _ggn_solve_tolerance(problem: Problem, lam: float) -> float:
    damped = ref.dense(problem).ggn + lam * np.eye(problem.n_params)
    return solve_tolerance(problem, _condition(damped))


def _ggn_damping(problem: Problem) -> float:
    return _LOWRANK_DAMPING_FRACTION * max(_norm2(ref.dense(problem).ggn), 1e-3)


@identity("lowrank_ggn_push_through", source=f"{_SEED_004} 'Generalized Gauss-Newton'; "
          f"{_GROSSE} eq. (13)",
          statement="-J^T (c H_L J J^T + lam I)^{-1} c r = -(G + lam I)^{-1} grad h")
def _lowrank(problem: Problem) -> CheckResult:
    lam = _ggn_damping(problem)
    return result("lowrank_ggn_push_through", problem,
                  compare(ref.lowrank_ggn_update(problem, lam),
                          ref.dense(problem).damped_update("ggn", lam),
                          tolerance=_ggn_solve_tolerance(problem, lam)),
                  "output-space step == dense damped GGN step", f"{_GROSSE} eq. (13)")


@identity("lowrank_seed_coupled_softmax_differs", source=f"{_SEED_004} `gauss_newton`",
          applies=lambda p: (Loss(p.loss).spec.probabilities is Probabilities.SOFTMAX
                             and p.batch_size > 1),
          negative_control=True,
          statement="one softmax Hessian over the flattened batch couples examples: its step "
                    "is not the damped GGN step")
def _lowrank_control(problem: Problem) -> CheckResult:
    d = ref.dense(problem)
    lam = _ggn_damping(problem)
    jac = d.jacobians.reshape(-1, problem.n_params)
    loss = ref.get_loss(problem.loss)
    assert isinstance(loss, ref.CategoricalLoss)  # `applies`: softmax probabilities
    probs = np.concatenate([loss.probabilities(ref.FLOAT64, z) for z in d.outputs])
    coupled = np.diag(probs) - np.outer(probs, probs)
    system = d.c * coupled @ (jac @ jac.T) + lam * np.eye(jac.shape[0])
    seed_step = -(jac.T @ np.linalg.solve(system, d.c * d.loss_grads.reshape(-1)))
    return separated("lowrank_seed_coupled_softmax_differs", problem,
                     compare(seed_step, d.damped_update("ggn", lam),
                             tolerance=_ggn_solve_tolerance(problem, lam)),
                     "the seed's coupled step differs from the GGN step", _SEED_004)


# -- Shampoo -----------------------------------------------------------------------------------
_ROOTS = (1, 2, 4)


@identity("inverse_root_eigh_equals_coupled_newton",
          source=f"{_SEED_004} 'Shampoo'; Guo & Higham 2006",
          statement="Q diag(mu^{-1/p}) Q^T and the coupled Newton iterate agree within "
                    "||A^{-1/p}|| rho / (p (1 - rho)) plus rounding")
def _roots(problem: Problem) -> list[CheckResult]:
    A = _quadratic(problem)
    n = problem.n_params
    out = []
    for p in _ROOTS:
        eig = ref.inverse_root(A, p)
        newton = ref.coupled_newton_inverse_root(A, p)
        bound = newton.residual / (p * (1 - newton.residual)) if newton.residual < 1 else math.inf
        rtol = bound + solve_tolerance(problem, _condition(A), length=n,
                                       depth=newton.iterations + p)
        out.append(result("inverse_root_eigh_equals_coupled_newton", problem,
                          compare(newton.root, eig, tolerance=rtol),
                          f"p = {p}: eigh vs coupled Newton ({newton.iterations} steps)",
                          "Guo & Higham 2006"))
    return out


_POLAR_DPS = 50


class _PolarLayer(NamedTuple):
    """One layer's Shampoo case: its 50-digit gradient, the polar factor, the ridge."""

    layer_index: int
    gradient: np.ndarray          # mp, n_out x (n_in + 1)
    polar: np.ndarray             # float64 U_r V_r^T
    singular: np.ndarray          # float64 kept singular values s_1 >= ... >= s_r > 0
    eps: float                    # 10^-25 ||G||_F^2


@functools.lru_cache(maxsize=16)
def _polar_layers(problem: Problem) -> tuple[_PolarLayer, ...]:
    """Return the layers with a nonzero gradient, with what both Shampoo identities share.

    Computed once per problem (the 50-digit gradient and polar factor are the expensive part).
    Gradients are weight-shaped `[dW db]` at 50 digits, so that a gradient of exact rank r
    (e.g. r <= B) has its other singular values at ~1e-50, not at float64's 1e-16 rounding
    noise; singular values below `10^-16 s_max` are the zero ones. A layer whose gradient is
    exactly zero (dead ReLUs, a saturated layer) has rank 0: no ridge `eps > 0` proportional
    to `||G||^2` exists and `U_r V_r^T = 0`, so the theorem says nothing about it.
    """
    bk = ref.mp_backend(_POLAR_DPS)
    g = ref.dense(problem, bk).gradient
    out = []
    with bk.precision():
        for index, (layer, sl) in enumerate(zip(problem.layers, layer_slices(problem.layers),
                                                strict=True)):
            G = g[sl].reshape(layer.weight_shape, order="F")
            norm2 = float(np.sum(G * G))
            if norm2 == 0:
                continue
            polar, singular = ref.polar_factor(G, rank_tolerance=10.0 ** -(_POLAR_DPS // 3),
                                               backend=bk)
            out.append(_PolarLayer(index, G, bk.to_float64(polar), bk.to_float64(singular),
                                   norm2 * 10.0 ** (-(_POLAR_DPS // 2))))
    return tuple(out)


def _shampoo_step(layer: _PolarLayer, root: int) -> np.ndarray:
    """`(L + eps I)^{-1/root} G (R + eps I)^{-1/root}` from one statistics step, 50 digits."""
    bk = ref.mp_backend(_POLAR_DPS)
    with bk.precision():
        L, R = ref.shampoo_statistics([layer.gradient], 0.9, backend=bk)
        return bk.to_float64(ref.inverse_root(L, root, layer.eps, backend=bk) @ layer.gradient
                             @ ref.inverse_root(R, root, layer.eps, backend=bk))


def _polar_rtol(layer: _PolarLayer, bias: np.ndarray) -> float:
    """Per-singular-value `bias` of the eps-regularized step (Frobenius, relative) + rounding."""
    return (float(np.linalg.norm(bias)) / max(float(np.linalg.norm(layer.polar)), 1.0)
            + rounding_rtol("float64", length=layer.polar.size, depth=1))


def _inverse_sqrt_separation(layer: _PolarLayer) -> tuple[float, float]:
    """`(predicted relative ||U S^{-1} V^T - U V^T||_F beyond the bias, tolerance)` (root 2).

    With exponent -1/2 the step is `U diag(s / (s^2 + eps)) V^T`, within `eps / s^3` per
    singular value of `U S^{-1} V^T`, which differs from the polar factor by
    `sqrt(sum (1/s - 1)^2)`: zero exactly when every kept s is 1.
    """
    s = layer.singular
    bias = layer.eps / s**3
    norm = max(float(np.linalg.norm(layer.polar)), 1.0)
    gap = float(np.linalg.norm(1.0 / s - 1.0)) - float(np.linalg.norm(bias))
    return gap / norm, _polar_rtol(layer, bias)


@identity("shampoo_one_step_is_polar_factor", source=f"{_SEED_004} 'Shampoo'; Gupta et al. 2018",
          applies=lambda p: bool(_polar_layers(p)),
          statement="L = G G^T, R = G^T G: (L + eps I)^{-1/4} G (R + eps I)^{-1/4} -> U_r V_r^T "
                    "as eps -> 0 (error <= eps / (2 s_r^2) per singular value), G != 0")
def _polar(problem: Problem) -> list[CheckResult]:
    """Hypothesis: a layer's gradient is nonzero (rank r >= 1); checked on every such layer."""
    out = []
    for layer in _polar_layers(problem):
        rtol = _polar_rtol(layer, layer.eps / (2 * layer.singular**2))
        out.append(result("shampoo_one_step_is_polar_factor", problem,
                          compare(_shampoo_step(layer, 4), layer.polar, tolerance=rtol),
                          f"layer {layer.layer_index}: one Shampoo step == polar factor (50-digit "
                          "arithmetic)", "Gupta et al. 2018"))
    return out


def _inverse_sqrt_layers(problem: Problem) -> list[_PolarLayer]:
    """Layers where `U S^{-1} V^T` is detectably not `U V^T` (`_inverse_sqrt_separation`)."""
    return [layer for layer in _polar_layers(problem)
            if detectable(*_inverse_sqrt_separation(layer))]


@identity("shampoo_inverse_square_root_is_not_polar",
          source=f"{_SEED_004} 'Shampoo' (text formula)",
          negative_control=True, applies=lambda p: bool(_inverse_sqrt_layers(p)),
          statement="exponent -1/2 gives U S^{-1} V^T, not the polar factor, on every layer "
                    "whose singular values are detectably not all 1")
def _polar_control(problem: Problem) -> list[CheckResult]:
    """Hypothesis: `sqrt(sum (1/s - 1)^2)`, less the eps bias, exceeds 102 tolerances."""
    out = []
    for layer in _inverse_sqrt_layers(problem):
        _, rtol = _inverse_sqrt_separation(layer)
        out.append(separated("shampoo_inverse_square_root_is_not_polar", problem,
                             compare(_shampoo_step(layer, 2), layer.polar, tolerance=rtol),
                             f"layer {layer.layer_index}: L^{{-1/2}} G R^{{-1/2}} differs from "
                             "U V^T",
                             _SEED_004))
    return out
