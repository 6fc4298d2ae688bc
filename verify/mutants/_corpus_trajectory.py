"""Optimizer mutants (issue 15 item 4): one bug in the optimizer state of PROTOCOL s10 each.

Each class overrides one hook of the numpy port's `optimizer_trajectory`
(`verify.mutants._port_trajectory`); the kill must come from `optimizer_trajectory`, and its
message names the first step that leaves the tolerance and the events at that step.
"""

from __future__ import annotations

import numpy as np

from verify.mutants import BugClass, register_mutant
from verify.mutants._port import NumpyPort

__all__: list[str] = []


def _mutant(name: str, description: str):
    return register_mutant(name, BugClass.OPTIMIZER_STATE, description,
                           capabilities=("optimizer_trajectory",), dtypes=("float64", "float32"))


@_mutant("kfac-ema-weights-swapped", "eq. 25 as (1 - eta) average + eta new")
class EmaWeightsSwapped(NumpyPort):
    def _ema(self, average, new, eta):
        return (1 - eta) * average + eta * new


@_mutant("kfac-bias-correction-off-by-one", "bias correction 1 - eta^(m + 1): counts the "
         "update about to happen")
class BiasCorrectionOffByOne(NumpyPort):
    def _bias(self, eta, m):
        return 1 - eta ** (m + 1)


@_mutant("kfac-inverse-a-step-late", "the inverse rebuilt at step k is first used at k + 1 "
         "(refresh after the preconditioning)")
class InverseAStepLate(NumpyPort):
    _inverse_after_direction = True


@_mutant("kfac-inverse-every-step", "the damped K-FAC inverse rebuilt every step "
         "(inverse_every ignored)")
class InverseEveryStep(NumpyPort):
    def _inverse_due(self, k, every):
        return True


@_mutant("lm-thresholds-swapped", "Levenberg-Marquardt with the thresholds swapped: increase "
         "below 3/4, decrease above 1/4")
class LmThresholdsSwapped(NumpyPort):
    def _levenberg_marquardt(self, lam, rho, omega):
        if not np.isfinite(rho) or rho < 0.75:
            return lam * omega
        if rho > 0.25:
            return lam / omega
        return lam


@_mutant("lm-direction-swapped", "Levenberg-Marquardt in the wrong direction: a poor rho "
         "decreases the damping, a good one increases it")
class LmDirectionSwapped(NumpyPort):
    def _levenberg_marquardt(self, lam, rho, omega):
        return super()._levenberg_marquardt(lam, rho, 1 / omega)


@_mutant("rho-undamped-model", "rho_k against the undamped model g^T d + 1/2 d^T C d (Grosse "
         "eq. 14 includes the damping)")
class RhoUndampedModel(NumpyPort):
    def _model_damping(self, lam):
        return 0 * lam


@_mutant("eq26-without-damping", "rescaled alpha = -g^T Delta / (Delta^T C Delta): the damping "
         "left out of the line model")
class Eq26WithoutDamping(NumpyPort):
    def _line_minimizer(self, g_delta, curvature_delta, delta_delta, lam):
        return super()._line_minimizer(g_delta, curvature_delta, delta_delta, 0 * lam)


@_mutant("eq26-stray-half", "rescaled alpha halved: the minimizer of the seed's printed model "
         "alpha g^T r + alpha^2 r^T G r (without the Taylor 1/2)")
class Eq26StrayHalf(NumpyPort):
    def _line_minimizer(self, g_delta, curvature_delta, delta_delta, lam):
        return super()._line_minimizer(g_delta, curvature_delta, delta_delta, lam) / 2


@_mutant("eq27-previous-direction", "momentum_qm's plane spanned with the previous direction "
         "Delta_{k-1} instead of the previous step d_{k-1}")
class Eq27PreviousDirection(NumpyPort):
    def _momentum_vector(self, previous_step, previous_direction):
        return previous_direction


@_mutant("hf-cg-warm-start-ignored", "Hessian-free CG always started from 0 (cg_warm_start "
         "ignored)")
class CgWarmStartIgnored(NumpyPort):
    def _warm_start(self, beta, p_prev):
        return np.zeros_like(p_prev)


@_mutant("shampoo-inverse-square-root", "Shampoo preconditioned with L^{-1/2} G R^{-1/2} "
         "(the -1/4 roots of a two-sided preconditioner)")
class ShampooInverseSquareRoot(NumpyPort):
    _shampoo_root = 2


@_mutant("shampoo-stats-not-accumulated", "Shampoo's statistics replaced by G G^T, G^T G each "
         "step instead of accumulated")
class ShampooStatsNotAccumulated(NumpyPort):
    def _shampoo_accumulate(self, stat, outer, beta2):
        return outer


@_mutant("lbfgs-pairs-newest-first", "the two-loop recursion handed the pairs newest first")
class LbfgsPairsNewestFirst(NumpyPort):
    def _pair_order(self, pairs):
        return list(reversed(pairs))


@_mutant("lbfgs-stores-nonpositive-pairs", "L-BFGS stores pairs with y^T s <= 0 (no curvature "
         "condition)")
class LbfgsStoresNonpositivePairs(NumpyPort):
    def _pair_accepted(self, ys):
        return True
