"""Hessian-free building blocks, exact and dense: Grosse ch. 4 s4 and s6 (seed 002).

The damped quadratic model of `h` around `theta` as a function of the step `d`
(Grosse eq. (12), written relative to `w0 = theta` and with the constant dropped):

    Q_lambda(d) = grad h^T d + 1/2 d^T (C + lambda I) d,        C = G by default,

is minimized by the damped Gauss-Newton step `d* = -(G + lambda I)^{-1} grad h` (eq. (13)).

Reduction ratio (eq. (14)): `rho = (h(theta) - h(theta + d)) / (Q_lambda(0) - Q_lambda(d))`,
the true reduction over the reduction predicted by the *damped* model (eq. (14) includes the
weight-space proximity term in the denominator). Consequences used by the identity battery:

* on an exactly quadratic `h` with `C = H` and `lambda = 0`, `rho = 1` for every `d`;
* with `d = -(C + lambda I)^{-1} grad h` and `lambda -> inf`, `rho -> 2` (Grosse s4.1, first
  bullet): the numerator is `g^T A g - 1/2 d^T H(xi) d` and the denominator `1/2 g^T A g`
  with `A = (C + lambda I)^{-1}`, so `lambda (2 - rho) -> g^T H g / g^T g`.

Levenberg-Marquardt heuristic (Grosse s4.1): `rho < 1/4 -> lambda * 3/2`,
`rho > 3/4 -> lambda * 2/3`, otherwise unchanged.

Optimal step along a direction `r` (Grosse eq. (26)). The seed writes the model along the
line as `alpha g^T r + alpha^2 r^T G r` -- without the 1/2 of the Taylor expansion -- yet
gives `alpha* = -g^T r / (r^T G r)`, which is the minimizer of the correct model
`alpha g^T r + 1/2 alpha^2 r^T G r` (the printed one would give half of it). We implement the
Taylor-correct model and its minimizer, i.e. the seed's eq. (26) formula.

Momentum subspace (Grosse eq. (27); Martens & Grosse 2015): minimize the same model over
`d = alpha r + beta p` with `p` the previous update; the 2 x 2 normal equations are

    [r^T C r  r^T C p] [alpha]     [g^T r]
    [p^T C r  p^T C p] [beta ] = - [g^T p]      (C including the damping, if any).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._problem import Problem
from ngd_ref._validation import check_damping
from ngd_ref.curvature._dense import Curvature, DenseCurvature, dense
from ngd_ref.newton._dense import quadratic_model

__all__ = [
    "SubspaceStep",
    "hf_quadratic_model",
    "levenberg_marquardt",
    "momentum_subspace_step",
    "optimal_step_size",
    "reduction_ratio",
]


class SubspaceStep(NamedTuple):
    """The minimizer of the quadratic model over `span{r, p}` (Grosse eq. (27)).

    Attributes:
        alpha: coefficient of the direction `r`.
        beta: coefficient of the previous update `p` (0 when `p = 0`, the first iteration).
        step: `alpha r + beta p`, `(n,)`.
    """

    alpha: Any
    beta: Any
    step: np.ndarray


def _vector(problem: Problem, name: str, value: Any, backend: Backend) -> np.ndarray:
    vec = backend.asarray(value)
    if vec.shape != (problem.n_params,):
        raise ValueError(f"{name}: expected shape ({problem.n_params},), got {vec.shape}")
    return vec


def hf_quadratic_model(problem: Problem, step: np.ndarray, *, damping: float = 0.0,
                       curvature: Curvature | str = Curvature.GGN, backend: Backend = FLOAT64):
    """`Q_lambda(d) - Q_lambda(0) = grad h^T d + 1/2 d^T (C + lambda I) d` (Grosse eq. (12)).

    Args:
        problem: the problem; `grad h` and `C` are the exact dense ones (PROTOCOL s3).
        step: `d`, `(n,)`.
        damping: `lambda >= 0` (the weight-space proximity weight).
        curvature: which matrix plays `C` (`ggn` as in eq. (12); `hessian` gives eq. (5)).
        backend: `FLOAT64` or `mp_backend(dps)`.
    """
    matrix = dense(problem, backend).matrix(curvature)
    return quadratic_model(problem, step, curvature=matrix, damping=damping, backend=backend)


def reduction_ratio(problem: Problem, step: np.ndarray, *, damping: float = 0.0,
                    curvature: Curvature | str = Curvature.GGN, backend: Backend = FLOAT64):
    """`rho = (h(theta) - h(theta + d)) / (Q_lambda(0) - Q_lambda(d))` (Grosse eq. (14)).

    The objective at `theta + d` is evaluated exactly with the dense reference at those
    parameters. NaN when the model predicts no change (`d = 0`), as in the JAX twin.

    Args:
        problem: the problem.
        step: `d`, `(n,)`.
        damping: the `lambda` of the model in the denominator.
        curvature: `C` of the model (`ggn` by default, as in HF).
        backend: `FLOAT64` or `mp_backend(dps)`; use mpmath for tiny steps, where the
            numerator cancels catastrophically in float64.
    """
    check_damping(damping)
    with backend.precision():
        d = _vector(problem, "step", step, backend)
        ref = dense(problem, backend)
        shifted = DenseCurvature(problem, backend, params=ref.theta + d)
        predicted = -hf_quadratic_model(problem, d, damping=damping, curvature=curvature,
                                        backend=backend)
        if predicted == 0:
            return backend.scalar(math.nan)
        return (ref.loss - shifted.loss) / predicted


def levenberg_marquardt(damping: float, rho: float, *, low: float = 0.25, high: float = 0.75,
                        increase: float = 1.5, decrease: float = 2.0 / 3.0) -> float:
    """Return the damping after one step, by the Levenberg-Marquardt rule of Grosse s4.1.

    `rho < low -> damping * increase`; `rho > high -> damping * decrease`; else unchanged.
    Defaults are the seed's 1/4, 3/4, 3/2 and 2/3. A non-finite `rho` (the step overflowed or
    the model predicted nothing) counts as a failed step and increases the damping.

    Raises:
        ValueError: for a negative or non-finite `damping`, or inconsistent thresholds/factors.
    """
    check_damping(damping)
    if not (low <= high and increase > 1 and 0 < decrease < 1):
        raise ValueError("low/high/increase/decrease: need low <= high, increase > 1 and "
                         f"0 < decrease < 1; got {low}, {high}, {increase}, {decrease}")
    rho = float(rho)
    if not math.isfinite(rho) or rho < low:
        return damping * increase
    if rho > high:
        return damping * decrease
    return damping


def optimal_step_size(problem: Problem, direction: np.ndarray, *, damping: float = 0.0,
                      curvature: Curvature | str = Curvature.GGN, backend: Backend = FLOAT64):
    """`alpha* = -g^T r / (r^T (C + lambda I) r)`: the minimizer along `r` (Grosse eq. (26)).

    Minimizes `alpha g^T r + 1/2 alpha^2 r^T (C + lambda I) r` (see the module docstring for
    the missing 1/2 in the seed's display). Requires `r^T (C + lambda I) r > 0`.

    Raises:
        ValueError: if the curvature along `direction` is not positive (no minimizer).
    """
    check_damping(damping)
    ref = dense(problem, backend)
    with backend.precision():
        r = _vector(problem, "direction", direction, backend)
        curv = r @ (ref.matrix(curvature) @ r) + backend.scalar(damping) * (r @ r)
        if not float(curv) > 0:
            raise ValueError(f"direction: the model has curvature {float(curv):.3g} <= 0 along it; "
                             "no minimizer exists (use a PSD curvature or add damping)")
        return -(ref.gradient @ r) / curv


def momentum_subspace_step(problem: Problem, direction: np.ndarray, previous: np.ndarray, *,
                           damping: float = 0.0, curvature: Curvature | str = Curvature.GGN,
                           backend: Backend = FLOAT64) -> SubspaceStep:
    """Minimize the damped model over `d = alpha r + beta p` (Grosse eq. (27)).

    Args:
        problem: the problem.
        direction: `r`, e.g. the approximate natural gradient direction.
        previous: `p = w^(k) - w^(k-1)`, the previous update; all zeros on the first iteration,
            which reduces to eq. (26) with `beta = 0`.
        damping: `lambda >= 0` added to `C` in the model.
        curvature: `C` (`ggn` by default).
        backend: `FLOAT64` or `mp_backend(dps)`.

    Raises:
        ValueError: if the 2 x 2 model matrix is not positive definite (e.g. `previous`
            parallel to `direction`), naming `previous`.
    """
    check_damping(damping)
    ref = dense(problem, backend)
    with backend.precision():
        r = _vector(problem, "direction", direction, backend)
        p = _vector(problem, "previous", previous, backend)
        if not any(float(v) != 0 for v in p):
            alpha = optimal_step_size(problem, r, damping=damping, curvature=curvature,
                                      backend=backend)
            return SubspaceStep(alpha, backend.scalar(0), alpha * r)
        # Columns scaled to unit length so the 2 x 2 system is as well conditioned as the
        # angle between r and p allows, whatever their lengths.
        norms = backend.sqrt(backend.asarray([r @ r, p @ p]))
        basis = np.stack([r / norms[0], p / norms[1]], axis=1)
        lam = backend.scalar(damping)
        model = basis.T @ (ref.matrix(curvature) @ basis) + lam * (basis.T @ basis)
        det = model[0, 0] * model[1, 1] - model[0, 1] * model[1, 0]
        # det / (m00 m11) is sin^2 of the angle between r and p in the model's metric: below
        # the working precision the pair is numerically parallel and the 2 x 2 solve meaningless.
        resolution = 10.0 ** -(backend.dps - 2)
        if not (float(model[0, 0]) > 0
                and float(det) > resolution * float(model[0, 0] * model[1, 1])):
            raise ValueError("previous: the model restricted to span{direction, previous} is not "
                             "positive definite (parallel vectors or non-PSD curvature)")
        alpha, beta = backend.solve(model, -(basis.T @ ref.gradient)) / norms
        return SubspaceStep(alpha, beta, alpha * r + beta * p)
