"""Held-out bugs written *after* the issue-14 checks, to see whether the new inputs generalize.

These are not in the corpus (`CORPUS_MODULES`): they are a measurement, not a regression
suite, and some are expected to escape. Each is a `Mutant` built directly (no registry), so
importing this module changes nothing else. `heldout_outcomes()` runs them on the quick zoo
like the corpus (`verify.mutants._run.run_mutant`); the kill rate is reported in
docs/harness.md ("Blind spots closed by issue 14").
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.special

from verify.mutants import BugClass, Mutant
from verify.mutants._port import NumpyPort

__all__ = ["HELDOUT", "heldout_outcomes"]


def _f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32).astype(np.float64)


class NewtonClipsNegativeCurvature(NumpyPort):
    def damped_update(self, problem, curvature, damping):
        if curvature != "hessian":
            return super().damped_update(problem, curvature, damping)
        lam, q = np.linalg.eigh(self.hessian(problem))
        g = self.gradient(problem)
        return -(q @ ((q.T @ g) / (np.clip(lam, 0.0, None) + damping)))


class DampedUpdateAssumesPositive(NumpyPort):
    def damped_update(self, problem, curvature, damping):
        matrix = self._damped_matrix(getattr(self, curvature)(problem), damping)
        return -scipy.linalg.solve(matrix, self.gradient(problem), assume_a="pos")


class CgDefaultMaxiterN(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        return super().cg(matvec, b, x0, tol, len(b) if maxiter is None else maxiter, precond)


class LbfgsDefaultGammaScaled(NumpyPort):
    def lbfgs_direction(self, g, s_list, y_list, gamma=None):
        if gamma is None:
            s, y = np.asarray(s_list[-1]), np.asarray(y_list[-1])
            gamma = float(s @ y) / float(y @ y)
        return super().lbfgs_direction(g, s_list, y_list, gamma)


class HutchinsonGaussianProbes(NumpyPort):
    def hutchinson_diag(self, matvec, n, num_samples, seed):
        rng = np.random.default_rng(seed)
        total = np.zeros(n, self._dt)
        for _ in range(num_samples):
            z = rng.standard_normal(n).astype(self._dt)
            total = total + z * self._cast(matvec(z))
        return total / self._dt(num_samples)


class PoissonStirlingLogFactorial(NumpyPort):
    def _loss_value(self, problem, z, y):
        value = super()._loss_value(problem, z, y)
        if problem.loss != "poisson":
            return value
        y64 = np.asarray(y, dtype=np.float64)
        exact = scipy.special.gammaln(y64 + 1)
        big = np.maximum(y64, 2.0)
        stirling = np.where(y64 >= 2, big * np.log(big) - big + 0.5 * np.log(2 * np.pi * big),
                            0.0)
        return value - self._cast(np.sum(exact)) + self._cast(np.sum(stirling))


class BfgsSkipsWeakCurvature(NumpyPort):
    def bfgs_update(self, B, s, y):
        s64, y64 = np.asarray(s), np.asarray(y)
        if s64 @ y64 < 0.1 * np.linalg.norm(s64) * np.linalg.norm(y64):
            return self._cast(B).copy()
        return super().bfgs_update(B, s, y)


class KfacFactorsCachedByNameKind(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        cache = self.__dict__.setdefault("_factors", {})
        key = (problem.name, kind)
        if key not in cache:
            cache[key] = super().kfac_factors(problem, kind, approx)
        return [(a.copy(), s.copy()) for a, s in cache[key]]


class DampingFloat32(NumpyPort):
    def damped_update(self, problem, curvature, damping):
        return super().damped_update(problem, curvature, float(np.float32(damping)))


class CgX0Float32(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        return super().cg(matvec, b, None if x0 is None else _f32(x0), tol, maxiter, precond)


class InverseRootP1Shortcut(NumpyPort):
    def inverse_root(self, M, p, ridge=0.0):
        if p == 1:
            return np.linalg.inv(self._cast(M))
        return super().inverse_root(M, p, ridge)


class TrustRegionCachedByName(NumpyPort):
    def hessian(self, problem):
        cache = self.__dict__.setdefault("_hessians", {})
        if problem.name not in cache:
            cache[problem.name] = super().hessian(problem)
        return cache[problem.name].copy()


class CgZeroRhsReturnsZero(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        if not np.any(np.asarray(b)):
            return np.zeros(len(b), self._dt)  # "the solution of A x = 0 is 0"
        return super().cg(matvec, b, x0, tol, maxiter, precond)


def _m(name: str, bug_class: BugClass, description: str, cls: type[NumpyPort],
       *capabilities: str) -> Mutant:
    cls.name = name
    return Mutant(name, bug_class, description, cls, capabilities)


HELDOUT: tuple[Mutant, ...] = (
    _m("newton-clips-negative-curvature", BugClass.DAMPING,
       "damped Newton step with negative Hessian eigenvalues clipped to 0",
       NewtonClipsNegativeCurvature, "damped_update"),
    _m("damped-update-assumes-positive", BugClass.DAMPING,
       "scipy.linalg.solve(assume_a='pos') for every damped system", DampedUpdateAssumesPositive,
       "damped_update"),
    _m("cg-default-maxiter-n", BugClass.DEFAULTS, "cg's maxiter defaults to n", CgDefaultMaxiterN,
       "cg"),
    _m("lbfgs-default-gamma-scaled", BugClass.DEFAULTS,
       "gamma omitted -> s^T y / y^T y of the newest pair (PROTOCOL: 1)", LbfgsDefaultGammaScaled,
       "lbfgs_direction"),
    _m("hutchinson-gaussian-probes", BugClass.SEED_METHODS,
       "Hutchinson with Gaussian probes (PROTOCOL: Rademacher)", HutchinsonGaussianProbes,
       "hutchinson_diag"),
    _m("poisson-stirling-log-factorial", BugClass.LOSS_HESSIAN,
       "log y! by Stirling's formula for y >= 2", PoissonStirlingLogFactorial, "loss"),
    _m("bfgs-skips-weak-curvature", BugClass.SEED_METHODS,
       "BFGS update skipped when s^T y < 0.1 ||s|| ||y||", BfgsSkipsWeakCurvature, "bfgs_update"),
    _m("kfac-factors-cached-by-name-kind", BugClass.CACHING,
       "K-FAC factors memoized by (problem.name, kind)", KfacFactorsCachedByNameKind,
       "kfac_factors"),
    _m("damping-float32", BugClass.PRECISION, "the damping rounded to float32", DampingFloat32,
       "damped_update"),
    _m("cg-x0-float32", BugClass.PRECISION, "cg's x0 rounded to float32", CgX0Float32, "cg"),
    _m("inverse-root-p1-shortcut", BugClass.SEED_METHODS,
       "p = 1 returns inv(M), forgetting the ridge", InverseRootP1Shortcut, "inverse_root"),
    _m("hessian-cached-by-name", BugClass.CACHING,
       "H memoized by problem.name (trust-region step)", TrustRegionCachedByName,
       "trust_region_update"),
    _m("cg-zero-rhs-returns-zero", BugClass.CG,
       "b = 0 short-circuits to x = 0 whatever x0 and maxiter", CgZeroRhsReturnsZero, "cg"),
)


def heldout_outcomes():
    """Run every held-out mutant on the quick zoo; the `MutantOutcome`s in `HELDOUT` order."""
    from verify.mutants._run import run_mutant

    return [run_mutant(m) for m in HELDOUT]
