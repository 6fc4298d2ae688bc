"""K-FAC identities (Grosse ch. 4 s5, seed 002; PROTOCOL s4) checked on the dense reference.

* Exactness regimes: `A_l (x) S_l` equals the exact diagonal block of `F`, `G` or `EF` with
  one example, for deep linear `mse` networks (fisher/ggn) and for identical examples.
* Outside them K-FAC is an approximation: a negative control measures the gap (relative
  Frobenius error of the block diagonal, and the spectra) and requires it to be far beyond
  rounding for smooth nonlinear networks with several distinct inputs.
* The damped solves equal the explicit `(A (x) S + l I)^{-1} v` (eq. 23) and
  `(A_d (x) S_d)^{-1} v` (eq. 24).
* Eq. 24's theorem (issue 3, identity 10): for every pi > 0 and lambda > 0,
  `(A + pi sqrt(l) I) (x) (S + sqrt(l)/pi I) >= A (x) S + l I` in the Loewner order, hence
  `g^T M_factored^{-1} g <= g^T (A (x) S + l I)^{-1} g`; a negative control shows that the
  pi-free "damp both factors by lambda" formula `(A + l I) (x) (S + l I)` violates it.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem, layer_slices
from ngd_ref.dense import (
    ExactnessRegime,
    KfacKind,
    damped_factors,
    dense,
    exactness_regimes,
    factored_damping_pi,
    kfac_approximation,
    kfac_factors,
    kfac_matrix,
    kfac_solve,
)
from verify._policy import tolerance_policy
from verify._report import CheckResult
from verify._tolerance import Comparison, compare, rounding_rtol
from verify.identities._common import solve_tolerance
from verify.identities._registry import detectable, identity, result, separated

SOURCE = "Grosse ch.4 s5.2 (seed 002), PROTOCOL s4"
DAMPING_SOURCE = "Grosse ch.4 eq. 24 (seed 002)"
#: pi / pi_trace of the eq. 24 checks, `pi_trace = factored_damping_pi(A, S)` (1 when a trace
#: vanishes): relative, like the lambda grid, so each factor's damping stays far above its
#: rounding. With absolute pi, a layer with `||S|| = 4e-37` next to `||A|| = 1.6` (a saturated
#: width-1 tanh; seed 8 #71) got `pi sqrt(l) ~ 1e-20 pi`, below A's rounding (1e-16 on its null
#: space): `A + pi sqrt(l) I` was singular in float64. With `pi = r pi_trace` both factors'
#: dampings, relative to their norms, are `>= min(r, 1/r) sqrt(l / (||A (x) S|| dim))`
#: (for PSD factors `||X|| / dim X <= tr(X) / dim X <= ||X||`).
PI_GRID = (1e-3, 1e-1, 0.5, 1.0, 2.0, 10.0, 1e3)
#: lambda / ||A (x) S||_2 of the damping checks: relative, so the damped matrices' condition
#: numbers stay below ~1e4 whatever the curvature's scale (gaussian_logvar reaches 1e16).
DAMPING_GRID = (1e-4, 1e-2, 1.0)
SOLVE_DAMPINGS = (1e-2, 1.0)


def _tolerance(problem: Problem) -> float:
    """Return the float64 rounding tolerance of a second-order quantity of `problem`."""
    length = max(problem.n_params, problem.batch_size * problem.output_dim)
    return rounding_rtol("float64", length=length, depth=len(problem.layers) + 2)


def _block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    n = sum(b.shape[0] for b in blocks)
    out, start = np.zeros((n, n)), 0
    for block in blocks:
        out[start:start + block.shape[0], start:start + block.shape[0]] = block
        start += block.shape[0]
    return out


def _exact_blocks(problem: Problem, kind: KfacKind) -> np.ndarray:
    matrix = dense(problem).matrix(kind.curvature)
    return _block_diagonal([matrix[sl, sl] for sl in layer_slices(problem.layers)])


def _magnitude(problem: Problem, kind: KfacKind) -> float:
    return float(np.linalg.norm(_block_diagonal([np.kron(a, s) for a, s in
                                                 tolerance_policy(problem, "float64")
                                                 .kfac_magnitudes(kind.value)])))


def _exactness(name: str, problem: Problem, regime: ExactnessRegime) -> list[CheckResult]:
    out = []
    for kind in KfacKind:
        if regime not in exactness_regimes(problem, kind):
            continue
        out.append(result(f"{name}[{kind.value}]", problem, _kfac_comparison(problem, kind),
                          f"A (x) S = exact diagonal blocks of {kind.curvature.value} "
                          f"({regime.value})", SOURCE))
    return out


def _applies(regime: ExactnessRegime):
    return lambda problem: any(regime in exactness_regimes(problem, kind) for kind in KfacKind)


@identity("kfac_exact_one_example", source=SOURCE,
          statement="B = 1: A_l (x) S_l equals the exact diagonal block of F, G, EF",
          applies=_applies(ExactnessRegime.ONE_EXAMPLE))
def kfac_exact_one_example(problem: Problem) -> list[CheckResult]:
    """One example: the sum over b has one term, so pushing the expectation inward is exact."""
    return _exactness("kfac_exact_one_example", problem, ExactnessRegime.ONE_EXAMPLE)


@identity("kfac_exact_deep_linear_mse", source=SOURCE,
          statement="deep linear network with mse: K-FAC is exact for F and G at any B",
          applies=_applies(ExactnessRegime.DEEP_LINEAR_MSE))
def kfac_exact_deep_linear_mse(problem: Problem) -> list[CheckResult]:
    """`dz/ds_l` is a product of weights and `H_L = F_R = I`: `M_b` is the same for every b."""
    return _exactness("kfac_exact_deep_linear_mse", problem, ExactnessRegime.DEEP_LINEAR_MSE)


@identity("kfac_exact_identical_examples", source=SOURCE,
          statement="identical examples: A_l (x) S_l equals the exact diagonal block",
          applies=_applies(ExactnessRegime.IDENTICAL_EXAMPLES))
def kfac_exact_identical_examples(problem: Problem) -> list[CheckResult]:
    """All examples equal: every term of the sum is the same Kronecker product."""
    return _exactness("kfac_exact_identical_examples", problem,
                      ExactnessRegime.IDENTICAL_EXAMPLES)


def _example_factors(problem: Problem, kind: KfacKind) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per example b, per layer: `(abar_b abar_b^T, M_b)`, the one-example K-FAC factors.

    With one example K-FAC is exact (`kfac_exact_one_example`), so the factors of the problem
    restricted to example b are that example's Kronecker pair: `A = abar_b abar_b^T` and
    `S = c_1 M_b` with the one-example scale `c_1` (1 for both reductions).
    """
    out = []
    for b in range(problem.batch_size):
        single = problem.replace(name=f"{problem.name}/example{b}",
                                 inputs=problem.inputs[b:b + 1], targets=problem.targets[b:b + 1])
        out.append([(a, s / single.scale) for a, s in kfac_factors(single, kind)])
    return out


