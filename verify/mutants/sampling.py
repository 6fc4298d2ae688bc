"""Sampling bugs of Monte Carlo curvature code (PROTOCOL s11), one per mutant.

Each overrides one hook of the numpy port's sampled estimators
(`verify.mutants._port_sampled.SampledPortMixin`), in float64 and float32:

* `mc-targets-from-data` -- the observed targets in place of model samples (the empirical
  Fisher: biased, and the seed no longer matters);
* `mc-draw-shared-by-batch` -- one random stream restarted for every example, so the examples
  share their draws (unbiased, but the variance grows with the correlation across examples);
* `mc-seed-ignored` -- a generator seeded with a constant;
* `mc-softmax-temperature` -- categorical targets from `softmax(z / 2)`;
* `mc-probabilities-as-logits` -- `nll_probs` targets from `softmax(z)` of the probabilities;
* `mc-gaussian-variance-half` -- `mse` targets with variance 1/2 (torch's MSELoss has no 1/2,
  so its "unit variance" Gaussian is N(z, 1/2));
* `mc-poisson-rate-z` -- Poisson targets with rate `z` (clipped at 0) instead of `exp(z)`;
* `mc-reduction-dropped` -- `c` left out (sum over the batch for `reduction="mean"`);
* `mc-sketch-no-root` -- curvature propagation with `Q_b = F_R,b` instead of a square root;
* `mc-diag-square-of-mean` -- `(mean_s gh)^2` as the diagonal;
* `hutchinson-single-probe` -- one probe reused for all samples (variance S times larger).
"""

from __future__ import annotations

import numpy as np

from verify.mutants import BugClass, register_mutant
from verify.mutants._port import NumpyPort

_BOTH = ("float64", "float32")
_FISHER = ("mc_fisher", "mc_fisher_vp", "mc_fisher_diag", "mc_kfac_factors")


def _mutant(name: str, description: str, *capabilities: str):
    return register_mutant(name, BugClass.SAMPLING, description, capabilities=capabilities,
                           dtypes=_BOTH)


@_mutant("mc-targets-from-data", "observed targets in place of model samples: the "
         "empirical Fisher", *_FISHER)
class TargetsFromData(NumpyPort):
    """Scores at the observed targets."""

    def _draws(self, problem, num_samples, rng):
        for trace, jac, z, y in self._examples(problem):
            ys = np.repeat(np.asarray(y)[None], num_samples, axis=0)
            yield trace, jac, z, self._scores(problem, z, ys)


@_mutant("mc-draw-shared-by-batch", "the random stream restarted per example: every "
         "example gets the same draws", *_FISHER)
class DrawSharedByBatch(NumpyPort):
    """The same draws for every example."""

    def _draws(self, problem, num_samples, rng):
        state = rng.bit_generator.state
        for trace, jac, z, _ in self._examples(problem):
            rng.bit_generator.state = state
            yield trace, jac, z, self._scores(problem, z, self._sample_targets(
                problem, z, rng, num_samples))


@_mutant("mc-seed-ignored", "the generator seeded with a constant, not with `seed`",
         *_FISHER, "hutchinson_trace")
class SeedIgnored(NumpyPort):
    """A constant seed."""

    def _rng(self, seed):
        return np.random.default_rng(0)


@_mutant("mc-softmax-temperature", "categorical targets drawn from softmax(z / 2)", *_FISHER)
class SoftmaxTemperature(NumpyPort):
    """Categorical targets at temperature 2."""

    def _probabilities(self, problem, z):
        if problem.loss == "softmax_cross_entropy":
            return self._softmax(z / self._dt(2))
        return super()._probabilities(problem, z)


@_mutant("mc-probabilities-as-logits", "nll_probs targets drawn from softmax(z) of the "
         "probabilities z", *_FISHER)
class ProbabilitiesAsLogits(NumpyPort):
    """Probabilities treated as logits."""

    def _probabilities(self, problem, z):
        return self._softmax(z)


@_mutant("mc-gaussian-variance-half", "mse targets from N(z, 1/2) (torch MSELoss's "
         "convention)", *_FISHER)
class GaussianVarianceHalf(NumpyPort):
    """mse targets with variance 1/2."""

    def _sample_targets(self, problem, z, rng, size):
        if problem.loss != "mse":
            return super()._sample_targets(problem, z, rng, size)
        return np.asarray(z, dtype=np.float64) + np.sqrt(0.5) * rng.standard_normal(
            (size, z.shape[0]))


@_mutant("mc-poisson-rate-z", "Poisson targets with rate z (clipped at 0), not exp(z)",
         *_FISHER)
class PoissonRateZ(NumpyPort):
    """Poisson rate z."""

    def _sample_targets(self, problem, z, rng, size):
        if problem.loss != "poisson":
            return super()._sample_targets(problem, z, rng, size)
        rate = np.clip(np.asarray(z, dtype=np.float64), 0.0, None)
        return rng.poisson(rate, size=(size, z.shape[0])).astype(float)


@_mutant("mc-reduction-dropped", "the reduction constant c dropped (1/S only)", *_FISHER)
class ReductionDropped(NumpyPort):
    """No reduction constant."""

    def _mc_scale(self, problem, num_samples):
        return self._dt(1) / self._dt(num_samples)


@_mutant("mc-sketch-no-root", "curvature propagation with Q_b = F_R,b (no square root)",
         "mc_kfac_factors")
class SketchNoRoot(NumpyPort):
    """Q_b = F_R,b."""

    def _output_root(self, problem, z):
        return self._output_fisher(problem, z)


@_mutant("mc-diag-square-of-mean", "(mean_s gh)^2 as the sampled diagonal", "mc_fisher_diag")
class DiagSquareOfMean(NumpyPort):
    """Square of the mean sampled gradient."""

    def mc_fisher_diag(self, problem, num_samples, seed):
        """`c sum_b (mean_s gh)^2`."""
        total = 0
        for _, jac, _, u in self._draws(problem, num_samples, self._rng(seed)):
            g = np.mean(u @ jac, axis=0)
            total = total + g * g
        return self._dt(self._scale(problem)) * total


@_mutant("hutchinson-single-probe", "one Rademacher probe reused for every sample",
         "hutchinson_trace", "hutchinson_diag")
class HutchinsonSingleProbe(NumpyPort):
    """One probe reused."""

    def hutchinson_trace(self, matvec, n, num_samples, seed):
        """The first probe, S times."""
        z = self._probes(self._rng(seed), n, 1)[0]
        total = sum(z @ self._cast(matvec(z)) for _ in range(num_samples))
        return total / self._dt(num_samples)

    def hutchinson_diag(self, matvec, n, num_samples, seed):
        """The first probe, S times."""
        z = self._probes(self._rng(seed), n, 1)[0]
        total = sum(z * self._cast(matvec(z)) for _ in range(num_samples))
        return total / self._dt(num_samples)
