"""Checks of the sampled (Monte Carlo) estimators of PROTOCOL s11, by exact statistical tests.

For `mc_fisher`, `mc_fisher_vp`, `mc_fisher_diag`, `mc_kfac_factors` (estimators `targets`
and `sketch`), `hutchinson_trace` and `hutchinson_diag` (s9), per problem:

* `<name>_mean`: median of means over `K` blocks of `m` calls with distinct seeds, each
  entry and the mean projection against the exact mean, at false-positive rate <= 1e-6 for
  the whole result, any distribution with the exact covariance (`verify._statistics`); the
  JSON result carries `power`, the smallest relative bias detected with probability 0.99;
* `<name>_variance`: per-entry block variances not larger than i.i.d. draws give (one-sided;
  not for the sketch, whose variance depends on the port's root `Q_b`); its `power` is the
  variance inflation detected with probability 0.99 on the most sensitive entry;
* `<name>_repeatable`: a repeated seed repeats the result within rounding;
* `<name>_seed_dependence`: `m_s` distinct seeds do not all give the same result, `m_s`
  from the exact probability that correct draws coincide (skipped where they may coincide
  with probability 1);
* `mc_fisher_vp_linear`: for one seed the result is linear in `v` (the draws may not depend
  on `v`, s11);
* for K-FAC, `A_l` against the exact factor up to a positive scalar split `k` (PROTOCOL s12,
  last point: only `A_l (x) S_l` counts), and `S_l k` tested statistically.
The exact moments come from `ngd_ref.sampled`; Hutchinson's probe matrix is the Hessian (as
for `hutchinson_diag`'s former Hoeffding check, which this replaces).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ngd_ref.dense import kfac_factors
from ngd_ref.sampled import Estimator, estimator_entries, estimator_moments, hutchinson_moments
from verify._report import Status
from verify._statistics import (
    BlockDesign,
    block_design,
    choose_samples,
    mean_test,
    seed_test,
    variance_test,
)
from verify._tolerance import rounding_rtol
from verify.harness._context import CheckContext

__all__ = ["MAX_DRAWS", "SAMPLED_CHECKS", "call_seeds", "kfac_split"]

#: total draws per check (all calls together); Hutchinson's probes are one matvec each
MAX_DRAWS = 2**21
MAX_PROBES = 2**14
_SEED_STEP = 104729  # odd: j -> (base + step (j + 1)) mod 2^31 is injective


def call_seeds(base: int, count: int, salt: int = 0) -> list[int]:
    """`count` distinct seeds in `[0, 2^31)` derived from the run's seed."""
    start = (base * 7919 + salt * 15485863) % 2**31
    return [(start + _SEED_STEP * (j + 1)) % 2**31 for j in range(count)]


def _record(ctx: CheckContext, check: str, status: Status, message: str, *,
            error: float | None = None, tolerance: float | None = None,
            power: float | None = None, statistics: dict | None = None) -> None:
    ctx.record(check, Status(status), message, error, tolerance, power=power,
               statistics=statistics)


