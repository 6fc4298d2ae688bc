"""The statistical machinery of the sampled checks: exact levels, power, exact moments.

The level and power claims of `verify._statistics` are tested on synthetic, deliberately
skewed distributions with known moments, at a level large enough to observe (0.05) and with
fixed seeds; the production level (1e-6) follows from the same exact binomial computation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom

from ngd_ref.sampled import EstimatorMoments, hutchinson_moments, rademacher_chaos_moments
from verify._statistics import (
    block_design,
    block_level,
    majority_tail,
    mean_test,
    seed_calls,
    seed_test,
    variance_test,
)


@pytest.mark.parametrize("blocks", [5, 21, 41, 101])
def test_majority_tail_is_the_binomial_tail_and_block_level_is_the_largest(blocks):
    for p in (0.01, 0.1, 0.3):
        assert majority_tail(blocks, p) == pytest.approx(
            binom.sf(math.ceil(blocks / 2) - 1, blocks, p), rel=1e-10, abs=0)
    level = 1e-8
    p = block_level(blocks, level)
    assert majority_tail(blocks, p) <= level < majority_tail(blocks, p * (1 + 1e-6))


def test_design_meets_the_false_positive_rate_with_the_union_bound():
    design = block_design(500)
    assert design.blocks % 2 == 1
    assert 501 * majority_tail(design.blocks, design.p_mean) <= 0.5e-6
    assert 500 * majority_tail(design.blocks, design.p_variance) <= 0.4e-6
    assert majority_tail(design.blocks, design.p_power) == pytest.approx(0.01, rel=1e-6)


def _two_point_moments(entries, q=0.3):
    """Skewed draws: 1 w.p. q, else 0 (mean q; central moments in closed form)."""
    k2 = q * (1 - q)
    mu4 = q * (1 - q) * (1 - 3 * q * (1 - q))
    mean = np.full(entries, q)
    return EstimatorMoments(mean, np.full(entries, k2), np.full(entries, mu4 - 3 * k2**2),
                            np.full(entries, q), atom=1 - q)


def _sample_means(rng, calls, entries, samples, q=0.3):
    return rng.binomial(samples, q, size=(calls, entries)) / samples


def test_mean_test_level_and_power_on_a_skewed_distribution():
    rng = np.random.default_rng(0)
    entries, samples, trials = 8, 40, 400
    moments = _two_point_moments(entries)
    design = block_design(entries, false_positive_rate=0.05)
    rejections, power_hits, powers = 0, 0, []
    for _ in range(trials):
        results = _sample_means(rng, design.calls, entries, samples)
        outcome = mean_test(results, moments, None, design, samples, rtol=0.0,
                            magnitude2=np.zeros(entries))
        rejections += not outcome.passed
        powers.append(outcome.power)
        delta = outcome.power
        shifted = (1 + delta) * _sample_means(rng, design.calls, entries, samples)
        power_hits += not mean_test(shifted, moments, None, design, samples, rtol=0.0,
                                    magnitude2=np.zeros(entries)).passed
    # level 0.05 (the union bound makes it conservative); 400 trials: 3 sigma slack
    assert rejections / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert power_hits / trials >= 0.99 - 3 * math.sqrt(0.99 * 0.01 / trials)
    assert np.allclose(powers, powers[0]) and 0 < powers[0] < 1


def test_variance_test_level_and_power():
    rng = np.random.default_rng(1)
    entries, samples, trials = 4, 40, 300
    moments = _two_point_moments(entries)
    design = block_design(entries, calls_per_block=32, false_positive_rate=0.05)
    false_alarms = hits = 0
    for _ in range(trials):
        results = _sample_means(rng, design.calls, entries, samples)
        outcome = variance_test(results, moments, design, samples, rtol=0.0,
                                magnitude2=np.zeros(entries))
        false_alarms += not outcome.passed
        rho = outcome.power
        assert 1 < rho < 10
        inflated = moments.mean + math.sqrt(rho) * (
            _sample_means(rng, design.calls, entries, samples) - moments.mean)
        hits += not variance_test(inflated, moments, design, samples, rtol=0.0,
                                  magnitude2=np.zeros(entries)).passed
    assert false_alarms / trials <= 0.04 + 3 * math.sqrt(0.04 * 0.96 / trials)
    assert hits / trials >= 0.99 - 3 * math.sqrt(0.99 * 0.01 / trials)


def test_mean_test_fails_a_two_percent_bias_where_its_power_says_so():
    rng = np.random.default_rng(2)
    entries = 3
    mean = np.array([1.0, 2.0, -1.0])
    moments = EstimatorMoments(mean, np.full(3, 0.5), np.zeros(3), mean**2 + 0.5, 0.0)
    projection = EstimatorMoments(np.ones(1), np.array([0.5 / float(mean @ mean)]), None,
                                  np.ones(1), 0.0)
    design = block_design(entries)
    samples = 20000
    noise = rng.standard_normal((design.calls, entries)) * math.sqrt(0.5 / samples)
    ok = mean_test(mean + noise, moments, projection, design, samples, rtol=0.0,
                   magnitude2=np.zeros(3), projection_magnitude2=0.0)
    assert ok.passed and ok.power < 0.02
    bad = mean_test(1.02 * mean + noise, moments, projection, design, samples, rtol=0.0,
                    magnitude2=np.zeros(3), projection_magnitude2=0.0)
    assert not bad.passed and bad.worst == -1


def test_seed_calls_from_the_collision_probability():
    assert seed_calls(0.0, 1e-7) == 2
    assert seed_calls(1.0, 1e-7) is None
    m = seed_calls(0.5, 1e-7)
    assert 0.5 ** (m - 1) <= 1e-7 < 0.5 ** (m - 2)
    same = np.ones((m, 3))
    assert not seed_test(same, 0.5, 1e-7).passed
    varied = same.copy()
    varied[-1, 0] = 2
    assert seed_test(varied, 0.5, 1e-7).passed


def _all_signs(n):
    return np.array(list(itertools.product((-1.0, 1.0), repeat=n)))


@pytest.mark.parametrize("seed", [0, 1])
def test_rademacher_chaos_moments_by_enumeration(seed):
    a = np.random.default_rng(seed).normal(size=(6, 6))
    a = a + a.T
    z = _all_signs(6)
    y = np.einsum("si,ij,sj->s", z, a, z)
    mean, k2, k4 = rademacher_chaos_moments(a)
    assert mean == pytest.approx(y.mean())
    assert k2 == pytest.approx(y.var())
    assert k4 == pytest.approx(((y - y.mean()) ** 4).mean() - 3 * y.var() ** 2)


def test_hutchinson_moments_by_enumeration():
    a = np.random.default_rng(3).normal(size=(5, 5))
    a = a + a.T
    z = _all_signs(5)
    x = z * (z @ a)
    entries, projection = hutchinson_moments(a, trace=False)
    np.testing.assert_allclose(entries.mean, x.mean(axis=0))
    np.testing.assert_allclose(entries.k2, x.var(axis=0))
    np.testing.assert_allclose(entries.k4, ((x - x.mean(0)) ** 4).mean(0) - 3 * x.var(0) ** 2,
                               atol=1e-10)
    t = x @ entries.mean / (entries.mean @ entries.mean)
    assert projection.mean[0] == pytest.approx(t.mean())
    assert projection.k2[0] == pytest.approx(t.var())