def kfac_gap(problem: Problem, kind: KfacKind) -> float:
    """`||C_diag - K-FAC||_F` predicted from the batch covariance of the two factors' terms.

    Layer l's exact block is `c sum_b x_b (x) m_b` (`x_b = abar_b abar_b^T`, `m_b = M_b`) and
    K-FAC's is `(1/B sum_b x_b) (x) (c sum_b m_b)`; with `dx_b = x_b - mean x`, `dm_b = m_b -
    mean m` their difference is `c sum_b dx_b (x) dm_b`, whose Frobenius norm is that of the
    cross-covariance matrix `c sum_b vec(dx_b) vec(dm_b)^T` (the Kronecker product is a
    rearrangement of the outer product of the vecs). K-FAC is exact on the block iff that
    covariance vanishes: one example, identical examples, a deep linear mse network, but
    also dead ReLU units, a width-1 bottleneck making `M_b` proportional across examples, ...
    """
    per_example = _example_factors(problem, kind)
    total = 0.0
    for layer in range(len(problem.layers)):
        xs = np.stack([f[layer][0].reshape(-1) for f in per_example])
        ms = np.stack([f[layer][1].reshape(-1) for f in per_example])
        cross = (xs - xs.mean(axis=0)).T @ (ms - ms.mean(axis=0))
        total += float(np.sum(cross**2)) * problem.scale**2
    return float(np.sqrt(total))


