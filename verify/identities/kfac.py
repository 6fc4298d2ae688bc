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

from ngd_ref import Problem, layer_slices
from ngd_ref.dense import (
    ExactnessRegime,
    KfacKind,
    damped_factors,
    dense,
    exactness_regimes,
    factored_damping_pi,
    kfac_approximation,
    kfac_factors,
    kfac_magnitudes,
    kfac_matrix,
    kfac_solve,
)
from verify._report import CheckResult
from verify._tolerance import Comparison, compare, rounding_rtol, solve_rtol
from verify.identities._registry import identity, result, separated

SOURCE = "Grosse ch.4 s5.2 (seed 002), PROTOCOL s4"
DAMPING_SOURCE = "Grosse ch.4 eq. 24 (seed 002)"
PI_GRID = (1e-3, 1e-1, 0.5, 1.0, 2.0, 10.0, 1e3)
DAMPING_GRID = (1e-4, 1e-2, 1.0)


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
                                                 kfac_magnitudes(problem, kind)])))


def _exactness(name: str, problem: Problem, regime: ExactnessRegime) -> list[CheckResult]:
    out = []
    for kind in KfacKind:
        if regime not in exactness_regimes(problem, kind):
            continue
        comparison = compare(kfac_matrix(problem, kind), _exact_blocks(problem, kind),
                             tolerance=_tolerance(problem), magnitude=_magnitude(problem, kind))
        out.append(result(f"{name}[{kind.value}]", problem, comparison,
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


def _smooth_nonlinear_distinct(problem: Problem) -> bool:
    """B > 1 distinct inputs through a hidden tanh/sigmoid/softplus layer: K-FAC is inexact."""
    hidden = {layer.activation for layer in problem.layers[:-1]}
    distinct = len({row.tobytes() for row in problem.inputs}) == problem.batch_size
    return problem.batch_size > 1 and distinct and bool(hidden & {"tanh", "sigmoid", "softplus"})


@identity("kfac_inexact_nonlinear", source=SOURCE, negative_control=True,
          statement="nonlinear network, B > 1 distinct inputs: K-FAC != exact diagonal blocks",
          applies=_smooth_nonlinear_distinct)
def kfac_inexact_nonlinear(problem: Problem) -> list[CheckResult]:
    """Show that s5.2's independence assumption fails: report the gap and the spectra."""
    out = []
    for kind in KfacKind:
        approx = kfac_approximation(problem, kind)
        comparison = compare(kfac_matrix(problem, kind), _exact_blocks(problem, kind),
                             tolerance=_tolerance(problem), magnitude=_magnitude(problem, kind))
        top = ", ".join(f"{v:.3g}" for v in approx.kfac_spectrum[:3])
        exact_top = ", ".join(f"{v:.3g}" for v in approx.exact_spectrum[:3])
        what = (f"K-FAC({kind.value}) is an approximation: rel. Frobenius error of the blocks "
                f"{approx.block_diagonal_error:.3g}, of the full matrix {approx.full_error:.3g}; "
                f"top eigenvalues K-FAC [{top}] vs exact [{exact_top}]")
        out.append(separated(f"kfac_inexact_nonlinear[{kind.value}]", problem, comparison, what,
                             SOURCE))
    return out


@identity("kfac_solve_matches_explicit", source="Grosse ch.4 eq. 22-24 (seed 002)",
          statement="eigen/factored solves equal explicit inverses of the Kronecker matrices")
def kfac_solve_matches_explicit(problem: Problem) -> list[CheckResult]:
    """`kfac_solve` against `np.linalg.solve` of the explicitly formed damped matrices."""
    out = []
    v = dense(problem).gradient
    for kind in KfacKind:
        factors = kfac_factors(problem, kind)
        for damping in (1e-2, 1.0):
            explicit = {
                "eigen": _block_diagonal([np.kron(a, s) + damping * np.eye(a.shape[0] * s.shape[0])
                                          for a, s in factors]),
                "factored": _block_diagonal([np.kron(*damped_factors(a, s, damping))
                                             for a, s in factors]),
            }
            for method, matrix in explicit.items():
                desired = np.linalg.solve(matrix, v)
                tol = solve_rtol("float64", length=problem.n_params, depth=len(problem.layers) + 2,
                                 condition=float(np.linalg.cond(matrix)))
                comparison = compare(kfac_solve(problem, v, damping, method, kind), desired,
                                     tolerance=tol)
                out.append(result(f"kfac_solve_matches_explicit[{kind.value},{method},"
                                  f"lambda={damping:g}]", problem, comparison,
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
    """Eq. 24 on a grid of pi (including the trace-norm pi) and lambda, every layer and kind.

    Loewner order: the smallest eigenvalue of the difference must be `>= -tol ||M_f||_2`
    (a rounding-level negative part only). The quadratic-form consequence on the gradient is
    held to the solve tolerance of `A (x) S + l I`. The theorem needs PSD factors (the two
    dropped terms `pi sqrt(l) I (x) S` and `sqrt(l)/pi A (x) I` must be PSD), so the GGN kind
    of `gaussian_logvar`, whose `H_L` is indefinite, is excluded (`_psd_kinds`).
    """
    g = dense(problem).gradient
    out = []
    for kind in _psd_kinds(problem):
        worst_eig, worst_quad = 0.0, 0.0
        for (a, s), sl in zip(kfac_factors(problem, kind), layer_slices(problem.layers),
                              strict=True):
            dim = a.shape[0] * s.shape[0]
            eig_tol = rounding_rtol("float64", length=dim, depth=2)
            pis = PI_GRID + (float(factored_damping_pi(a, s)),)
            for damping in DAMPING_GRID:
                for pi in pis:
                    gap, norm, m_f, m_e = _loewner_gap(a, s, damping, pi)
                    worst_eig = max(worst_eig, max(-gap, 0.0) / norm / eig_tol)
                    gl = g[sl]
                    q_f, q_e = gl @ np.linalg.solve(m_f, gl), gl @ np.linalg.solve(m_e, gl)
                    tol = solve_rtol("float64", length=dim, depth=2,
                                     condition=float(np.linalg.cond(m_e)))
                    excess = max(q_f - q_e, 0.0) / (abs(q_e) * tol) if q_f > q_e else 0.0
                    worst_quad = max(worst_quad, excess)
        # Errors are in units of each case's own tolerance, so the threshold is 1.
        loewner = Comparison(worst_eig, 1.0, 1.0, worst_eig, None, worst_eig <= 1.0)
        quad = Comparison(worst_quad, 1.0, 1.0, worst_quad, None, worst_quad <= 1.0)
        grid = f"pi in {list(PI_GRID)} + trace-norm pi, lambda in {list(DAMPING_GRID)}"
        out.append(result(f"kfac_factored_damping_conservative[{kind.value},loewner]", problem,
                          loewner, f"M_factored >= A (x) S + l I ({grid}; error = worst negative "
                          "eigenvalue / (||M_f|| tol))", DAMPING_SOURCE))
        out.append(result(f"kfac_factored_damping_conservative[{kind.value},gradient]", problem,
                          quad, "g^T M_f^{-1} g <= g^T (A (x) S + l I)^{-1} g (error = relative "
                          "excess)", DAMPING_SOURCE))
    return out


def _psd_kinds(problem: Problem) -> list[KfacKind]:
    """Kinds whose `S_l` is PSD by construction: all but the GGN of an indefinite `H_L`."""
    indefinite = problem.loss == "gaussian_logvar"
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
