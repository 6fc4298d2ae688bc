"""Mutants of the v1 oracle's blind spots (issue 14): one bug per input the harness never gave.

Every mutant here passed the v1 harness (dyadic inputs only, defaults never exercised, CG
only in a corner, positive definite damped systems, unique names, one easy case per
section 9 method, a quick zoo without `log y!`, shared shapes or deep curvature). Each is
killed by the check named in its description (`verify.harness._inputs`, `_cg`, `_updates`,
`_kfac`, `_method_inputs`, the quick zoo). Precision bugs exist only in a float64 port (a
float32 port is allowed to round); the others are registered in both precisions.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.special

from verify.mutants import BugClass, register_mutant
from verify.mutants._port import NumpyPort

BOTH = ("float64", "float32")


def _mutant(name: str, bug_class: BugClass, description: str, *capabilities: str,
            dtypes: tuple[str, ...] = BOTH):
    return register_mutant(name, bug_class, description, capabilities=capabilities,
                           dtypes=dtypes)


def _f32(array) -> np.ndarray:
    """`array` rounded to float32 and back (what the precision bugs do silently)."""
    return np.asarray(array, dtype=np.float32).astype(np.float64)


# -- float32 rounding in a float64 port (killed by full-precision probes and the twin) -------
@_mutant("hvp-vector-to-f32", BugClass.PRECISION,
         "H v with v rounded to float32 first (a float32 buffer reused for the vector); "
         "killed by hvp_matches_reference on full-precision probes", "hvp", dtypes=("float64",))
class HvpVectorFloat32(NumpyPort):
    def hvp(self, problem, v):
        return super().hvp(problem, _f32(v))


@_mutant("gradient-params-to-f32", BugClass.PRECISION,
         "gradient from parameters stored in float32; killed by "
         "gradient_matches_reference_reused_name (full-precision twin)", "gradient",
         dtypes=("float64",))
class GradientParamsFloat32(NumpyPort):
    def gradient(self, problem):
        return super().gradient(problem.replace(params=_f32(problem.params)))


@_mutant("kfac-factors-inputs-to-f32", BugClass.PRECISION,
         "K-FAC statistics from inputs stored in float32; killed by the twin's "
         "kfac_factors_*_reused_name", "kfac_factors", dtypes=("float64",))
class KfacFactorsInputsFloat32(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        return super().kfac_factors(problem.replace(inputs=_f32(problem.inputs)), kind, approx)


# -- optional-argument defaults ----------------------------------------------------------------
@_mutant("kfac-solve-default-kind-ggn", BugClass.DEFAULTS,
         "kfac_solve's kind defaults to 'ggn' (PROTOCOL: 'fisher'); killed by "
         "kfac_solve_default_kind", "kfac_solve")
class KfacSolveDefaultKindGgn(NumpyPort):
    def kfac_solve(self, problem, v, damping, method, kind="ggn", approx="expand"):
        return super().kfac_solve(problem, v, damping, method, kind, approx)


@_mutant("cg-scipy-default-tol", BugClass.DEFAULTS,
         "cg's tol defaults to scipy's 1e-5 (PROTOCOL: 1e-10); killed by cg_converges_defaults "
         "(float64)", "cg", dtypes=("float64",))
class CgScipyDefaultTol(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-5, maxiter=None, precond=None):
        return super().cg(matvec, b, x0, tol, maxiter, precond)


@_mutant("lbfgs-default-gamma-half", BugClass.DEFAULTS,
         "lbfgs_direction's gamma defaults to 1/2 (PROTOCOL: 1); killed by "
         "lbfgs_direction_default_gamma", "lbfgs_direction")
class LbfgsDefaultGammaHalf(NumpyPort):
    def lbfgs_direction(self, g, s_list, y_list, gamma=0.5):
        return super().lbfgs_direction(g, s_list, y_list, gamma)


@_mutant("inverse-root-default-ridge", BugClass.DEFAULTS,
         "inverse_root's ridge defaults to 1e-3 (PROTOCOL: 0); killed by "
         "inverse_root_default_ridge", "inverse_root")
class InverseRootDefaultRidge(NumpyPort):
    def inverse_root(self, M, p, ridge=1e-3):
        return super().inverse_root(M, p, ridge)


# -- CG ------------------------------------------------------------------------------------------
@_mutant("cg-stops-relative-to-r0", BugClass.CG,
         "stopping rule ||r|| <= tol ||r0|| instead of tol ||b||; killed by cg_converges_x0",
         "cg")
class CgStopsRelativeToR0(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        b64 = np.asarray(b, dtype=np.float64)
        start = np.zeros_like(b64) if x0 is None else np.asarray(x0, dtype=np.float64)
        norm_b, norm_r0 = np.linalg.norm(b64), np.linalg.norm(b64 - matvec(start))
        scaled = tol * norm_r0 / norm_b if norm_b > 0 else tol
        return super().cg(matvec, b, x0, scaled, maxiter, precond)


@_mutant("cg-restarts-every-10", BugClass.CG,
         "CG restarted (p = z) every 10 iterations; killed by cg_iterates_spread at iterate 11 "
         "(float64 only: float32's iterate tolerance kappa ||r0||/||r_k|| is ~0.8 there, far "
         "above the restart's 1e-3 deviation)", "cg", dtypes=("float64",))
class CgRestartsEvery10(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        remaining = 10 * len(b) if maxiter is None else maxiter
        x = super().cg(matvec, b, x0, tol, min(10, remaining), precond)
        remaining -= min(10, remaining)
        while remaining > 0:
            x = super().cg(matvec, b, x, tol, min(10, remaining), precond)
            remaining -= min(10, remaining)
        return x


@_mutant("cg-checks-after-step", BugClass.CG,
         "the convergence test comes after the update, so an already-converged start divides "
         "0 by 0 (NaN); killed by cg_iterates_exact_x0 and cg_iterates_zero_b", "cg")
class CgChecksAfterStep(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        b = self._cast(b)
        x = np.zeros_like(b) if x0 is None else self._cast(x0).copy()
        apply_m = (lambda r: r) if precond is None else (lambda r: self._cast(precond(r)))
        r = b - self._cast(matvec(x))
        z = apply_m(r)
        p, rho = z, r @ z
        with np.errstate(invalid="ignore", divide="ignore"):
            for _ in range(10 * b.shape[0] if maxiter is None else maxiter):
                ap = self._cast(matvec(p))
                alpha = rho / (p @ ap)
                x, r = x + alpha * p, r - alpha * ap
                if np.linalg.norm(r) <= tol * np.linalg.norm(b):
                    break
                z = apply_m(r)
                rho_new = r @ z
                p, rho = z + rho_new / rho * p, rho_new
        return x


@_mutant("cg-precond-drops-x0", BugClass.CG,
         "with a preconditioner, x0 is ignored (the preconditioned path starts from 0); killed "
         "by cg_iterates_preconditioned_x0", "cg")
class CgPrecondDropsX0(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        return super().cg(matvec, b, None if precond is not None else x0, tol, maxiter, precond)


# -- damping ----------------------------------------------------------------------------------
@_mutant("damped-update-cholesky-retry", BugClass.DAMPING,
         "adds damping (doubling) until a Cholesky factorization succeeds; killed by "
         "damped_update_indefinite", "damped_update")
class DampedUpdateCholeskyRetry(NumpyPort):
    def damped_update(self, problem, curvature, damping):
        matrix = getattr(self, str(curvature))(problem)
        lam = float(damping)
        while True:
            try:
                factor = scipy.linalg.cho_factor(self._damped_matrix(matrix, lam))
                break
            except np.linalg.LinAlgError:
                lam = max(2.0 * lam, 1e-3)
        return -scipy.linalg.cho_solve(factor, self.gradient(problem))


# -- caching by name or shape ------------------------------------------------------------------
@_mutant("forward-cached-by-name", BugClass.CACHING,
         "the forward pass and Jacobians are memoized by problem.name; killed by the twin "
         "(gradient_matches_reference_reused_name)", "gradient", "ggn")
class ForwardCachedByName(NumpyPort):
    def _examples(self, problem):
        cache = self.__dict__.setdefault("_by_name", {})
        if problem.name not in cache:
            cache[problem.name] = list(super()._examples(problem))
        return iter(cache[problem.name])


@_mutant("ggn-cached-by-shape", BugClass.CACHING,
         "G memoized by (loss, reduction, array shapes); killed by deep-curved-2x3x3x2-mse-b4 "
         "(shares every shape with deep-linear-2x3x3x2-mse-b4) and by the twin", "ggn")
class GgnCachedByShape(NumpyPort):
    def ggn(self, problem):
        cache = self.__dict__.setdefault("_by_shape", {})
        key = (problem.loss, problem.reduction, problem.params.shape, problem.inputs.shape,
               problem.targets.shape)
        if key not in cache:
            cache[key] = super().ggn(problem)
        return cache[key].copy()


# -- section 9 methods ------------------------------------------------------------------------
@_mutant("bfgs-powell-damped", BugClass.SEED_METHODS,
         "Powell-damped BFGS (y replaced by theta y + (1 - theta) B s when s^T y < 0.2 s^T B s);"
         " killed by bfgs_update_generic_pair", "bfgs_update")
class BfgsPowellDamped(NumpyPort):
    def bfgs_update(self, B, s, y):
        B, s, y = self._cast(B), self._cast(s), self._cast(y)
        bs = B @ s
        sbs, sy = s @ bs, s @ y
        if sy < 0.2 * sbs:
            theta = 0.8 * sbs / (sbs - sy)
            y = theta * y + (1 - theta) * bs
        return super().bfgs_update(B, s, y)


@_mutant("inverse-root-repeated-sqrt", BugClass.SEED_METHODS,
         "(M + ridge I)^(-1/p) by round(log2 p) repeated square roots of the inverse (exact "
         "only for powers of two); killed by inverse_root at p = 3", "inverse_root")
class InverseRootRepeatedSqrt(NumpyPort):
    def inverse_root(self, M, p, ridge=0.0):
        lam, q = np.linalg.eigh(self._cast(M) + self._dt(ridge) * np.eye(len(M), dtype=self._dt))
        root = 1.0 / lam
        for _ in range(int(round(math.log2(p)))):
            root = np.sqrt(root)
        return (q * root) @ q.T


@_mutant("shampoo-recomputes-statistics", BugClass.SEED_METHODS,
         "shampoo_direction ignores L and R and uses G G^T, G^T G; killed by "
         "shampoo_direction_accumulated", "shampoo_direction")
class ShampooRecomputesStatistics(NumpyPort):
    def shampoo_direction(self, G, L, R, eps):
        g = self._cast(G)
        return super().shampoo_direction(g, g @ g.T, g.T @ g, eps)


@_mutant("hutchinson-sample-variance-divisor", BugClass.SEED_METHODS,
         "Hutchinson mean divided by N - 1 (a sample-variance habit); killed by "
         "hutchinson_diag_diagonal_operator", "hutchinson_diag")
class HutchinsonSampleVarianceDivisor(NumpyPort):
    def hutchinson_diag(self, matvec, n, num_samples, seed):
        total = super().hutchinson_diag(matvec, n, num_samples, seed) * self._dt(num_samples)
        return total / self._dt(num_samples - 1)


# -- the quick zoo's blind zone ----------------------------------------------------------------
@_mutant("poisson-drops-log-factorial", BugClass.LOSS_HESSIAN,
         "Poisson loss without the log y! term (0 for y in {0, 1}); killed by "
         "loss_matches_reference on the quick zoo's Poisson targets (3, 2, 1)", "loss")
class PoissonDropsLogFactorial(NumpyPort):
    def _loss_value(self, problem, z, y):
        value = super()._loss_value(problem, z, y)
        if problem.loss == "poisson":
            log_factorial = scipy.special.gammaln(np.asarray(y, dtype=np.float64) + 1)
            value = value - self._cast(np.sum(log_factorial))
        return value


@_mutant("hessian-drops-deep-curvature", BugClass.LOSS_HESSIAN,
         "the R-op's backward pass uses phi'' only in the top hidden layer; killed by "
         "hessian_matches_reference on deep-curved-2x3x3x2-mse-b4", "hessian")
class HessianDropsDeepCurvature(NumpyPort):
    def _example_hessian(self, problem, theta, trace, jac, z, y):
        # layers below the top hidden one, recognized by their pre-activation arrays
        self._flat = {id(trace[i][1]) for i in range(max(len(trace) - 2, 0))}
        try:
            return super()._example_hessian(problem, theta, trace, jac, z, y)
        finally:
            self._flat = set()

    def _act(self, name, s):
        value, first, second = super()._act(name, s)
        if id(s) in getattr(self, "_flat", ()):
            second = np.zeros_like(second)
        return value, first, second