def _kfac_comparison(problem: Problem, kind: KfacKind) -> Comparison:
    return compare(kfac_matrix(problem, kind), _exact_blocks(problem, kind),
                   tolerance=_tolerance(problem), magnitude=_magnitude(problem, kind))


def _inexact_kinds(problem: Problem) -> list[KfacKind]:
    """Kinds whose predicted gap (`kfac_gap`, relative to the comparison's scale) is detectable.

    None where a layer has several positions (a convolution, PROTOCOL s12): the batch
    covariance misses the cross-position terms (`verify.identities.conv` has those controls).
    """
    if problem.has_weight_sharing:
        return []
    out = []
    for kind in KfacKind:
        scale = max(float(np.linalg.norm(_exact_blocks(problem, kind))), _magnitude(problem, kind))
        if scale > 0 and detectable(kfac_gap(problem, kind) / scale, _tolerance(problem)):
            out.append(kind)
    return out


@identity("kfac_inexact_nonlinear", source=SOURCE, negative_control=True,
          statement="K-FAC != exact diagonal blocks where the batch covariance of abar abar^T "
                    "and M_b is nonzero (detectably: > 102 tolerances)",
          applies=lambda p: bool(_inexact_kinds(p)))
def kfac_inexact_nonlinear(problem: Problem) -> list[CheckResult]:
    """Show that s5.2's independence assumption fails: report the gap and the spectra.

    Hypothesis (computed, `kfac_gap`): the cross-covariance over the batch of the activation
    term `abar_b abar_b^T` and the pseudo-gradient term `M_b` is nonzero beyond
    `(MARGIN + 2) x` the rounding tolerance -- the exact size of K-FAC's error on the diagonal
    blocks, computed from the one-example factors rather than from the two matrices compared.
    A nonlinear network with distinct inputs usually satisfies it, but not always (dead ReLU
    units, a width-1 hidden layer, saturated units), so it is checked, kind by kind.
    """
    out = []
    for kind in _inexact_kinds(problem):
        approx = kfac_approximation(problem, kind)
        top = ", ".join(f"{v:.3g}" for v in approx.kfac_spectrum[:3])
        exact_top = ", ".join(f"{v:.3g}" for v in approx.exact_spectrum[:3])
        what = (f"K-FAC({kind.value}) is an approximation: rel. Frobenius error of the blocks "
                f"{approx.block_diagonal_error:.3g}, of the full matrix {approx.full_error:.3g}; "
                f"top eigenvalues K-FAC [{top}] vs exact [{exact_top}]")
        out.append(separated(f"kfac_inexact_nonlinear[{kind.value}]", problem,
                             _kfac_comparison(problem, kind), what, SOURCE))
    return out


def _dampings(a: np.ndarray, s: np.ndarray, grid: tuple[float, ...]) -> list[float]:
    """`grid * ||A (x) S||_2` (`= ||A||_2 ||S||_2`); the grid itself for a zero factor."""
    scale = float(np.linalg.norm(a, 2) * np.linalg.norm(s, 2))
    return [fraction * (scale if scale > 0 else 1.0) for fraction in grid]


@identity("kfac_solve_matches_explicit", source="Grosse ch.4 eq. 22-24 (seed 002)",
          statement="eigen/factored solves equal explicit inverses of the Kronecker matrices")
def kfac_solve_matches_explicit(problem: Problem) -> list[CheckResult]:
    """`kfac_solve` against `np.linalg.solve` of the explicitly formed damped matrices.

    Dampings are `SOLVE_DAMPINGS` times the largest `||A_l (x) S_l||_2`. The factored method
    (eq. 24) needs PSD factors -- its trace-norm `pi` is the square root of a ratio of traces --
    so it is checked on `_psd_kinds` only; the eigen method (eq. 23) on every kind.
    """
    out = []
    v = dense(problem).gradient
    psd = _psd_kinds(problem)
    for kind in KfacKind:
        factors = kfac_factors(problem, kind)
        largest = max(factors, key=lambda f: float(np.linalg.norm(f[0], 2)
                                                   * np.linalg.norm(f[1], 2)))
        for damping in _dampings(*largest, SOLVE_DAMPINGS):
            eigen = [np.kron(a, s) + damping * np.eye(len(a) * len(s)) for a, s in factors]
            explicit = {"eigen": _block_diagonal(eigen)}
            if kind in psd:
                explicit["factored"] = _block_diagonal([np.kron(*damped_factors(a, s, damping))
                                                        for a, s in factors])
            for method, matrix in explicit.items():
                desired = np.linalg.solve(matrix, v)
                tol = solve_tolerance(problem, float(np.linalg.cond(matrix)))
                comparison = compare(kfac_solve(problem, v, damping, method, kind), desired,
                                     tolerance=tol)
                out.append(result(f"kfac_solve_matches_explicit[{kind.value},{method},"
                                  f"lambda={damping:.3g}]", problem, comparison,
                                  f"{method} solve = explicit inverse", "Grosse eq. 23/24"))
    return out