def _statistical(ctx: CheckContext, check: str, call: Callable[[int, int], np.ndarray | None],
                 moments, projection, *, what: str, variance: bool, max_draws: int,
                 length: int) -> None:
    """Run the four tests of the module docstring on `call(seed, S) -> flat entries`."""
    entries = moments.mean.shape[0]
    design: BlockDesign = block_design(entries)
    samples = choose_samples(_relative_k2(moments, projection), design,
                             max_samples=max(max_draws // design.calls, 4))
    seeds = call_seeds(ctx.seed, design.calls, sum(map(ord, check)))
    rtol = rounding_rtol(ctx.dtype, length=max(length, samples * ctx.problem.batch_size),
                         depth=ctx.policy.depth)
    ctx.begin(f"{check}_mean")
    rows = []
    for seed in seeds:
        row = call(seed, samples)
        if row is None:
            return
        rows.append(row)
    results = np.stack(rows)
    magnitude2 = (ctx.problem.batch_size + 1) * moments.m2
    stats = {"draws_per_call": samples, "calls": design.calls, "blocks": design.blocks,
             "calls_per_block": design.calls_per_block, "entries": entries,
             "false_positive_rate": 1e-6}
    finite = bool(np.all(np.isfinite(results)))
    if not finite:
        _record(ctx, f"{check}_mean", Status.FAIL, f"{what}: non-finite values in the results")
        return
    proj_mag2 = None
    if projection is not None:
        weights = np.abs(moments.mean) / float(moments.mean @ moments.mean)
        proj_mag2 = float(weights @ np.sqrt(magnitude2)) ** 2
    outcome = mean_test(results, moments, projection, design, samples, rtol=rtol,
                        magnitude2=magnitude2, projection_magnitude2=proj_mag2)
    where = "the mean projection <mu, R>/<mu, mu>" if outcome.worst < 0 else \
        f"entry {outcome.worst}"
    _record(ctx, f"{check}_mean", Status.PASS if outcome.passed else Status.FAIL,
            f"{what}: median of {design.blocks} block means ({design.calls_per_block} calls of "
            f"S={samples}) vs the exact mean, Chebyshev per block, FPR <= 1e-6 over {entries} "
            f"entries + projection; worst {where}: |dev| {outcome.deviation:.3e} vs "
            f"{outcome.threshold:.3e}; detects a relative bias >= {outcome.power:.3g} w.p. 0.99",
            error=outcome.deviation, tolerance=outcome.threshold, power=outcome.power,
            statistics=stats)
    if variance and moments.k4 is not None:
        v = variance_test(results, moments, design, samples, rtol=rtol, magnitude2=magnitude2)
        _record(ctx, f"{check}_variance", Status.PASS if v.passed else Status.FAIL,
                f"{what}: median block variance over seeds not above i.i.d. draws' "
                f"(Cantelli per block, exact fourth moments, FPR <= 4e-7); worst entry "
                f"{v.worst}: root ratio {v.ratio:.3g} (> 1 fails: draws shared across examples "
                f"or samples?); detects a variance inflation >= {v.power:.3g} w.p. 0.99",
                error=v.ratio, tolerance=1.0, power=v.power, statistics=stats)
    ctx.begin(f"{check}_repeatable")
    again = call(seeds[0], samples)
    if again is None:
        return
    scale = float(np.linalg.norm(np.sqrt(magnitude2)))
    ctx.compare(f"{check}_repeatable", again, results[0], tolerance=rtol, magnitude=scale,
                what=f"{what}: the same seed twice (s11: repeatable within rounding)")
    distinct = seed_test(results, moments.atom, design.seed_level)
    if distinct.calls is None:
        _record(ctx, f"{check}_seed_dependence", Status.SKIP,
                f"correct draws may coincide with probability {moments.atom:.3g} per call: "
                "seed dependence not checked")
    else:
        _record(ctx, f"{check}_seed_dependence", Status.PASS if distinct.passed else Status.FAIL,
                f"{what}: {distinct.calls} distinct seeds "
                + ("do not all give the same result" if distinct.passed else
                   "all give the same result (the seed is ignored?)")
                + f" (correct ports coincide w.p. <= {moments.atom:.3g}^{distinct.calls - 1})")


def _relative_k2(moments, projection) -> float:
    """The smallest relative variance `k2 / mu^2` of one draw over the entries and projection.

    The test with the smallest one carries the power, so it sets the number of draws.
    """
    nonzero = moments.mean != 0
    candidates = list(moments.k2[nonzero] / moments.mean[nonzero] ** 2)
    if projection is not None:
        candidates.append(float(projection.k2[0]))
    return min(candidates) if candidates else 0.0


def _entries(ctx: CheckContext, check: str, estimator: Estimator, value,
             shape: tuple[int, ...]) -> np.ndarray | None:
    array = ctx.require_shape(f"{check}_mean", value, shape)
    return None if array is None else estimator_entries(estimator, ctx.problem, array)


def check_mc_fisher(ctx: CheckContext) -> None:
    """`mc_fisher(problem, S, seed)`: unbiased for F (s11)."""
    n = ctx.problem.n_params
    moments, projection = estimator_moments(Estimator.MC_FISHER, ctx.problem)

    def call(seed, samples):
        value = ctx.port("mc_fisher", ctx.problem, samples, seed)
        return _entries(ctx, "mc_fisher", Estimator.MC_FISHER, value, (n, n))

    _statistical(ctx, "mc_fisher", call, moments, projection, variance=True,
                 what="c sum_b mean_s gh gh^T, unbiased for F (PROTOCOL s11)",
                 max_draws=MAX_DRAWS, length=ctx.policy.length)


def check_mc_fisher_diag(ctx: CheckContext) -> None:
    """`mc_fisher_diag(problem, S, seed)`: unbiased for diag F (s11)."""
    n = ctx.problem.n_params
    moments, projection = estimator_moments(Estimator.MC_FISHER_DIAG, ctx.problem)

    def call(seed, samples):
        value = ctx.port("mc_fisher_diag", ctx.problem, samples, seed)
        return _entries(ctx, "mc_fisher_diag", Estimator.MC_FISHER_DIAG, value, (n,))

    _statistical(ctx, "mc_fisher_diag", call, moments, projection, variance=True,
                 what="c sum_b mean_s gh * gh, unbiased for diag F (PROTOCOL s11)",
                 max_draws=MAX_DRAWS, length=ctx.policy.length)


def check_mc_fisher_vp(ctx: CheckContext) -> None:
    """`mc_fisher_vp(problem, v, S, seed)`: unbiased for F v, linear in v for a fixed seed."""
    n = ctx.problem.n_params
    v, w = ctx.probe(n, 2)
    moments, projection = estimator_moments(Estimator.MC_FISHER_VP, ctx.problem, v=v)

    def call(seed, samples):
        value = ctx.port("mc_fisher_vp", ctx.problem, v, samples, seed)
        return _entries(ctx, "mc_fisher_vp", Estimator.MC_FISHER_VP, value, (n,))

    _statistical(ctx, "mc_fisher_vp", call, moments, projection, variance=True,
                 what="c sum_b mean_s gh (gh^T v), unbiased for F v (PROTOCOL s11)",
                 max_draws=MAX_DRAWS, length=ctx.policy.length)
    if ctx.results and ctx.results[-1].status is Status.ERROR:
        return
    ctx.begin("mc_fisher_vp_linear")
    seed = call_seeds(ctx.seed, 1, 7)[0]
    parts = [ctx.port("mc_fisher_vp", ctx.problem, x, 4, seed) for x in (v, w, v + w)]
    at_v, at_w, at_sum = (ctx.require_shape("mc_fisher_vp_linear", x, (n,)) for x in parts)
    if at_v is None or at_w is None or at_sum is None:
        return
    magnitude = float(np.linalg.norm(np.abs(at_v) + np.abs(at_w)))
    ctx.compare("mc_fisher_vp_linear", at_sum, at_v + at_w,
                tolerance=ctx.policy.rtol, magnitude=magnitude,
                what="one seed: R(v + w) = R(v) + R(w) (the draws do not depend on v, s11)")


def kfac_split(a: np.ndarray, a_ref: np.ndarray) -> float:
    """The scalar `k` of a port's `A = k A_ref` (least squares; PROTOCOL s12 last point)."""
    return float(np.sum(a * a_ref) / np.sum(a_ref * a_ref))


def check_mc_kfac_factors(ctx: CheckContext) -> None:
    """`mc_kfac_factors(problem, S, seed, estimator=...)` for `targets` and `sketch`."""
    problem = ctx.problem
    expected = kfac_factors(problem, "fisher")
    magnitudes = ctx.policy.kfac_magnitudes("fisher")
    for estimator in (Estimator.KFAC_TARGETS, Estimator.KFAC_SKETCH):
        check = f"mc_kfac_factors_{estimator.value}"
        moments, projection = estimator_moments(estimator, problem)
        splits: list[list[float]] = []

        def call(seed, samples, check=check, estimator=estimator, splits=splits):
            value = ctx.port("mc_kfac_factors", problem, samples, seed,
                             estimator=estimator.value)
            pairs = _kfac_pairs(ctx, f"{check}_mean", value, expected)
            if pairs is None:
                return None
            ks = [kfac_split(np.asarray(a, dtype=float), a_ref)
                  for (a, _), (a_ref, _) in zip(pairs, expected, strict=True)]
            if not splits:
                splits.append(ks)
                ok = _check_a(ctx, check, pairs, expected, magnitudes, ks)
                if not ok:
                    return None
            return estimator_entries(estimator, problem, [np.asarray(s, dtype=float) * k
                                                          for (_, s), k in zip(pairs, ks,
                                                                               strict=True)])

        _statistical(ctx, check, call, moments, projection,
                     variance=estimator is Estimator.KFAC_TARGETS, max_draws=MAX_DRAWS,
                     length=ctx.policy.length,
                     what=f"S_l (x k_l) = c sum_b mean_s Ds Ds^T, estimator {estimator.value}, "
                          "unbiased for S_l of kind fisher (PROTOCOL s11)")


def _kfac_pairs(ctx: CheckContext, check: str, value, expected) -> list | None:
    try:
        pairs = [tuple(pair) for pair in value]
    except TypeError:
        pairs = []
    if len(pairs) != len(expected) or any(len(p) != 2 for p in pairs):
        ctx.record(check, Status.FAIL,
                   f"expected {len(expected)} (A, S) pairs (one per layer), got "
                   f"{type(value).__name__} of {len(pairs)} items")
        return None
    for (a, s), (a_ref, s_ref) in zip(pairs, expected, strict=True):
        for label, x, ref in (("A", a, a_ref), ("S", s, s_ref)):
            if ctx.require_shape(f"{check}_{label}", x, ref.shape) is None:
                return None
    return pairs


def _check_a(ctx, check, pairs, expected, magnitudes, ks) -> bool:
    """`A_l = k_l A_l,ref` (exact) with `k_l > 0`; records one result per layer."""
    ok = True
    for index, ((a, _), (a_ref, _), (a_mag, _), k) in enumerate(
            zip(pairs, expected, magnitudes, ks, strict=True)):
        if not k > 0:
            ctx.record(f"{check}_A", Status.FAIL,
                       f"layer {index}: A_l is not a positive multiple of mean_b abar abar^T "
                       f"(split {k:.3g})")
            ok = False
            continue
        comparison = ctx.compare(
            f"{check}_A", np.asarray(a, dtype=float) / k, a_ref, tolerance=ctx.policy.rtol,
            magnitude=float(np.linalg.norm(a_mag)),
            what=f"layer {index}: A_l / k = mean_b abar abar^T, exact (PROTOCOL s11; the port's "
                 f"split k = {k:.6g}, S_l is tested times k)")
        ok = ok and comparison.passed
    return ok


def _hutchinson(ctx: CheckContext, name: str, trace: bool) -> None:
    h = ctx.policy.matrix("hessian")
    n = h.shape[0]
    moments, projection = hutchinson_moments(h, trace=trace)

    def matvec(v):
        return h @ np.asarray(v, dtype=np.float64)

    def call(seed, samples):
        value = ctx.port(name, matvec, n, samples, seed)
        shape = () if trace else (n,)
        array = ctx.require_shape(f"{name}_mean", value, shape)
        return None if array is None else np.atleast_1d(array)

    if trace and float(moments.mean[0]) != 0:
        projection = _trace_projection(moments)
    _statistical(ctx, name, call, moments, projection, variance=True, max_draws=MAX_PROBES,
                 length=n, what=("mean over Rademacher z of z^T A z, unbiased for tr A"
                                 if trace else "mean over Rademacher z of z * (A z), unbiased "
                                 "for diag A") + " (A = H; PROTOCOL s11)")


def _trace_projection(moments):
    """For the trace the entry is its own projection, in units of the mean (mean 1)."""
    mean = float(moments.mean[0])
    return type(moments)(np.array([1.0]), moments.k2 / mean**2,
                         None if moments.k4 is None else moments.k4 / mean**4,
                         moments.m2 / mean**2, moments.atom)


def check_hutchinson_trace(ctx: CheckContext) -> None:
    """`hutchinson_trace(matvec, n, S, seed)` on H."""
    _hutchinson(ctx, "hutchinson_trace", trace=True)


def check_hutchinson_diag(ctx: CheckContext) -> None:
    """`hutchinson_diag(matvec, n, S, seed)` on H (s9, tested as the s11 family)."""
    _hutchinson(ctx, "hutchinson_diag", trace=False)


SAMPLED_CHECKS = {
    "mc_fisher": check_mc_fisher,
    "mc_fisher_vp": check_mc_fisher_vp,
    "mc_fisher_diag": check_mc_fisher_diag,
    "mc_kfac_factors": check_mc_kfac_factors,
    "hutchinson_trace": check_hutchinson_trace,
}
