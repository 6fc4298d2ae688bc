"""The corpus: one realistic bug per mutant, in the classes real libraries have shipped.

Each class overrides one method or hook of the correct `NumpyPort` (see `verify.mutants`);
every bug is registered in float64 and float32. The descriptions say what a reviewer would
see in the diff. Bugs that only show on some problems (sum reduction, non-natural losses,
several examples) are deliberate: the quick zoo must contain a problem that exposes each.
"""

from __future__ import annotations

import numpy as np

from verify.mutants import BugClass, register_mutant
from verify.mutants._port import NumpyPort

BOTH = ("float64", "float32")


def _mutant(name: str, bug_class: BugClass, description: str, *capabilities: str):
    return register_mutant(name, bug_class, description, capabilities=capabilities, dtypes=BOTH)


# -- scaling by batch or output size ---------------------------------------------------------
@_mutant(
    "ggn-sum-not-mean",
    BugClass.SCALING,
    "G summed over the batch for reduction='mean' (missing 1/B)",
    "ggn",
)
class GgnSumNotMean(NumpyPort):
    def ggn(self, problem):
        return super().ggn(problem) / self._dt(self._scale(problem))


@_mutant(
    "fisher-divided-by-outputs",
    BugClass.SCALING,
    "F divided by the number of outputs C (a mean over the output dimension)",
    "fisher",
)
class FisherDividedByOutputs(NumpyPort):
    def fisher(self, problem):
        return super().fisher(problem) / self._dt(problem.output_dim)


@_mutant(
    "hvp-double-mean",
    BugClass.SCALING,
    "Hv divided by B again on top of a mean-reduced loss",
    "hvp",
)
class HvpDoubleMean(NumpyPort):
    def hvp(self, problem, v):
        return super().hvp(problem, v) * self._dt(self._scale(problem))