def _loewner_gap(a: np.ndarray, s: np.ndarray, damping: float, pi: float,
                 wrong: bool = False) -> tuple[float, float, np.ndarray, np.ndarray]:
    """`(min eigenvalue of M_damped - (A (x) S + l I), ||M_damped||_2, M_damped, exact)`."""
    if wrong:
        a_d, s_d = a + damping * np.eye(a.shape[0]), s + damping * np.eye(s.shape[0])
    else:
        a_d, s_d = damped_factors(a, s, damping, pi=pi)
    m_damped = np.kron(a_d, s_d)
    exact = np.kron(a, s) + damping * np.eye(m_damped.shape[0])
    gap = float(np.linalg.eigvalsh(m_damped - exact)[0])
    return gap, float(np.linalg.norm(m_damped, 2)), m_damped, exact


@identity("kfac_factored_damping_conservative", source=DAMPING_SOURCE,
          statement="for every pi > 0 and lambda > 0, (A + pi sqrt(l) I) (x) (S + sqrt(l)/pi I)"
                    " >= A (x) S + l I (Loewner), so g^T M_f^{-1} g <= g^T (A (x) S + l I)^{-1} g")
def kfac_factored_damping_conservative(problem: Problem) -> list[CheckResult]:
    """Eq. 24 on a grid of pi (relative to the trace-norm pi) and lambda, every layer and kind.

    Loewner order: the smallest eigenvalue of the difference must be `>= -tol ||M_f||_2`
    (a rounding-level negative part only). The quadratic-form consequence on the gradient is
    held to the solve tolerance of `A (x) S + l I`. The theorem needs PSD factors (the two
    dropped terms `pi sqrt(l) I (x) S` and `sqrt(l)/pi A (x) I` must be PSD), so the GGN kind
    of `gaussian_logvar`, whose `H_L` is indefinite, is excluded (`_psd_kinds`). A factor that
    is PSD in exact arithmetic can come out rounding-level indefinite (a layer whose `S_l` is
    exactly zero, e.g. when the next layer's rows are equal and the softmax cannot see the
    shift); the theorem is checked on the factors' PSD parts (`_psd_part`), which differ from
    the computed factors by that rounding only.
    """
    g = dense(problem).gradient
    out = []
    for kind in _psd_kinds(problem):
        worst_eig, worst_quad = 0.0, 0.0
        for factors, sl in zip(kfac_factors(problem, kind), layer_slices(problem.layers),
                               strict=True):
            a, s = (_psd_part(f) for f in factors)
            dim = a.shape[0] * s.shape[0]
            eig_tol = rounding_rtol("float64", length=dim, depth=2)
            pis = tuple(ratio * float(factored_damping_pi(a, s)) for ratio in PI_GRID)
            cases = [(damping, pi) for damping in _dampings(a, s, DAMPING_GRID) for pi in pis]
            # All (lambda, pi) cases at once: (cases, dim, dim) stacks.
            m_f = np.stack([np.kron(*damped_factors(a, s, damping, pi=pi))
                            for damping, pi in cases])
            m_e = np.kron(a, s) + np.array([d for d, _ in cases])[:, None, None] * np.eye(dim)
            gaps = np.linalg.eigvalsh(m_f - m_e)[:, 0]
            norms = np.linalg.norm(m_f, 2, axis=(1, 2))
            worst_eig = max(worst_eig, float(np.max(np.maximum(-gaps, 0.0) / norms)) / eig_tol)
            gl = g[sl]
            rhs = np.broadcast_to(gl, (len(cases), dim))[..., None]
            q_f = np.linalg.solve(m_f, rhs)[..., 0] @ gl
            q_e = np.linalg.solve(m_e, rhs)[..., 0] @ gl
            tols = np.array([solve_tolerance(problem, float(c), length=dim, depth=2)
                             for c in np.linalg.cond(m_e)])
            excess = np.divide(q_f - q_e, np.abs(q_e) * tols, out=np.zeros_like(q_f),
                               where=q_f > q_e)
            worst_quad = max(worst_quad, float(np.max(excess)))
        # Errors are in units of each case's own tolerance, so the threshold is 1.
        loewner = Comparison(worst_eig, 1.0, 1.0, worst_eig, None, worst_eig <= 1.0)
        quad = Comparison(worst_quad, 1.0, 1.0, worst_quad, None, worst_quad <= 1.0)
        grid = (f"pi / trace-norm pi in {list(PI_GRID)}, lambda / ||A (x) S|| in "
                f"{list(DAMPING_GRID)}")
        out.append(result(f"kfac_factored_damping_conservative[{kind.value},loewner]", problem,
                          loewner, f"M_factored >= A (x) S + l I ({grid}; error = worst negative "
                          "eigenvalue / (||M_f|| tol))", DAMPING_SOURCE))
        out.append(result(f"kfac_factored_damping_conservative[{kind.value},gradient]", problem,
                          quad, "g^T M_f^{-1} g <= g^T (A (x) S + l I)^{-1} g (error = relative "
                          "excess)", DAMPING_SOURCE))
    return out


