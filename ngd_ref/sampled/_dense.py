"""Exact mean and covariance of the sampled (Monte Carlo) estimators of PROTOCOL s11.

Every score-based estimator of s11 is, per example b and draw s, a quadratic function of the
sampled output score `u_{b,s} = dL(yhat_{b,s}, z_b)/dz` (Martens s5; Grosse s5.4), averaged:

    R = c sum_b (1/S) sum_s X_b(u_{b,s}),  X_b(u) = entries of
        mc_fisher:         g g^T,           g = J_b^T u
        mc_fisher_vp:      g (g^T v)
        mc_fisher_diag:    g * g
        mc_kfac_factors:   Ds Ds^T per layer, Ds = (dz/ds_l)^T u (the pullback trick)

with `yhat_{b,s} ~ r(.|z_b)` i.i.d. So `E[R] = c sum_b E[X_b]` (= F, F v, diag F, S_l of kind
fisher), and with the per-example cumulants `k_r(X_b)` of one draw,

    Var[R]  = (c^2 / S)   sum_b k_2(X_b),
    k_4[R]  = (c^4 / S^3) sum_b k_4(X_b),     mu_4[R] = k_4[R] + 3 Var[R]^2

(cumulants of independent sums add and scale as `a^r`). The cumulants of one draw are exact
expectations over `y ~ r(.|z_b)`: `X_b` is a polynomial of degree 2 in `u`, so its first four
central moments are expectations of polynomials of degree <= 8 in `u`, which the loss's
`score_rule` integrates exactly (enumeration for the categorical and Bernoulli outputs; Gauss
rules -- Hermite for the Gaussians, Charlier for Poisson, whose cumulants all equal `exp(z)`
-- built by Golub-Welsch, see `ngd_ref._losses`).

`estimator="sketch"` (curvature propagation) draws `u = Q_b w` with `Q_b Q_b^T = F_R,b` and
Rademacher `w`; for `K` symmetric, `Var[w^T Q^T K Q w] = 2 sum_{i != j} (Q^T K Q)_ij^2
<= 2 ||Q^T K Q||_F^2 = 2 tr((K F_R)^2)`, the variance of a Gaussian `u ~ N(0, F_R)`, which is
the supremum over all valid roots (spread over many columns the diagonal of `Q^T K Q` goes to
0). So the sketch's covariance bound is computed with a Gaussian score rule of covariance
`F_R,b` (s11: "the largest covariance over all valid Q_b").

Hutchinson's estimators (`z` Rademacher in R^n, `A` symmetric, `W` its off-diagonal part):
one probe's `z_i (A z)_i = A_ii + sum_{j != i} A_ij (z_i z_j)` is a Rademacher sum, so
`k_2 = sum_{j != i} A_ij^2`, `k_4 = -2 sum_{j != i} A_ij^4`; `z^T A z - tr A = sum_{i<j} 2 A_ij
z_i z_j` is a Rademacher chaos of order 2 with `k_2 = 2 sum_{i != j} A_ij^2` and
`E[(.)^4] = 3 k_2^2 - 2 sum_e w_e^4 + 24 sum_{4-cycles} prod w_e` (`w_e = 2 A_ij`; only
even-degree edge multisets survive), the 4-cycles counted from `tr W^4` minus its degenerate
closed walks (`rademacher_chaos_moments`).

Each result also carries `atom`, a bound on the probability that one call's result takes
any given value (for the seed-dependence test): from the enumerated support for the discrete
outputs, 0 for the Gaussian ones, 3/4 for a nonconstant degree-2 polynomial of Rademacher
signs (a nonzero multilinear polynomial of degree d is nonzero with probability >= 2^-d).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._layout import layer_slices
from ngd_ref._losses import ScoreRule, get_loss
from ngd_ref._problem import Problem
from ngd_ref.curvature._dense import DenseCurvature, dense

__all__ = [
    "Estimator",
    "EstimatorMoments",
    "estimator_entries",
    "estimator_moments",
    "hutchinson_moments",
    "rademacher_chaos_moments",
    "rule_nodes",
]

#: degree (in the score) the rules must integrate: fourth moments of a quadratic
_DEGREE = 8
_CHUNK = 4096


def rule_nodes(problem: Problem) -> int:
    """Nodes of the exact product rule over one example's targets (`OutputLoss.score_rule`).

    `Q^{C_y}` grows exponentially with the outputs (`5^20` for a convolution's 20 mse
    outputs): callers check it against their budget before asking for the moments.
    """
    return get_loss(problem.loss).score_rule_nodes(problem.output_dim, _DEGREE)
#: relative size below which a per-example variance counts as zero (a constant contribution)
_ZERO = 1e-24


class Estimator(str, enum.Enum):
    """The score-based estimators of PROTOCOL s11 (K-FAC by `estimator` argument)."""

    MC_FISHER = "mc_fisher"
    MC_FISHER_VP = "mc_fisher_vp"
    MC_FISHER_DIAG = "mc_fisher_diag"
    KFAC_TARGETS = "targets"
    KFAC_SKETCH = "sketch"


@dataclasses.dataclass(frozen=True)
class EstimatorMoments:
    """Exact moments of an estimator's entries (flat, see `estimator_entries`).

    Attributes:
        mean: `(E,)` the exact mean (any S).
        k2: `(E,)` the variance of one call with `S = 1`; with S samples it is `k2 / S`.
        k4: `(E,)` the fourth cumulant with `S = 1` (`k4 / S^3` with S), or None where the
            variance is only bounded (the sketch).
        m2: `(E,)` `c^2 sum_b E[MAG(X_b)^2]`, the second moment of one draw's magnitude,
            `X_b` on absolute values (`_magnitude2`; the rounding allowance of the statistical
            tests is relative to it).
        atom: bound on `P(R = x)` for any fixed `x` and any S (see module docstring).
    """

    mean: np.ndarray
    k2: np.ndarray
    k4: np.ndarray | None
    m2: np.ndarray
    atom: float

    def variance(self, samples: int) -> np.ndarray:
        """`Var[R]` with `samples` draws per example."""
        return self.k2 / samples

    def fourth_central(self, samples: int) -> np.ndarray | None:
        """`E[(R - E R)^4] = k4 / S^3 + 3 (k2 / S)^2`, or None if `k4` is unknown."""
        if self.k4 is None:
            return None
        return self.k4 / samples**3 + 3.0 * (self.k2 / samples) ** 2


# ---------------------------------------------------------------------------------------------
# entries
# ---------------------------------------------------------------------------------------------
def _bias_columns(problem: Problem) -> list[slice]:
    """Per layer, the columns of `J_b` holding `dz/ds_l` (the bias entries of the block)."""
    return [slice(sl.stop - layer.n_out, sl.stop)
            for layer, sl in zip(problem.layers, layer_slices(problem.layers), strict=True)]


def estimator_entries(estimator: Estimator | str, problem: Problem, result) -> np.ndarray:
    """The flat entries `(E,)` of a result, in the order of `estimator_moments`.

    `mc_fisher`: the upper triangle (row-major) of the `(n, n)` matrix; `mc_fisher_vp`,
    `mc_fisher_diag`: the `(n,)` vector; K-FAC (`targets`/`sketch`): the upper triangles of the
    `S_l`, layer after layer (`result` is the list of `S_l`).
    """
    estimator = Estimator(estimator)
    if estimator is Estimator.MC_FISHER:
        matrix = np.asarray(result, dtype=np.float64)
        return matrix[np.triu_indices(problem.n_params)]
    if estimator in (Estimator.MC_FISHER_VP, Estimator.MC_FISHER_DIAG):
        return np.asarray(result, dtype=np.float64)
    parts = []
    for s, layer in zip(result, problem.layers, strict=True):
        parts.append(np.asarray(s, dtype=np.float64)[np.triu_indices(layer.n_out)])
    return np.concatenate(parts)


def _features(estimator: Estimator, problem: Problem, jacobian: np.ndarray, scores: np.ndarray,
              v: np.ndarray | None) -> np.ndarray:
    """One draw's entries `X_b(u)` for each score row `u`: `(N, E)`."""
    if estimator in (Estimator.KFAC_TARGETS, Estimator.KFAC_SKETCH):
        parts = []
        for cols, layer in zip(_bias_columns(problem), problem.layers, strict=True):
            ds = scores @ jacobian[:, cols]
            iu, ju = np.triu_indices(layer.n_out)
            parts.append(ds[:, iu] * ds[:, ju])
        return np.concatenate(parts, axis=1)
    g = scores @ jacobian
    if estimator is Estimator.MC_FISHER:
        iu, ju = np.triu_indices(problem.n_params)
        return g[:, iu] * g[:, ju]
    if estimator is Estimator.MC_FISHER_VP:
        return g * (g @ v)[:, None]
    return g * g