@_mutant(
    "kfac-s-batch-mean",
    BugClass.SCALING,
    "S_l = mean_b M_b regardless of reduction (wrong for reduction='sum')",
    "kfac_factors",
)
class KfacSBatchMean(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        c = self._dt(self._scale(problem) * problem.batch_size)
        return [(a, s / c) for a, s in super().kfac_factors(problem, kind, approx)]


@_mutant(
    "mse-hessian-factor-two",
    BugClass.LOSS_HESSIAN,
    "mse loss Hessian 2I (the derivative of ||y - z||^2, not of 0.5 ||y - z||^2)",
    "ggn",
    "ggn_vp",
)
class MseHessianFactorTwo(NumpyPort):
    def _loss_hessian(self, problem, z, y):
        h = super()._loss_hessian(problem, z, y)
        return 2 * h if problem.loss == "mse" else h


# -- bias coordinate -------------------------------------------------------------------------
@_mutant(
    "bias-first-layout",
    BugClass.BIAS,
    "parameters read as vec([b W]) (bias first) instead of vec([W b])",
    "gradient",
    "hessian",
)
class BiasFirstLayout(NumpyPort):
    def _wbar(self, problem, theta, index):
        wbar = super()._wbar(problem, theta, index)
        flat = wbar.reshape(-1, order="F")
        n_out = wbar.shape[0]
        moved = np.concatenate([flat[n_out:], flat[:n_out]])  # the first column is the bias
        return moved.reshape(wbar.shape, order="F")


@_mutant(
    "kfac-a-no-homogeneous",
    BugClass.BIAS,
    "A_l built from [a; 0] (bias coordinate dropped from the homogeneous input)",
    "kfac_factors",
)
class KfacANoHomogeneous(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        out = []
        for a, s in super().kfac_factors(problem, kind, approx):
            a = a.copy()
            a[-1, :] = 0
            a[:, -1] = 0
            out.append((a, s))
        return out


@_mutant(
    "ggn-diag-drops-bias",
    BugClass.BIAS,
    "diag(G) computed for the weights only; bias entries left at zero",
    "ggn_diag",
)
class GgnDiagDropsBias(NumpyPort):
    def ggn_diag(self, problem):
        d = super().ggn_diag(problem).copy()
        for start, layer in zip(self._layer_offsets(problem), problem.layers, strict=True):
            stop = start + (layer.n_in + 1) * layer.n_out
            d[stop - layer.n_out : stop] = 0
        return d


# -- Kronecker order and vec convention ------------------------------------------------------
@_mutant(
    "kfac-swapped-factors",
    BugClass.LAYOUT,
    "factors returned as (S_l, A_l), the Kronecker order of a row-major layout",
    "kfac_factors",
)
class KfacSwappedFactors(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        return [(s, a) for a, s in super().kfac_factors(problem, kind, approx)]


@_mutant(
    "kfac-solve-row-major",
    BugClass.LAYOUT,
    "K-FAC solve unvecs v_l row-major (C order) while the layout is column-major",
    "kfac_solve",
)
class KfacSolveRowMajor(NumpyPort):
    def _kron_solve(self, a, s, v_block, damping, method):
        v = v_block.reshape((s.shape[0], a.shape[0])).reshape(-1, order="F")
        out = super()._kron_solve(a, s, v, damping, method)
        return out.reshape((s.shape[0], a.shape[0]), order="F").reshape(-1)


@_mutant(
    "gradient-row-major",
    BugClass.LAYOUT,
    "per-layer gradient flattened row-major (vec of the transpose)",
    "gradient",
)
class GradientRowMajor(NumpyPort):
    def gradient(self, problem):
        g = super().gradient(problem)
        out = []
        for start, layer in zip(self._layer_offsets(problem), problem.layers, strict=True):
            block = g[start : start + (layer.n_in + 1) * layer.n_out]
            out.append(block.reshape((layer.n_out, layer.n_in + 1), order="F").reshape(-1))
        return np.concatenate(out)


# -- damping formula -------------------------------------------------------------------------
@_mutant(
    "damping-squared",
    BugClass.DAMPING,
    "damped update adds lambda^2 I (damping passed as a standard deviation)",
    "damped_update",
)
class DampingSquared(NumpyPort):
    def _damped_matrix(self, matrix, damping):
        return super()._damped_matrix(matrix, damping * damping)


@_mutant(
    "damped-update-sign",
    BugClass.DAMPING,
    "damped update returns +(C + lambda I)^-1 grad h (ascent direction)",
    "damped_update",
)
class DampedUpdateSign(NumpyPort):
    def damped_update(self, problem, curvature, damping):
        return -super().damped_update(problem, curvature, damping)


@_mutant(
    "kfac-factored-no-pi",
    BugClass.DAMPING,
    "factored Tikhonov damping with pi = 1 (no trace-norm balancing)",
    "kfac_solve",
)
class KfacFactoredNoPi(NumpyPort):
    def _pi(self, a, s):
        return self._dt(1)


@_mutant(
    "kfac-factored-pi-inverted",
    BugClass.DAMPING,
    "pi = sqrt((tr S/dim S)/(tr A/dim A)), the reciprocal of eq. 24's pi",
    "kfac_solve",
)
class KfacFactoredPiInverted(NumpyPort):
    def _pi(self, a, s):
        return 1 / super()._pi(a, s)


@_mutant(
    "kfac-eigen-damps-factors",
    BugClass.DAMPING,
    "'eigen' solve adds sqrt(lambda) to each factor's eigenvalues instead of lambda to the "
    "Kronecker eigenvalues",
    "kfac_solve",
)
class KfacEigenDampsFactors(NumpyPort):
    def _kron_solve(self, a, s, v_block, damping, method):
        if method != "eigen":
            return super()._kron_solve(a, s, v_block, damping, method)
        root = np.sqrt(self._dt(damping))
        a_d = a + root * np.eye(a.shape[0], dtype=a.dtype)
        s_d = s + root * np.eye(s.shape[0], dtype=s.dtype)
        return super()._kron_solve(a_d, s_d, v_block, 0.0, "eigen")


# -- empirical vs true Fisher ----------------------------------------------------------------
@_mutant(
    "fisher-is-empirical",
    BugClass.FISHER_KIND,
    "'Fisher' computed from gradients at the observed targets (the empirical Fisher)",
    "fisher",
)
class FisherIsEmpirical(NumpyPort):
    def fisher(self, problem):
        return self.empirical_fisher(problem)


@_mutant(
    "kfac-fisher-uses-observed",
    BugClass.FISHER_KIND,
    "kind='fisher' statistics use dL/dz at the observed target (empirical K-FAC)",
    "kfac_factors",
)
class KfacFisherUsesObserved(NumpyPort):
    def _kfac_middle(self, problem, kind, z, y):
        return super()._kfac_middle(problem, "empirical" if kind == "fisher" else kind, z, y)


@_mutant(
    "fisher-vp-is-ggn",
    BugClass.FISHER_KIND,
    "Fisher-vector product uses H_L (assumes F = G, false for nll_probs and gaussian_logvar)",
    "fisher_vp",
)
class FisherVpIsGgn(NumpyPort):
    def fisher_vp(self, problem, v):
        return self.ggn_vp(problem, v)


@_mutant(
    "empirical-fisher-batch-gradient",
    BugClass.FISHER_KIND,
    "EF = c (sum_b g_b)(sum_b g_b)^T: outer product of the batch gradient, not per example",
    "empirical_fisher",
)
class EmpiricalFisherBatchGradient(NumpyPort):
    def empirical_fisher(self, problem):
        g = np.sum(self._per_example_gradients(problem), axis=0)
        return self._dt(self._scale(problem)) * np.outer(g, g)


# -- state leaking between calls -------------------------------------------------------------
@_mutant(
    "ggn-vp-stale-cache",
    BugClass.STATE,
    "G v cached per problem name: the first v's product is returned for every later v",
    "ggn_vp",
)
class GgnVpStaleCache(NumpyPort):
    def ggn_vp(self, problem, v):
        cache = self.__dict__.setdefault("_cache", {})
        if problem.name not in cache:
            cache[problem.name] = super().ggn_vp(problem, v)
        return cache[problem.name]


@_mutant(
    "hessian-accumulates",
    BugClass.STATE,
    "H accumulated into a buffer that is never reset between calls",
    "hessian",
)
class HessianAccumulates(NumpyPort):
    def hessian(self, problem):
        buffers = vars(self).setdefault("_accumulated", {})
        total = buffers.get(problem.name, 0) + super().hessian(problem)
        buffers[problem.name] = total
        return total


@_mutant(
    "kfac-factors-leak-average",
    BugClass.STATE,
    "factors averaged with those of the previous call (a moving average that leaks)",
    "kfac_factors",
)
class KfacFactorsLeakAverage(NumpyPort):
    def kfac_factors(self, problem, kind, approx="expand"):
        factors = super().kfac_factors(problem, kind, approx)
        previous = self.__dict__.get("_previous")
        self.__dict__["_previous"] = factors
        if previous is None or [a.shape for a, _ in previous] != [a.shape for a, _ in factors]:
            return factors
        return [
            ((a + pa) / 2, (s + ps) / 2) for (a, s), (pa, ps) in zip(factors, previous, strict=True)
        ]


# -- input aliasing ---------------------------------------------------------------------------
@_mutant(
    "cg-aliases-b",
    BugClass.ALIASING,
    "CG uses the caller's b as its residual buffer (r = b; r -= A x0) and overwrites it",
    "cg",
)
class CgAliasesB(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        r = b
        if x0 is not None:
            r -= self._cast(matvec(self._cast(x0)))
        return super().cg(matvec, r, None if x0 is None else x0 * 0, tol, maxiter, precond) + (
            0 if x0 is None else self._cast(x0)
        )


@_mutant(
    "damped-update-steps-params",
    BugClass.ALIASING,
    "damped_update applies the step to problem.params in place",
    "damped_update",
)
class DampedUpdateStepsParams(NumpyPort):
    def damped_update(self, problem, curvature, damping):
        step = super().damped_update(problem, curvature, damping)
        params = problem.params
        params.setflags(write=True)
        params += step
        return step


@_mutant(
    "lbfgs-direction-in-place",
    BugClass.ALIASING,
    "L-BFGS first loop updates the caller's gradient in place (q = g; q -= alpha * y)",
    "lbfgs_direction",
)
class LbfgsDirectionInPlace(NumpyPort):
    def lbfgs_direction(self, g, s_list, y_list, gamma=1.0):
        q = np.asarray(g)  # no copy: q is the caller's buffer
        pairs = [(self._cast(s), self._cast(y)) for s, y in zip(s_list, y_list, strict=True)]
        alphas = []
        for s, y in reversed(pairs):
            alphas.append((s @ q) / (y @ s))
            q -= alphas[-1] * y
        r = self._dt(gamma) * self._cast(q)
        for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
            r = r + s * (alpha - (y @ r) / (y @ s))
        return r


# -- CG recurrences and initialization -------------------------------------------------------
@_mutant("cg-ignores-x0", BugClass.CG, "CG always starts from zero, ignoring x0", "cg")
class CgIgnoresX0(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        return super().cg(matvec, b, None, tol, maxiter, precond)


@_mutant("cg-beta-inverted", BugClass.CG, "beta = rho_{k-1} / rho_k (inverted ratio)", "cg")
class CgBetaInverted(NumpyPort):
    def _cg_beta(self, rho_new, rho_old):
        return rho_old / rho_new


@_mutant(
    "cg-precond-rho", BugClass.CG, "preconditioned CG with rho = r^T r instead of r^T M r", "cg"
)
class CgPrecondRho(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        if precond is None:
            return super().cg(matvec, b, x0, tol, maxiter, precond)
        b = self._cast(b)
        x = np.zeros_like(b) if x0 is None else self._cast(x0).copy()
        r = b - self._cast(matvec(x))
        p = self._cast(precond(r))
        rho = r @ r
        for _ in range(10 * b.shape[0] if maxiter is None else maxiter):
            if np.linalg.norm(r) <= tol * np.linalg.norm(b):
                break
            ap = self._cast(matvec(p))
            alpha = rho / (p @ ap)
            x, r = x + alpha * p, r - alpha * ap
            rho_new = r @ r
            p = self._cast(precond(r)) + rho_new / rho * p
            rho = rho_new
        return x


@_mutant(
    "cg-extra-iteration", BugClass.CG, "maxiter=k performs k + 1 iterations (off by one)", "cg"
)
class CgExtraIteration(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        return super().cg(matvec, b, x0, tol, None if maxiter is None else maxiter + 1, precond)


@_mutant(
    "cg-residual-from-b",
    BugClass.CG,
    "initial residual r0 = b even when x0 is given (should be b - A x0)",
    "cg",
)
class CgResidualFromB(NumpyPort):
    def cg(self, matvec, b, x0=None, tol=1e-10, maxiter=None, precond=None):
        if x0 is None:
            return super().cg(matvec, b, x0, tol, maxiter, precond)
        zero_start = super().cg(matvec, b, None, tol, maxiter, precond)
        return zero_start + self._cast(x0)


# -- loss-Hessian arithmetic ------------------------------------------------------------------
@_mutant(
    "softmax-hessian-diagonal",
    BugClass.LOSS_HESSIAN,
    "softmax cross-entropy H_L = diag(p), the -p p^T term dropped",
    "ggn",
    "ggn_vp",
    "ggn_diag",
)
class SoftmaxHessianDiagonal(NumpyPort):
    def _loss_hessian(self, problem, z, y):
        h = super()._loss_hessian(problem, z, y)
        return np.diag(self._softmax(z)) if problem.loss == "softmax_cross_entropy" else h


@_mutant(
    "logvar-hessian-no-cross",
    BugClass.LOSS_HESSIAN,
    "gaussian_logvar H_L without the mean/log-variance cross terms",
    "ggn",
    "hessian",
)
class LogvarHessianNoCross(NumpyPort):
    def _loss_hessian(self, problem, z, y):
        h = super()._loss_hessian(problem, z, y)
        if problem.loss != "gaussian_logvar":
            return h
        k = h.shape[0] // 2
        h = h.copy()
        h[:k, k:] = 0
        h[k:, :k] = 0
        return h


@_mutant(
    "nll-probs-hessian-unsquared",
    BugClass.LOSS_HESSIAN,
    "nll_probs H_L = e_y e_y^T / z_y (the square on z_y forgotten)",
    "ggn",
)
class NllProbsHessianUnsquared(NumpyPort):
    def _loss_hessian(self, problem, z, y):
        h = super()._loss_hessian(problem, z, y)
        return h * z[y] if problem.loss == "nll_probs" else h


@_mutant(
    "hessian-is-ggn",
    BugClass.LOSS_HESSIAN,
    "H computed as G: the second-order term sum_j dL/dz_j d2z_j/dtheta2 dropped",
    "hessian",
    "hvp",
)
class HessianIsGgn(NumpyPort):
    def hessian(self, problem):
        return self.ggn(problem)