def _psd_part(m: np.ndarray) -> np.ndarray:
    """The nearest PSD matrix to symmetric `m` (negative eigenvalues set to zero)."""
    w, q = np.linalg.eigh(m)
    return (q * np.maximum(w, 0.0)) @ q.T


def _psd_kinds(problem: Problem) -> list[KfacKind]:
    """Kinds whose `S_l` is PSD by construction: all but the GGN of an indefinite `H_L`."""
    indefinite = not Loss(problem.loss).spec.hessian_psd
    return [k for k in KfacKind if not (indefinite and k is KfacKind.GGN)]


def _wrong_damping_applies(problem: Problem) -> bool:
    """Check for a layer with `a_min + s_min < 1`, where `(A + l I) (x) (S + l I)` fails."""
    return any(_violating_damping(a, s) is not None for a, s in kfac_factors(problem, "fisher"))


def _violating_damping(a: np.ndarray, s: np.ndarray) -> float | None:
    """Return the lambda maximizing the violation `l (1 - a_min - s_min - l)`, or None.

    Along the eigenvector pair with the smallest eigenvalues, the wrong matrix exceeds
    `A (x) S + l I` by `l (a_min + s_min) + l^2 - l`, negative for `l < 1 - a_min - s_min`.
    """
    slack = 1.0 - float(np.linalg.eigvalsh(a)[0]) - float(np.linalg.eigvalsh(s)[0])
    return slack / 2 if slack > 0.1 else None


@identity("kfac_pi_free_damping_not_conservative", source=DAMPING_SOURCE,
          negative_control=True, applies=_wrong_damping_applies,
          statement="(A + l I) (x) (S + l I) is NOT >= A (x) S + l I (a pi-free wrong damping)")
def kfac_pi_free_damping_not_conservative(problem: Problem) -> list[CheckResult]:
    """Catch the bug of damping each factor by lambda instead of pi sqrt(lambda)."""
    out = []
    for index, (a, s) in enumerate(kfac_factors(problem, "fisher")):
        damping = _violating_damping(a, s)
        if damping is None:
            continue
        gap, norm, _, _ = _loewner_gap(a, s, damping, 1.0, wrong=True)
        tol = rounding_rtol("float64", length=a.shape[0] * s.shape[0], depth=2)
        error = max(-gap, 0.0) / norm
        comparison = Comparison(error, tol, norm, max(-gap, 0.0), None, error <= tol)
        out.append(separated(f"kfac_pi_free_damping_not_conservative[layer{index}]", problem,
                             comparison, f"(A + l I) (x) (S + l I) - (A (x) S + l I) has "
                             f"eigenvalue {gap:.3g} < 0 at lambda={damping:.3g}",
                             DAMPING_SOURCE))
    return out