def _gaussian_rule(fisher: np.ndarray) -> ScoreRule:
    """Product 3-point Gauss-Hermite rule for `u ~ N(0, F_R)` (exact to degree 5 per axis)."""
    c = fisher.shape[0]
    xi = np.array([-np.sqrt(3.0), 0.0, np.sqrt(3.0)])
    w = np.array([1 / 6, 2 / 3, 1 / 6])
    grid = np.indices((3,) * c).reshape(c, -1)
    values, vectors = np.linalg.eigh((fisher + fisher.T) / 2)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    return ScoreRule(np.prod(w[grid], axis=0), xi[grid].T @ root.T, 4, False, 0.0)


def _support_atom(weights: np.ndarray, features: np.ndarray) -> float:
    """Bound the largest total probability of support points with (numerically) equal entries.

    Points within `delta = 1e-12 max|features|` of a point `x` in every entry project onto a
    fixed generic direction `w` within `delta ||w||_1` of `x`'s projection, so the heaviest
    window of width `2 delta ||w||_1` over the sorted projections is at least every such
    group's probability (distinct points that happen to project close only raise it: the
    seed test stays conservative). O(N log N) in the N support points; the pairwise
    comparison it replaces was O(N^2 E) and took over half an hour on campaign seed 11 (a
    convolution with 16 Bernoulli outputs: 2^16 support points, E = 528 entries).
    """
    scale = max(float(np.max(np.abs(features))), np.finfo(float).tiny)
    direction = np.cos(np.arange(1, features.shape[1] + 1) * (1 + np.sqrt(5)))  # generic
    projections = features @ direction
    width = 2e-12 * scale * float(np.sum(np.abs(direction)))
    order = np.argsort(projections)
    sorted_projections = projections[order]
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=float)[order])])
    ends = np.searchsorted(sorted_projections, sorted_projections + width, side="right")
    best = float(np.max(cumulative[ends] - cumulative[:-1]))
    return min(best, 1.0)


