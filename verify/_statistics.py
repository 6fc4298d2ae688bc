"""Distribution-free tests of sampled estimators with an exact false-positive rate (PROTOCOL s11).

A port's estimator is called `M = K m` times with distinct seeds (S draws per call); the
calls are independent (s11). With the exact mean `mu`, variance `sigma^2 = k2 / S` and fourth
central moment of every entry (`ngd_ref.sampled`), four tests run, each valid for ANY
distribution with those moments -- no normal approximation:

**Mean: median of means with Chebyshev per block** (Nemirovski and Yudin 1983; Lugosi and
Mendelson 2019). Split the calls into K blocks of m; block means have variance
`sigma^2 / m`, so by Chebyshev a block misses `mu` by `>= t = sigma / sqrt(m p)` with
probability `<= p`. The median misses by `>= t` only if at least `ceil(K/2)` of the K
independent blocks do:

    P(|median - mu| >= t) <= beta(K, p) = P(Binomial(K, p) >= ceil(K/2)),

computed exactly (`majority_tail`). `p` is the largest value with `tests * beta(K, p) <=`
the level, `tests` the union bound over the entries plus the mean projection
`T = <mu, R> / <mu, mu>` (mean 1, its own exact variance), so the false-positive rate of the
whole result is at most its share of 1e-6. K minimizes `K / p` (the threshold for a fixed
number of draws is `sigma sqrt(K / (N p))`, N = K m S; `block_design`).

**Power.** A port returning `(1 + delta) mu` (any distribution, variance scaled by
`(1 + delta)^2`) is detected with probability >= 0.99 once
`delta > (a + b) / (1 - b)`, `a` the test's threshold and `b = sigma_T / sqrt(m p_99)` with
`beta(K, p_99) = 0.01` (its median then stays within `(1 + delta) b` of `1 + delta`),
relative units of the projection (or of one entry, whichever is smaller). S is chosen so
that this `delta` is the goal 2% where the sample budget allows (`choose_samples`).

**Variance (one-sided).** Per block, `V_k = (1/m) sum_j (R_j - mu)^2` has mean `sigma^2` and
variance `(mu_4 - sigma^4) / m`; Cantelli's inequality bounds `P(V_k >= sigma^2 + t)` by
`var / (var + t^2)`, and the median of the K blocks again has level `beta(K, p)`. Samples
shared across examples or draws inflate `sigma^2` (by up to B or S).

**Seeds.** One call's result takes any given value with probability `<= q` (the `atom` of the
moments), so `m_s` calls with distinct seeds are all equal with probability `<= q^(m_s - 1)`;
`m_s = 1 + ceil(log(level) / log q)` (2 for continuous outputs; not applied where `q = 1`).

**Rounding.** A port in precision `u` is off by at most `rtol * A` per entry, `A` the
magnitude `(c/S) sum |X|` of its sum (the policy of `verify._tolerance`), with
`E[A^2] <= (B + 1) c^2 sum_b E[X_b^2]` (`magnitude2`). Markov's inequality at a tenth of the
block level bounds the block's rounding by `r = rtol sqrt(magnitude2 / (p / 10))`; Chebyshev
keeps nine tenths, so a block fails with probability `<= p` and the level above stands.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy.special import betainc

from verify._tolerance import FALSE_POSITIVE_RATE

__all__ = [
    "POWER_PROBABILITY",
    "TARGET_DELTA",
    "BlockDesign",
    "MeanOutcome",
    "SeedOutcome",
    "VarianceOutcome",
    "block_design",
    "block_level",
    "choose_samples",
    "majority_tail",
    "mean_test",
    "seed_calls",
    "seed_test",
    "variance_test",
]

#: the detection probability at which power is reported (s11)
POWER_PROBABILITY = 0.99
#: relative bias the sample sizes aim to detect (issue 16's performance goal)
TARGET_DELTA = 0.02
#: shares of the false-positive rate of one (capability, problem): mean, variance, seeds
MEAN_SHARE, VARIANCE_SHARE, SEED_SHARE = 0.5, 0.4, 0.1
#: share of a block's level given to Chebyshev/Cantelli (the rest bounds the rounding)
_CHEBYSHEV_SHARE = 0.9


def majority_tail(blocks: int, p: float) -> float:
    """`P(Binomial(blocks, p) >= ceil(blocks / 2))`: the level of a median of `blocks` blocks.

    Computed as the regularized incomplete beta function `I_p(k, K - k + 1)`, `k = ceil(K/2)`
    (the binomial tail identity).
    """
    k = math.ceil(blocks / 2)
    return float(betainc(k, blocks - k + 1, p))


@functools.lru_cache(maxsize=1024)
def block_level(blocks: int, level: float) -> float:
    """The largest per-block failure probability `p` with `majority_tail(blocks, p) <= level`."""
    lo, hi = 0.0, 0.5
    if majority_tail(blocks, hi) <= level:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if majority_tail(blocks, mid) <= level:
            lo = mid
        else:
            hi = mid
    return lo


@dataclasses.dataclass(frozen=True)
class BlockDesign:
    """How many blocks and calls a statistical check makes, and its per-block levels.

    Attributes:
        blocks: K (odd).
        calls_per_block: m.
        p_mean: per-block level of each mean test (entries and projection).
        p_variance: per-block level of each variance test.
        p_power: per-block probability with `majority_tail = 1 - POWER_PROBABILITY`.
        seed_level: the level of the seed-dependence test.
    """

    blocks: int
    calls_per_block: int
    p_mean: float
    p_variance: float
    p_power: float
    seed_level: float

    @property
    def calls(self) -> int:
        """`K m`."""
        return self.blocks * self.calls_per_block


@functools.lru_cache(maxsize=256)
def block_design(entries: int, *, calls_per_block: int = 8,
                 false_positive_rate: float = FALSE_POSITIVE_RATE) -> BlockDesign:
    """The K minimizing `K / p` for `entries + 1` mean tests at their share of the level."""
    mean_level = MEAN_SHARE * false_positive_rate / (entries + 1)
    best = min(range(5, 202, 2), key=lambda k: k / block_level(k, mean_level))
    return BlockDesign(
        best, calls_per_block, block_level(best, mean_level),
        block_level(best, VARIANCE_SHARE * false_positive_rate / max(entries, 1)),
        block_level(best, 1.0 - POWER_PROBABILITY), SEED_SHARE * false_positive_rate,
    )


def _rounding(rtol: float, magnitude2: np.ndarray | float, p: float) -> np.ndarray:
    return rtol * np.sqrt(np.asarray(magnitude2, dtype=float) / ((1 - _CHEBYSHEV_SHARE) * p))


def _delta(threshold: np.ndarray, spread: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Smallest `delta` with `delta |mu| > threshold + (1 + delta) spread`, inf where none."""
    scale = np.abs(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (threshold + spread) / (scale - spread)
    return np.where(scale > spread, out, np.inf)


def choose_samples(k2_projection: float, design: BlockDesign, *, max_samples: int,
                   target: float = TARGET_DELTA, least: int = 4) -> int:
    """Draws per call S so that the projection test detects a relative bias `target`.

    From `target = (a + b) / (1 - b)` with `a = s / sqrt(0.9 p_mean)`, `b = s / sqrt(p_power)`
    and `s = sqrt(k2 / (S m))` (rounding neglected here; it is included in the reported
    power). Clamped to `[least, max_samples]`.
    """
    ia = 1 / math.sqrt(_CHEBYSHEV_SHARE * design.p_mean)
    ib = 1 / math.sqrt(design.p_power)
    s_block = target / (ia + (1 + target) * ib)
    needed = k2_projection / (design.calls_per_block * s_block**2)
    return int(min(max(math.ceil(needed), least), max_samples))


@dataclasses.dataclass(frozen=True)
class MeanOutcome:
    """Result of the median-of-means test.

    Attributes:
        passed: every entry (and the projection) within its threshold.
        worst: index of the entry with the largest deviation/threshold ratio (-1: projection).
        deviation: `|median - mu|` there.
        threshold: its threshold.
        power: smallest relative bias `delta` detected with probability 0.99.
    """

    passed: bool
    worst: int
    deviation: float
    threshold: float
    power: float


def _blocks(results: np.ndarray, design: BlockDesign) -> np.ndarray:
    """`(K, m, E)` view of the `(K m, E)` results, in call order."""
    return results[: design.calls].reshape(design.blocks, design.calls_per_block, -1)


def mean_test(results: np.ndarray, moments, projection, design: BlockDesign, samples: int, *,
              rtol: float, magnitude2: np.ndarray,
              projection_magnitude2: float | None = None) -> MeanOutcome:
    """Median-of-means test of `E[R] = mu` for `(K m, E)` results (module docstring).

    Args:
        results: one row of flat entries per call, blocks of m consecutive calls.
        moments: the entries' `EstimatorMoments`.
        projection: the projection's `EstimatorMoments` (or None).
        design: from `block_design`.
        samples: S.
        rtol: the port's rounding tolerance.
        magnitude2: `(B + 1) m2` per entry (rounding allowance, module docstring).
        projection_magnitude2: the same for the projection.
    """
    means = _blocks(results, design).mean(axis=1)
    m, p = design.calls_per_block, design.p_mean
    sd = np.sqrt(moments.variance(samples) / m)
    rounding = _rounding(rtol, magnitude2, p)
    threshold = sd / math.sqrt(_CHEBYSHEV_SHARE * p) + rounding
    deviation = np.abs(np.median(means, axis=0) - moments.mean)
    spread = sd / math.sqrt(design.p_power) + rounding
    powers = [_delta(threshold, spread, moments.mean)]
    ratios = np.where(threshold > 0, deviation / np.where(threshold > 0, threshold, 1), np.where(
        deviation > 0, np.inf, 0.0))
    worst = int(np.argmax(ratios)) if ratios.size else 0
    passed = bool(np.all(deviation <= threshold))
    best = (float(deviation[worst]), float(threshold[worst]), float(ratios[worst]))
    if projection is not None:
        weights = moments.mean / float(moments.mean @ moments.mean)
        t_means = means @ weights
        t_sd = math.sqrt(float(projection.variance(samples)[0]) / m)
        t_round = float(_rounding(rtol, projection_magnitude2 or 0.0, p))
        t_threshold = t_sd / math.sqrt(_CHEBYSHEV_SHARE * p) + t_round
        t_dev = abs(float(np.median(t_means)) - 1.0)
        powers.append(_delta(np.array([t_threshold]),
                             np.array([t_sd / math.sqrt(design.p_power) + t_round]),
                             np.array([1.0])))
        passed = passed and t_dev <= t_threshold
        ratio = t_dev / t_threshold if t_threshold > 0 else (math.inf if t_dev else 0.0)
        if ratio > best[2]:
            worst, best = -1, (t_dev, t_threshold, ratio)
    power = float(min(float(np.min(x)) for x in powers if x.size))
    return MeanOutcome(passed, worst, best[0], best[1], power)


@dataclasses.dataclass(frozen=True)
class VarianceOutcome:
    """Result of the one-sided variance test (None fields where it does not apply).

    Attributes:
        passed: every entry's median block variance within its bound.
        worst: entry with the largest ratio of root block variance to its bound.
        ratio: measured over allowed (root scale) there.
        power: smallest variance inflation `rho` detected with probability 0.99 on the most
            sensitive entry, for an alternative with the same relative fourth moment.
    """

    passed: bool
    worst: int
    ratio: float
    power: float


def variance_test(results: np.ndarray, moments, design: BlockDesign, samples: int, *,
                  rtol: float, magnitude2: np.ndarray) -> VarianceOutcome:
    """One-sided test that per-entry variances are not larger than i.i.d. draws give."""
    blocks = _blocks(results, design)
    m, p = design.calls_per_block, design.p_variance
    sigma2 = moments.variance(samples)
    var_v = np.clip(moments.fourth_central(samples) - sigma2**2, 0.0, None) / m
    t = np.sqrt(var_v * (1 - _CHEBYSHEV_SHARE * p) / (_CHEBYSHEV_SHARE * p))
    rounding = _rounding(rtol, magnitude2, p)
    observed = np.sqrt(np.median(np.mean((blocks - moments.mean) ** 2, axis=1), axis=0))
    allowed = np.sqrt(sigma2 + t) + rounding
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(allowed > 0, observed / allowed, np.where(observed > 0, np.inf, 0.0))
        t_power = np.sqrt(var_v * (1 - design.p_power) / design.p_power)
        rho = np.where(sigma2 > t_power, (sigma2 + t) / (sigma2 - t_power), np.inf)
    worst = int(np.argmax(ratios)) if ratios.size else 0
    return VarianceOutcome(bool(np.all(observed <= allowed)), worst, float(ratios[worst]),
                           float(np.min(rho)) if rho.size else math.inf)


def seed_calls(atom: float, level: float) -> int | None:
    """Calls needed so that correct distinct-seed results are all equal w.p. <= `level`."""
    if atom <= 0:
        return 2
    if atom >= 1:
        return None
    return 1 + math.ceil(math.log(level) / math.log(atom))


@dataclasses.dataclass(frozen=True)
class SeedOutcome:
    """Result of the seed-dependence test (`calls` None: not applicable)."""

    passed: bool
    calls: int | None


def seed_test(results: np.ndarray, atom: float, level: float) -> SeedOutcome:
    """Whether the first `seed_calls(atom, level)` results (distinct seeds) are not all equal."""
    calls = seed_calls(atom, level)
    if calls is None or calls > results.shape[0]:
        return SeedOutcome(True, None)
    head = results[:calls]
    return SeedOutcome(not bool(np.all(head == head[0])), calls)
