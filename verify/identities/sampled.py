"""Sampled estimators as statistical identities, with their power (PROTOCOL s11; Martens s5).

Two theorems about estimators whose value is random, each tested by the distribution-free
tests of `verify._statistics` (false-positive rate <= 1e-6 for ANY distribution with the
exact moments of `ngd_ref.sampled`; no normal approximation), every result reporting its
`power` -- the smallest relative bias it detects with probability 0.99 -- and its design:

* **Monte-Carlo Fisher** (Martens s5, seed 003; seeds 000/001): with targets drawn from the
  model, `yhat_b ~ r(.|z_b)`, and `u = dL(yhat_b, z_b)/dz`,
  `E[c sum_b J_b^T u u^T J_b] = c sum_b J_b^T F_R,b J_b = F`. Checked as `F v` (seeded unit
  v): `R = (c/S) sum_b sum_s g_bs (g_bs^T v)`, `g = J_b^T u`, drawn in this module from the
  dense reference's Jacobians, the loss's own sampler (`OutputLoss.sample`) and its scores.
* **Hutchinson** (Hutchinson 1990; seed 004 'AdaHessian'): for Rademacher z,
  `E[z * (A z)] = diag(A)` and `Var[z_i (A z)_i] = sum_{j != i} A_ij^2`, on `A = H` through
  the reference's `ngd_ref.dense.hutchinson_diag` (registered as `hutchinson_unbiased` in
  `verify.identities.methods`; it replaced a Hoeffding test without power).

Both run the median-of-means mean test and the one-sided Cantelli variance test
(`verify._statistics`) on `K m` calls with distinct seeds derived from the problem's name.
The draws per call S are chosen for the goal bias 2% (`choose_samples`) within a budget of
`2^14` draws per example (Hutchinson: `2^14` probes), so the reported power is what that
budget buys (the harness, with `2^21`, reaches 2%).

Negative controls (deterministic estimators, so whether the test rejects them is not a
matter of chance): the observed-target ("empirical Fisher") product `EF v` -- the classic
mistake (Martens s7) -- and seed 004's all-ones probe, which returns `H 1` (AdaHessian's
`vjp` with ones). Each applies where the predicted bias, computed from the dense matrices
(another route than the test), exceeds the test's threshold by more than 102 rounding
tolerances (`detectable`), and passes when the test rejects.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref import dense as ref
from ngd_ref._backend import FLOAT64
from ngd_ref._losses import get_loss
from ngd_ref.sampled import Estimator, EstimatorMoments, estimator_moments, hutchinson_moments
from verify._report import CheckResult, Status
from verify._statistics import (
    BlockDesign,
    MeanOutcome,
    block_design,
    choose_samples,
    mean_test,
    mean_thresholds,
    variance_test,
)
from verify._tolerance import rounding_rtol
from verify.identities._common import default_direction, reference
from verify.identities._registry import Hypothesis, detectable, identity

__all__ = ["MOMENTS_TRACTABLE", "SampledTest", "bias_detectable", "hutchinson_results",
           "hutchinson_test", "mc_fisher_test", "mc_fisher_vp_draws", "moments_intractable",
           "sampled_test"]

_MARTENS = "Martens s5 (seed 003); seeds 000/001; PROTOCOL s11"
_HUTCHINSON = "Hutchinson 1990; seed 004 'AdaHessian'; PROTOCOL s11"
#: draws per example (all calls together) the Monte-Carlo Fisher identity may spend
MC_DRAWS = 2**14
#: probes (all calls together) the Hutchinson identity may spend
HUTCHINSON_PROBES = 2**14


@dataclasses.dataclass(frozen=True)
class SampledTest:
    """A statistical identity's design: exact moments, blocks, draws per call, rounding.

    Attributes:
        moments: exact moments of the flat entries (`ngd_ref.sampled`).
        projection: exact moments of the mean projection, or None.
        design: the block design (`block_design`).
        samples: draws per call S.
        rtol: float64 rounding tolerance of one call's sum.
        magnitude2: `(B + 1) m2` per entry (the tests' rounding allowance).
        projection_magnitude2: the same for the projection (None without one).
    """

    moments: EstimatorMoments
    projection: EstimatorMoments | None
    design: BlockDesign
    samples: int
    rtol: float
    magnitude2: np.ndarray
    projection_magnitude2: float | None

    def seeds(self, problem: Problem, purpose: str) -> list[int]:
        """`K m` distinct seeds from the problem's name and `purpose`."""
        base = zlib.crc32(f"{problem.name}/{purpose}".encode())
        return [(base + 104729 * (j + 1)) % 2**31 for j in range(self.design.calls)]

    def mean(self, rows: np.ndarray) -> MeanOutcome:
        """The median-of-means test on `(K m, E)` results."""
        return mean_test(rows, self.moments, self.projection, self.design, self.samples,
                         rtol=self.rtol, magnitude2=self.magnitude2,
                         projection_magnitude2=self.projection_magnitude2)

    def thresholds(self) -> np.ndarray:
        """Per entry, the mean test's threshold (`mean_thresholds`)."""
        return mean_thresholds(self.moments, self.design, self.samples, rtol=self.rtol,
                               magnitude2=self.magnitude2)

    def statistics(self) -> dict:
        """The design, for the JSON result."""
        return {"draws_per_call": self.samples, "calls": self.design.calls,
                "blocks": self.design.blocks, "calls_per_block": self.design.calls_per_block,
                "entries": int(self.moments.mean.shape[0]), "false_positive_rate": 1e-6}


def sampled_test(problem: Problem, moments: EstimatorMoments,
                 projection: EstimatorMoments | None, *, budget: int) -> SampledTest:
    """The design of a statistical identity spending at most `budget` draws in all calls."""
    design = block_design(int(moments.mean.shape[0]))
    nonzero = moments.mean != 0
    k2 = list(moments.k2[nonzero] / moments.mean[nonzero] ** 2)
    if projection is not None:
        k2.append(float(projection.k2[0]))
    samples = choose_samples(min(k2) if k2 else 0.0, design,
                             max_samples=max(budget // design.calls, 4))
    rtol = rounding_rtol("float64", length=max(problem.n_params, samples * problem.batch_size),
                         depth=len(problem.layers) + 2)
    magnitude2 = (problem.batch_size + 1) * moments.m2
    proj_mag2 = None
    if projection is not None:
        weights = np.abs(moments.mean) / float(moments.mean @ moments.mean)
        proj_mag2 = float(weights @ np.sqrt(magnitude2)) ** 2
    return SampledTest(moments, projection, design, samples, rtol, magnitude2, proj_mag2)


def _results(name: str, problem: Problem, test: SampledTest, rows: np.ndarray, what: str,
             source: str) -> list[CheckResult]:
    """The mean and variance results of `rows` (identity: pass when both tests pass)."""
    mean = test.mean(rows)
    where = "the projection <mu, R>/<mu, mu>" if mean.worst < 0 else f"entry {mean.worst}"
    out = [CheckResult(
        name, "identity", problem.name, Status.PASS if mean.passed else Status.FAIL,
        mean.deviation, mean.threshold,
        f"{what}: median of {test.design.blocks} block means ({test.design.calls_per_block} "
        f"calls of S={test.samples}) vs the exact mean, FPR <= 1e-6 [{source}]; worst {where}: "
        f"|dev| {mean.deviation:.3e} vs {mean.threshold:.3e}; detects a relative bias >= "
        f"{mean.power:.3g} w.p. 0.99", power=mean.power, statistics=test.statistics())]
    if test.moments.k4 is not None:
        var = variance_test(rows, test.moments, test.design, test.samples, rtol=test.rtol,
                            magnitude2=test.magnitude2)
        out.append(CheckResult(
            name, "identity", problem.name, Status.PASS if var.passed else Status.FAIL,
            var.ratio, 1.0,
            f"{what}: median block variance not above the exact one (Cantelli, exact fourth "
            f"moments) [{source}]; worst entry {var.worst}: root ratio {var.ratio:.3g}; detects "
            f"a variance inflation >= {var.power:.3g} w.p. 0.99", power=var.power,
            statistics=test.statistics()))
    return out


def _rejected(name: str, problem: Problem, test: SampledTest, rows: np.ndarray, what: str,
              source: str) -> CheckResult:
    """Negative control: pass iff the mean test rejects the (biased) `rows`."""
    mean = test.mean(rows)
    return CheckResult(
        name, "negative_control", problem.name, Status.FAIL if mean.passed else Status.PASS,
        mean.deviation, mean.threshold,
        f"{what} [{source}]: the mean test {'accepts' if mean.passed else 'rejects'} it "
        f"(|dev| {mean.deviation:.3e} {'<=' if mean.passed else '>'} {mean.threshold:.3e}; "
        f"power {mean.power:.3g})", power=mean.power, statistics=test.statistics())


def bias_detectable(test: SampledTest, biased: np.ndarray) -> bool:
    """Whether a deterministic `biased` result misses the mean by > its threshold + 102 ulps.

    `|biased - mu| - threshold` must exceed `detectable`'s margin of rounding tolerances
    (`rtol` times the entry's rounding magnitude) on some entry.
    """
    gap = np.abs(biased - test.moments.mean) - test.thresholds()
    scale = test.rtol * np.sqrt(test.magnitude2)
    return bool(np.any([detectable(float(g), float(s)) and s > 0 for g, s in zip(
        gap, scale, strict=True)]))


# -- Monte-Carlo Fisher --------------------------------------------------------------------
def _scores(problem: Problem, z: np.ndarray, targets) -> np.ndarray:
    """`dL(y_s, z)/dz` for the drawn targets, `(S, C)`, in one call of the loss's gradient.

    Class labels index the score rule's support (the C classes, in order). The other losses
    of PROTOCOL s2 are sums over target coordinates c of `l(y_c, zeta_c)`, `zeta_c` the
    coordinate's `k = outputs_per_target` outputs (`z = (zeta_1., ..., zeta_k.)`), so S
    draws are one problem of `S C_y` coordinates with `zeta` repeated.
    """
    loss = get_loss(problem.loss)
    kind = Loss(problem.loss)
    if kind.has_class_labels:
        return np.asarray(loss.score_rule(FLOAT64, z, 2).scores, dtype=np.float64)[targets]
    k = kind.spec.outputs_per_target
    targets = np.asarray(targets, dtype=np.float64)
    count, width = targets.shape
    wide = np.tile(z.reshape(k, width), (1, count)).reshape(-1)
    u = np.asarray(loss.grad(FLOAT64, targets.reshape(-1), wide), dtype=np.float64)
    return u.reshape(k, count, width).transpose(1, 0, 2).reshape(count, k * width)


def mc_fisher_vp_draws(problem: Problem, v: np.ndarray, samples: int, calls: int,
                       seed: int) -> np.ndarray:
    """`calls` independent results `(c/S) sum_b sum_s J_b^T u_bs (u_bs^T J_b v)`, `(calls, n)`.

    `u = dL(yhat, z_b)/dz` with `yhat ~ r(.|z_b)` from the loss's sampler; all draws are
    i.i.d. (one generator), so the rows are independent calls of S draws each.
    """
    d = reference(problem)
    rng = np.random.default_rng(seed)
    loss = get_loss(problem.loss)
    total = np.zeros((calls, problem.n_params))
    for z, jac in zip(d.outputs, d.jacobians, strict=True):
        z = np.asarray(z, dtype=np.float64)
        g = _scores(problem, z, loss.sample(rng, z, calls * samples)) @ np.asarray(
            jac, dtype=np.float64)
        total += (g * (g @ v)[:, None]).reshape(calls, samples, -1).sum(axis=1)
    return float(d.c) / samples * total


def mc_fisher_test(problem: Problem) -> tuple[np.ndarray, SampledTest]:
    """`(v, design)` of the Monte-Carlo Fisher identity: seeded unit v, `MC_DRAWS` budget."""
    v = default_direction(problem, "mc_fisher_vp")
    moments, projection = estimator_moments(Estimator.MC_FISHER_VP, problem, v=v)
    return v, sampled_test(problem, moments, projection, budget=MC_DRAWS)


#: nodes the exact moments' product rule may have (`points^C_y` per example)
MAX_RULE_NODES = 2**12
#: the score-polynomial degree the moments integrate (fourth moments of a quadratic)
_MOMENT_DEGREE = 8


def moments_intractable(problem: Problem) -> str | None:
    """Why the exact moments of the MC Fisher are too large to compute (None where they are not).

    Class labels are integrated over their C classes. The other losses use a tensor product
    of per-coordinate Gauss rules, `ceil((8 d + 1) / 2)` nodes per target coordinate
    (`d = score_degree_in_y`: a bound, Bernoulli's support has 2), `points^C_y` in all: an
    mse net with 20 outputs would need `5^20` nodes (`MemoryError`).
    """
    kind = Loss(problem.loss)
    if kind.has_class_labels:
        return None
    degree = getattr(get_loss(problem.loss), "score_degree_in_y", 1)
    points = -(-(_MOMENT_DEGREE * degree + 1) // 2)
    coordinates = problem.output_dim // kind.spec.outputs_per_target
    if points**coordinates <= MAX_RULE_NODES:
        return None
    return f"exact moments need {points}^{coordinates} quadrature nodes (> {MAX_RULE_NODES})"


#: the exact moments of the estimator are computable (`moments_intractable`)
MOMENTS_TRACTABLE = Hypothesis("exact moments tractable", moments_intractable)


@identity("mc_fisher_unbiased", source=_MARTENS, hypotheses=(MOMENTS_TRACTABLE,),
          statement="E over model-drawn targets of c sum_b J_b^T u u^T J_b v = F v, with the "
                    "exact variance (median of means and Cantelli, FPR <= 1e-6 for the real "
                    "distribution; power reported)")
def _mc_fisher(problem: Problem) -> list[CheckResult]:
    v, test = mc_fisher_test(problem)
    rows = mc_fisher_vp_draws(problem, v, test.samples, test.design.calls,
                              test.seeds(problem, "mc_fisher")[0])
    return _results("mc_fisher_unbiased", problem, test, rows,
                    "c sum_b mean_s J^T u u^T J v, u at yhat ~ r(.|z), unbiased for F v", _MARTENS)


def _observed_biased(problem: Problem) -> bool:
    v, test = mc_fisher_test(problem)
    return bias_detectable(test, ref.dense(problem).empirical_fisher @ v)


@identity("mc_fisher_observed_targets_rejected", source=f"{_MARTENS}; Martens s7",
          negative_control=True, applies=_observed_biased, hypotheses=(MOMENTS_TRACTABLE,),
          statement="the same test rejects observed-target scores (EF v), where |EF v - F v| "
                    "exceeds its threshold detectably")
def _mc_fisher_observed(problem: Problem) -> CheckResult:
    v, test = mc_fisher_test(problem)
    d = reference(problem)  # every draw at the observed target: EF v, deterministic
    row = float(d.c) * sum(g * float(g @ v) for g in
                           np.einsum("bc,bcn->bn", d.loss_grads, d.jacobians))
    return _rejected("mc_fisher_observed_targets_rejected", problem, test,
                     np.tile(row, (test.design.calls, 1)),
                     "observed targets (EF v) are not an estimator of F v", _MARTENS)


# -- Hutchinson ----------------------------------------------------------------------------
def hutchinson_test(problem: Problem) -> tuple[np.ndarray, SampledTest]:
    """`(H, design)` of the Hutchinson identity (`HUTCHINSON_PROBES` budget)."""
    a = np.asarray(ref.dense(problem).hessian, dtype=np.float64)
    moments, projection = hutchinson_moments(a, trace=False)
    return a, sampled_test(problem, moments, projection, budget=HUTCHINSON_PROBES)


def hutchinson_results(problem: Problem, name: str,
                       estimator: Callable[[Any, int, int, int], np.ndarray]
                       ) -> list[CheckResult]:
    """`estimator(H, n, S, seed)` (s9's `hutchinson_diag`, given the matrix), tested with power."""
    a, test = hutchinson_test(problem)
    n = problem.n_params
    rows = np.stack([np.asarray(estimator(a, n, test.samples, seed), dtype=float)
                     for seed in test.seeds(problem, "hutchinson")])
    return _results(name, problem, test, rows,
                    "mean over Rademacher z of z * (H z), unbiased for diag H", _HUTCHINSON)


def _ones_biased(problem: Problem) -> bool:
    a, test = hutchinson_test(problem)
    return bias_detectable(test, a @ np.ones(problem.n_params))


@identity("hutchinson_rejects_ones_probe", source=_HUTCHINSON, negative_control=True,
          applies=_ones_biased,
          statement="the Hutchinson test rejects seed 004's all-ones probe (H 1), where "
                    "|H 1 - diag H| exceeds its threshold detectably")
def _hutchinson_ones(problem: Problem) -> CheckResult:
    a, test = hutchinson_test(problem)
    row = a @ np.ones(problem.n_params)
    return _rejected("hutchinson_rejects_ones_probe", problem, test,
                     np.tile(row, (test.design.calls, 1)),
                     "z = 1 (vjp with ones) is not an estimator of diag H", _HUTCHINSON)