def _sketch_atom(problem: Problem, ref: DenseCurvature, b: int) -> float:
    """3/4 if some layer's `D^T F_R D` has rank >= 2 (then `Ds Ds^T` is never constant), else 1."""
    fisher = ref.backend.to_float64(ref.output_fishers[b])
    jac = ref.backend.to_float64(ref.jacobians[b])
    for cols in _bias_columns(problem):
        d = jac[:, cols]
        eig = np.sort(np.abs(np.linalg.eigvalsh(d.T @ fisher @ d)))[::-1]
        if eig.shape[0] >= 2 and eig[1] > 1e-12 * max(eig[0], np.finfo(float).tiny):
            return 0.75
    return 1.0


def _accumulate(estimator, problem, jacobian, rule: ScoreRule, v, projection):
    """Per-example `(mean, var, mu4, features for the atom)` of `X_b` (or of `X_b @ w`)."""
    w = np.asarray(rule.weights, dtype=np.float64)
    scores = np.asarray(rule.scores, dtype=np.float64)
    chunks = [slice(i, i + _CHUNK) for i in range(0, w.shape[0], _CHUNK)]

    def feats(sl):
        x = _features(estimator, problem, jacobian, scores[sl], v)
        return x if projection is None else (x @ projection)[:, None]

    mean = sum(w[sl] @ feats(sl) for sl in chunks)
    var = mu4 = 0.0
    for sl in chunks:
        d = feats(sl) - mean
        var = var + w[sl] @ (d * d)
        mu4 = mu4 + w[sl] @ (d**4)
    atom_features = feats(slice(None)) if rule.is_support else None
    return mean, var, mu4, atom_features


def _magnitude2(estimator, problem, jacobian_magnitude, rule: ScoreRule, v,
                projection) -> np.ndarray:
    """`E[MAG(X_b)^2]`: `X_b` on absolute values (`MAG(J_b)`, the node's `MAG(dL/dz)`, `|v|`).

    The magnitude model of the tolerance policy (`verify._policy`: the same formula on
    absolute values): a port's rounding of `Ds = J^T u` is relative to `MAG(J)^T MAG(u)`
    (`DenseCurvature.jacobian_magnitudes`, the chain rule on absolute values), not to
    `|Ds|`, which cancels where an entry's mean is near zero or the output saturates.
    """
    w = np.asarray(rule.weights, dtype=np.float64)
    mags = np.abs(np.asarray(rule.scores if rule.magnitudes is None else rule.magnitudes,
                             dtype=np.float64))
    jac, vec = jacobian_magnitude, None if v is None else np.abs(v)
    proj = None if projection is None else np.abs(projection)
    m2: np.ndarray | float = 0.0
    for i in range(0, w.shape[0], _CHUNK):
        x = _features(estimator, problem, jac, mags[i:i + _CHUNK], vec)
        x = x if proj is None else (x @ proj)[:, None]
        m2 = m2 + w[i:i + _CHUNK] @ (x * x)
    return np.asarray(m2)


def _moments(estimator: Estimator, problem: Problem, backend: Backend, v,
             projection, fisher_magnitudes) -> EstimatorMoments:
    ref = dense(problem, backend)
    loss = get_loss(problem.loss)
    c = float(ref.c)
    mean: np.ndarray | float
    k2: np.ndarray | float
    k4: np.ndarray | float
    m2: np.ndarray | float
    mean = k2 = k4 = m2 = 0.0
    atom = 1.0
    sketch = estimator is Estimator.KFAC_SKETCH
    with backend.precision():
        for b, trace in enumerate(ref.traces):
            jacobian = backend.to_float64(trace.jacobian)
            if sketch:
                rule = _gaussian_rule(backend.to_float64(ref.output_fishers[b]))
                middle = np.abs(backend.to_float64(ref.output_fishers[b])) \
                    if fisher_magnitudes is None else fisher_magnitudes[b]
                magnitude_rule = _gaussian_rule(np.asarray(middle, dtype=np.float64))
            else:
                rule = magnitude_rule = loss.score_rule(backend, trace.a[-1], _DEGREE)
            m, var, mu4, feats = _accumulate(estimator, problem, jacobian, rule, v, projection)
            sq = _magnitude2(estimator, problem, ref.jacobian_magnitudes[b], magnitude_rule, v,
                             projection)
            mean, k2, k4, m2 = mean + c * m, k2 + c**2 * var, k4 + c**4 * (mu4 - 3 * var**2), \
                m2 + c**2 * sq
            constant = bool(np.all(var <= _ZERO * (sq + np.finfo(float).tiny)))
            if sketch:
                example_atom = 1.0 if constant else _sketch_atom(problem, ref, b)
            elif constant:
                example_atom = 1.0
            elif rule.is_support:
                example_atom = _support_atom(np.asarray(rule.weights, dtype=float), feats)
            else:
                example_atom = rule.atom_bound
            atom = min(atom, example_atom)
    return EstimatorMoments(np.asarray(mean), np.asarray(k2), None if sketch else np.asarray(k4),
                            np.asarray(m2), atom)


def estimator_moments(
    estimator: Estimator | str, problem: Problem, *, v: np.ndarray | None = None,
    backend: Backend = FLOAT64, fisher_magnitudes: np.ndarray | None = None,
) -> tuple[EstimatorMoments, EstimatorMoments | None]:
    """Exact moments of a score-based s11 estimator's entries and of its mean projection.

    Args:
        estimator: `mc_fisher`, `mc_fisher_vp`, `mc_fisher_diag`, or the K-FAC `targets` /
            `sketch` (the `S_l` factors; `A_l` is exact).
        problem: the problem.
        v: the vector of `mc_fisher_vp`.
        backend: the arithmetic of the reference quantities (the moments are float64).
        fisher_magnitudes: `(B, C, C)` `MAG(F_R,b)` for the sketch's rounding magnitude `m2`
            (the tolerance policy's `middle_magnitudes("fisher")`: at least the closed form
            on absolute values where the probabilities saturate, since a port's root of
            `F_R,b` carries that rounding); default `|F_R,b|`.

    Returns:
        `(entries, projection)`: the moments of every flat entry (`estimator_entries`) and of
        the scalar `T = <mu, R> / <mu, mu>` (mean 1; None where `mu = 0`), whose variance is
        that of one more quadratic form and which carries the test's power against `(1 +
        delta) mu`.
    """
    estimator = Estimator(estimator)
    if estimator is Estimator.MC_FISHER_VP and v is None:
        raise ValueError("v: mc_fisher_vp needs the vector v")
    entries = _moments(estimator, problem, backend, v, None, fisher_magnitudes)
    norm2 = float(entries.mean @ entries.mean)
    if norm2 <= 0:
        return entries, None
    return entries, _moments(estimator, problem, backend, v, entries.mean / norm2,
                             fisher_magnitudes)


def rademacher_chaos_moments(matrix: np.ndarray) -> tuple[float, float, float]:
    """`(mean, k2, k4)` of `z^T M z` for Rademacher `z` and symmetric `M` (module docstring)."""
    m = np.asarray(matrix, dtype=np.float64)
    m = (m + m.T) / 2
    w = m - np.diag(np.diagonal(m))
    w2, w4 = w * w, w**4
    k2 = 2.0 * float(np.sum(w2))
    rows = np.sum(w2, axis=1)
    walks = float(np.trace(np.linalg.matrix_power(w, 4)))
    cycles = (walks - float(np.sum(w4)) - 2.0 * float(np.sum(rows**2 - np.sum(w4, axis=1)))) / 8
    mu4 = 3.0 * k2**2 - 16.0 * float(np.sum(w4)) + 384.0 * cycles
    return float(np.trace(m)), k2, mu4 - 3.0 * k2**2


def hutchinson_moments(matrix: np.ndarray, *, trace: bool) -> tuple[EstimatorMoments,
                                                                     EstimatorMoments | None]:
    """Exact moments of `hutchinson_diag` (`trace=False`) or `hutchinson_trace` with S = 1.

    Returns `(entries, projection)` as `estimator_moments` (for the trace both are the same
    scalar, so the projection is None).
    """
    a = np.asarray(matrix, dtype=np.float64)
    a = (a + a.T) / 2
    off = a - np.diag(np.diagonal(a))
    atom = 0.75 if np.any(off != 0) else 1.0
    if trace:
        mean, k2, k4 = rademacher_chaos_moments(a)
        m2 = k2 + mean**2
        return EstimatorMoments(np.array([mean]), np.array([k2]), np.array([k4]),
                                np.array([m2]), atom), None
    d = np.diagonal(a).copy()
    k2 = np.sum(off * off, axis=1)
    entries = EstimatorMoments(d, k2, -2.0 * np.sum(off**4, axis=1), k2 + d * d, atom)
    norm2 = float(d @ d)
    if norm2 <= 0:
        return entries, None
    mean, pk2, pk4 = rademacher_chaos_moments((np.diag(d) @ a) / norm2)
    return entries, EstimatorMoments(np.array([mean]), np.array([pk2]), np.array([pk4]),
                                     np.array([pk2 + mean**2]), atom)
