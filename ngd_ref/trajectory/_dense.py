"""Dense reference optimizer trajectories, exactly as PROTOCOL section 10 writes them.

`trajectory(problem, batches, method, hyper)` runs K steps of one of the five stateful methods
from `theta_0 = problem.params`, step k on batch k, and returns `theta_1, ..., theta_K` with a
per-step log of every discrete event. It is built on the public dense reference
(`ngd_ref.dense`): exact curvature matrices (Martens s3, s5, s7), the K-FAC factors and damped
solves of Grosse eqs. 23-25, the CG iterates of section 5, the inverse roots of Shampoo and
the L-BFGS two-loop recursion (Nocedal & Wright Algorithm 7.4), and runs on any `Backend`
(`FLOAT64`, or `mp_backend(dps)` to certify the float64 run).

Notation of section 10: `g_k = grad h_k(theta_k)` on batch k, `d_k = theta_{k+1} - theta_k`,
`C_k` the exact curvature named by the method, `lambda_k` the damping in force, and the damped
quadratic model (Grosse eq. 14, the damping included)

    M_k(d) = g_k^T d + 1/2 d^T (C_k + lambda_k I) d.

* `damped_newton` (Grosse eqs. 12-13): `d_k = -lr (C_k + lambda_k I)^{-1} g_k`.
* `hessian_free` (Grosse s4): `p_k` = the `cg_iters`-th CG iterate on
  `(C_k + lambda_k I) p = -g_k` from `beta p_{k-1}`, `d_k = lr p_k`.
* `kfac` (Grosse s5-s6, Algorithm 1): eq. 25 moving averages of the exact factors every
  `stats_every` steps (optionally bias-corrected by `1 - eta^m`), the damped solve rebuilt
  every `inverse_every` steps and stale in between, then the `fixed`, `rescaled` (eq. 26) or
  `momentum_qm` (eq. 27) step.
* `shampoo` (seed 004): `L <- beta2 L + G G^T`, `R <- beta2 R + G^T G`, roots
  `(L + eps I)^{-1/4}`, `(R + eps I)^{-1/4}` every `root_every` steps,
  `d = -lr vec(L^{-1/4} G R^{-1/4})`.
* `lbfgs` (seed 004): `d_k = -lr H_k g_k`, pairs `(d_k, grad h_k(theta_{k+1}) - g_k)` stored
  when `y^T s > 0`, the newest `memory` kept.
* Damping adaptation (Grosse s4.1), with `adapt_damping`, after each step k with
  `(k + 1) % damping_every == 0`: `rho_k = (h_k(theta_{k+1}) - h_k(theta_k)) / M_k(d_k)`,
  `lambda <- omega lambda` if `rho_k < 1/4` (or not finite), `lambda / omega` if `rho_k > 3/4`,
  unchanged otherwise or when `M_k(d_k) = 0`.

Each `StepLog` also carries the float64 quantities the harness needs to judge whether a
decision is resolvable (the margins of `rho`, `y^T s` and the eq. 27 determinant) and how
sensitive the step's linear algebra is (its condition number).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ngd_ref import Problem, layer_slices
from ngd_ref.dense import (
    FLOAT64,
    Backend,
    DampingMethod,
    DenseCurvature,
    KfacKind,
    cg_solve,
    damped_factors,
    ema_update,
    factored_damping_pi,
    get_loss,
    inverse_bfgs_matrix,
    inverse_root,
    iterate_condition,
    kfac_factors_of,
    kfac_solve_factors,
    kfac_trace_rounding_of,
    lbfgs_direction,
)

__all__ = [
    "HYPER_KEYS",
    "Event",
    "Method",
    "StepLog",
    "StepRule",
    "Trajectory",
    "trajectory",
]


class Method(str, enum.Enum):
    """The stateful methods of PROTOCOL s10."""

    DAMPED_NEWTON = "damped_newton"
    HESSIAN_FREE = "hessian_free"
    KFAC = "kfac"
    SHAMPOO = "shampoo"
    LBFGS = "lbfgs"


class StepRule(str, enum.Enum):
    """K-FAC's step rules: fixed lr and momentum, eq. 26, eq. 27."""

    FIXED = "fixed"
    RESCALED = "rescaled"
    MOMENTUM_QM = "momentum_qm"


class Event(str, enum.Enum):
    """The discrete events of one step (PROTOCOL s10, "Its schedules make every event ...")."""

    STATISTICS = "statistics update"
    INVERSE = "inverse refresh"
    DAMPING_INCREASE = "damping increase"
    DAMPING_DECREASE = "damping decrease"
    DAMPING_KEPT = "damping kept"
    ROOT = "root refresh"
    PAIR_STORED = "pair stored"
    PAIR_REJECTED = "pair rejected"
    PAIR_EVICTED = "pair evicted"
    MOMENTUM_FALLBACK = "momentum fallback"


_ADAPT = ("adapt_damping", "damping_every", "damping_factor")
#: the keys of `hyper` each method reads (PROTOCOL s10 table)
HYPER_KEYS: dict[Method, tuple[str, ...]] = {
    Method.DAMPED_NEWTON: ("curvature", "lr", "damping", *_ADAPT),
    Method.HESSIAN_FREE: ("curvature", "lr", "damping", "cg_iters", "cg_warm_start", *_ADAPT),
    Method.KFAC: ("kind", "ema", "ema_bias_correction", "stats_every", "inverse_every",
                  "damping", "damping_method", "step_rule", "lr", "momentum", *_ADAPT),
    Method.SHAMPOO: ("lr", "eps", "beta2", "root_every"),
    Method.LBFGS: ("lr", "memory", "gamma"),
}
_CURVATURES = {
    Method.DAMPED_NEWTON: ("hessian", "ggn", "fisher", "empirical_fisher"),
    Method.HESSIAN_FREE: ("ggn", "fisher"),
}


@dataclasses.dataclass(frozen=True)
class StepLog:
    """What happened at step k.

    Attributes:
        k: the step index (0-based: the step from `theta_k` to `theta_{k+1}`).
        events: the events of the step, in the order they happened.
        damping: `lambda_k`, the damping in force at the step (None for methods without one).
        rho: the reduction ratio, on adaptation steps.
        model: `M_k(d_k)`, on adaptation steps.
        loss_magnitude: `c sum_b (|L_b| + ||z_b||_1)` at `theta_k` on batch k (float64): the
            scale of the loss's rounding error (log-sum-exp cancellation grows with |z|).
        gradient_cancellation: `||c sum_b MAG(J_b)^T MAG(dL/dz_b)|| / ||g_k||` (>= 1): how
            much the gradient cancels (its rounding error is relative to the numerator: the
            chain rule and the loss's gradient on absolute values, see `magnitudes`).
        exponent_range: `2 max |s_l|` over layers and examples at `theta_k` on batch k, or
            the loss's `log_range` where larger (float64): a bound on every exponential's
            argument (a max-shifted softmax's spread included) and on the logarithm of the
            loss's own intermediates (`nll_probs`' `z_y^2`), for the harness's range test.
        condition: condition number of the step's linear algebra (float64): `C_k + lambda_k I`
            (Newton; for HF also its truncated CG iterate's, `iterate_condition`), the damped
            K-FAC blocks in use, `L + eps I` and `R + eps I` (Shampoo), the dense `H_k`
            (L-BFGS).
        min_eigenvalue: smallest eigenvalue of `C_k + lambda_k I` over its largest absolute
            one, where the step needs it positive definite (HF, `rescaled`, `momentum_qm`).
        pair_curvature: `y_k^T s_k` (L-BFGS).
        pair_scale: `||s|| (||MAG g(theta_k)|| + ||MAG g(theta_{k+1})||) + |s|^T |y|` (L-BFGS,
            float64): the scale of the rounding error of `y^T s`.
        det_ratio: `det / (a11 a22)` of the eq. 27 system (`momentum_qm`, when formed).
        alpha: the coefficient of `Delta_k` (K-FAC).
        beta: the coefficient of `d_{k-1}` (K-FAC).
        trace_cancellation: with eq. 24's factored damping, the largest cancellation of a
            K-FAC factor's trace in use (`_Runner._trace_cancellation`, >= 1; 1.0 otherwise):
            pi's relative rounding is `(2 + 3 trace_cancellation) rtol / 2`.
        pi_sensitivity: with eq. 24's factored damping, how much a relative change of pi
            moves the step, relative (`_Runner._pi_sensitivity`, <= 1; 0.0 otherwise).
        undefined: why the step's linear algebra is undefined by PROTOCOL s4/s10 (e.g. eq.
            24's pi with a factor of zero trace), "" when it is defined.
    """

    k: int
    events: tuple[Event, ...] = ()
    damping: Any = None
    rho: Any = None
    model: Any = None
    loss_magnitude: float = 0.0
    gradient_cancellation: float = 1.0
    exponent_range: float = 0.0
    condition: float = 1.0
    min_eigenvalue: float | None = None
    pair_curvature: Any = None
    pair_scale: float = 0.0
    det_ratio: Any = None
    alpha: Any = None
    beta: Any = None
    trace_cancellation: float = 1.0
    pi_sensitivity: float = 0.0
    undefined: str = ""

    def describe(self) -> str:
        """The events of the step in words, e.g. `step 3: inverse refresh, damping increase`."""
        words = ", ".join(e.value for e in self.events) or "no event"
        extra = f" (rho {float(self.rho):.6g})" if self.rho is not None else ""
        return f"step {self.k}: {words}{extra}"


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """The parameters after each step and the log of each step.

    Attributes:
        method: the method run.
        params: `theta_1, ..., theta_K` (arrays of the backend).
        steps: one `StepLog` per step.
        backend: the backend's name.
        start: `theta_0` rounded to float64.
    """

    method: Method
    params: tuple[np.ndarray, ...]
    steps: tuple[StepLog, ...]
    backend: str
    start: np.ndarray

    def float64(self) -> np.ndarray:
        """`theta_1 .. theta_K` rounded to float64, `(K, n)`."""
        return np.array([np.asarray(p, dtype=object).astype(float) for p in self.params],
                        dtype=np.float64).reshape(len(self.params), -1)

    def count(self, event: Event) -> int:
        """How many steps had `event`."""
        return sum(event in s.events for s in self.steps)


def _truncated_cg_condition(a: np.ndarray, b: np.ndarray, x0: np.ndarray, iters: int) -> float:
    """Condition of HF's step, `iters` CG iterations on `A x = b` from `x0` (float64).

    The largest of `kappa(A)` and the terms of CG's iterate condition (`iterate_condition`):
    a truncated CG iterate depends on the rounding of its Krylov basis and residuals, not
    only on `A` (campaign seed 3: a correct float32 port 4x past a `kappa(A)` tolerance).
    """
    condition = _condition(a)
    if not math.isfinite(condition):
        return condition
    run = cg_solve(a, b, x0, tol=0.0, maxiter=iters)
    if run.iterations == 0:
        return condition
    residuals = tuple(float(r) for r in run.residual_norms)
    if not residuals[run.iterations - 1] > 0:
        return math.inf
    return max(condition, *iterate_condition(a, b - a @ x0, None, residuals, run.iterations))


def _condition(matrix: np.ndarray) -> float:
    """2-norm condition number in float64 (inf for a non-finite matrix: LAPACK must not see it)."""
    if not np.all(np.isfinite(matrix)):
        return math.inf
    return float(np.linalg.cond(matrix))


def _check_hyper(method: Method, hyper: Mapping[str, Any]) -> None:
    missing = [k for k in HYPER_KEYS[method] if k not in hyper]
    if missing:
        raise ValueError(f"hyper: method {method.value!r} needs {', '.join(missing)}")
    for key in ("stats_every", "inverse_every", "damping_every", "root_every", "cg_iters"):
        if key in HYPER_KEYS[method] and not (int(hyper[key]) == hyper[key] >= 1):
            raise ValueError(f"hyper: {key} must be an integer >= 1, got {hyper[key]!r}")
    if method in _CURVATURES and hyper["curvature"] not in _CURVATURES[method]:
        raise ValueError(f"hyper: curvature of {method.value} must be one of "
                         f"{', '.join(_CURVATURES[method])}, got {hyper['curvature']!r}")
    if "damping" in HYPER_KEYS[method] and not float(hyper["damping"]) > 0:
        raise ValueError(f"hyper: damping must be > 0, got {hyper['damping']!r}")
    if "ema" in HYPER_KEYS[method] and not 0 <= float(hyper["ema"]) < 1:
        raise ValueError(f"hyper: ema must be in [0, 1), got {hyper['ema']!r}")
    if method is Method.LBFGS and not (int(hyper["memory"]) == hyper["memory"] >= 0):
        raise ValueError(f"hyper: memory must be an integer >= 0, got {hyper['memory']!r}")
    if method is Method.SHAMPOO and not float(hyper["eps"]) > 0:
        raise ValueError(f"hyper: eps must be > 0, got {hyper['eps']!r}")


class _Runner:
    """The state of one run; `step(k)` advances `theta` by one step of the method."""

    def __init__(self, problem: Problem, batches: Sequence, method: Method,
                 hyper: Mapping[str, Any], bk: Backend, eps: float, theta: np.ndarray) -> None:
        self.problem, self.batches, self.method, self.hyper = problem, batches, method, hyper
        self.bk, self.eps = bk, eps
        self.theta = theta
        self.n = theta.shape[0]
        self.d_prev = bk.zeros(self.n)
        self.lam = bk.scalar(hyper["damping"]) if "damping" in HYPER_KEYS[method] else None
        self.p_prev = bk.zeros(self.n)  # hessian_free's previous CG solution
        self.average: list | None = None  # kfac moving averages
        self.average_trace_rounding: list | None = None  # tr(S_l)'s rounding, the same EMA
        self.updates = 0  # kfac statistics updates so far (m)
        # kfac (factors, lambda, condition, trace cancellation, pi sensitivity) of the last
        # rebuild
        self.solver: tuple | None = None
        self.left: list | None = None  # shampoo statistics
        self.roots: tuple | None = None  # shampoo (left roots, right roots, condition)
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []  # lbfgs, oldest first

    # -- the numerical primitives (the JAX twin overrides these and `at`) -------------------
    def _solve(self, system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        return self.bk.solve(system, rhs)

    def _cg(self, system: np.ndarray, rhs: np.ndarray, start: np.ndarray, iters: int):
        return cg_solve(system, rhs, start, tol=0.0, maxiter=iters).x

    def _factors(self, ref: DenseCurvature, kind: str) -> list:
        return kfac_factors_of(ref, kind, approx=self.hyper.get("approx", "expand"))

    def _kfac_solve(self, factors: list, v: np.ndarray, lam: Any, method: str) -> np.ndarray:
        return kfac_solve_factors(factors, v, lam, method, backend=self.bk)

    def _root(self, matrix: np.ndarray, eps: float) -> np.ndarray:
        return inverse_root(matrix, 4, eps, backend=self.bk)

    def _two_loop(self, g: np.ndarray, s_list: list, y_list: list, gamma: Any) -> np.ndarray:
        return lbfgs_direction(g, s_list, y_list, gamma, backend=self.bk)

    # -- helpers ---------------------------------------------------------------------------
    def at(self, k: int, theta: np.ndarray) -> DenseCurvature:
        """The dense reference of batch k at `theta`."""
        x, y = self.batches[k]
        return DenseCurvature(self.problem.replace(inputs=np.asarray(x, dtype=np.float64),
                                                   targets=np.asarray(y)), self.bk, params=theta)

    def f64(self, x: Any) -> np.ndarray:
        return self.bk.to_float64(x)

    def curvature(self, ref: DenseCurvature) -> np.ndarray:
        if self.method is Method.KFAC:
            return ref.matrix(KfacKind(self.hyper["kind"]).curvature)
        return ref.matrix(self.hyper["curvature"])

    def damped(self, matrix: np.ndarray, lam: Any) -> np.ndarray:
        return matrix + lam * self.bk.eye(self.n)

    def model(self, ref: DenseCurvature, d: np.ndarray) -> Any:
        """`M_k(d) = g^T d + 1/2 d^T (C_k + lambda_k I) d`."""
        return ref.gradient @ d + (d @ (self.damped(self.curvature(ref), self.lam) @ d)) / 2

    def min_eigenvalue(self, matrix: np.ndarray) -> float:
        matrix = self.f64(matrix)
        if not np.all(np.isfinite(matrix)):
            return -math.inf
        values = np.linalg.eigvalsh(matrix)
        return float(values[0] / max(np.max(np.abs(values)), np.finfo(np.float64).tiny))

    def trace_rounding(self, ref: DenseCurvature, kind: str) -> list | None:
        """`tr(S_l)`'s rounding bound per layer, units of rtol (`kfac_trace_rounding_of`)."""
        return kfac_trace_rounding_of(ref, kind, approx=self.hyper.get("approx", "expand"))

    def magnitudes(self, ref: DenseCurvature) -> tuple[float, float, float]:
        """`(loss magnitude, ||MAG g||, ||g||)` in float64.

        `MAG g = c sum_b MAG(J_b)^T MAG(dL/dz_b)`, the policy's: the chain rule's `MAG(J_b)`
        (`DenseCurvature.jacobian_magnitudes`; through a softmax output layer the cotangent
        `(diag(p) - p p^T) t` is rounded relative to `(diag(p) + p p^T) |t|`) and the loss's
        `grad_magnitude` (`|z| + |y|` for a residual `z - y`, `p + e_y` for `p - e_y`): near a
        fit the difference cancels (campaign seed 18: an mse net fitting its one example,
        `|z - y| = 0.03` against `|z| + |y| ~ 2`, where `|dL/dz|` left a float32 K-FAC
        trajectory 17 tolerances out).
        """
        loss = get_loss(self.problem.loss)
        grads = np.stack([loss.grad_magnitude(y, z)
                          for y, z in zip(ref.targets, ref.outputs, strict=True)])
        c = float(ref.c)
        mag_g = c * np.einsum("bcn,bc->n", ref.jacobian_magnitudes, grads)
        values = [abs(float(loss.value(self.bk, y, z))) for y, z in
                  zip(ref.targets, ref.outputs, strict=True)]
        loss_mag = c * (sum(values) + float(np.sum(np.abs(self.f64(ref.outputs)))))
        return loss_mag, float(np.linalg.norm(mag_g)), float(np.linalg.norm(self.f64(ref.gradient)))

    def exponent_range(self, ref: DenseCurvature) -> float:
        """`2 max |s_l|` over layers and examples, or the loss's `log_range` (float64)."""
        loss = get_loss(self.problem.loss)
        return max([2 * max(float(np.max(np.abs(self.f64(s)))) for t in ref.traces for s in t.s),
                    *(loss.log_range(y, self.f64(z))
                      for y, z in zip(ref.targets, ref.outputs, strict=True))])

    # -- the step --------------------------------------------------------------------------
    def step(self, k: int) -> StepLog:
        hyper = self.hyper
        ref = self.at(k, self.theta)
        g = ref.gradient
        loss_mag, mag_g, norm_g = self.magnitudes(ref)
        log: dict[str, Any] = {"k": k, "damping": self.lam, "loss_magnitude": loss_mag,
                               "gradient_cancellation": max(1.0, mag_g / max(norm_g, 1e-300)),
                               "exponent_range": self.exponent_range(ref)}
        events: list[Event] = []
        d = getattr(self, f"_{self.method.value}")(k, ref, g, events, log)
        new_theta = self.theta + d
        after = None
        if self.method is Method.LBFGS:
            after = self.at(k, new_theta)
            self._store_pair(d, after.gradient - g, g, after, mag_g, events, log)
        if "adapt_damping" in HYPER_KEYS[self.method] and hyper["adapt_damping"] and (
                (k + 1) % int(hyper["damping_every"]) == 0):
            after = self.at(k, new_theta) if after is None else after
            self._adapt(ref, after, d, events, log)
        self.theta, self.d_prev = new_theta, d
        return StepLog(events=tuple(events), **log)

    def _adapt(self, ref: DenseCurvature, after: DenseCurvature, d: np.ndarray,
               events: list[Event], log: dict[str, Any]) -> None:
        """Grosse s4.1's Levenberg-Marquardt rule on `rho_k` (PROTOCOL s10)."""
        bk = self.bk
        model = self.model(ref, d)
        log["model"] = model
        omega = bk.scalar(self.hyper["damping_factor"])
        if model == 0:
            events.append(Event.DAMPING_KEPT)
            return
        rho = (after.loss - ref.loss) / model
        log["rho"] = rho
        if not math.isfinite(float(rho)) or rho < bk.scalar(0.25):
            self.lam = self.lam * omega
            events.append(Event.DAMPING_INCREASE)
        elif rho > bk.scalar(0.75):
            self.lam = self.lam / omega
            events.append(Event.DAMPING_DECREASE)
        else:
            events.append(Event.DAMPING_KEPT)

    # -- the methods -----------------------------------------------------------------------
    def _damped_newton(self, k, ref, g, events, log) -> np.ndarray:
        system = self.damped(self.curvature(ref), self.lam)
        log["condition"] = _condition(self.f64(system))
        return -self.bk.scalar(self.hyper["lr"]) * self._solve(system, g)

    def _hessian_free(self, k, ref, g, events, log) -> np.ndarray:
        bk, hyper = self.bk, self.hyper
        system = self.damped(self.curvature(ref), self.lam)
        log["min_eigenvalue"] = self.min_eigenvalue(system)
        start = bk.scalar(hyper["cg_warm_start"]) * self.p_prev
        log["condition"] = _truncated_cg_condition(self.f64(system), self.f64(-g),
                                                   self.f64(start), int(hyper["cg_iters"]))
        p = self._cg(system, -g, start, int(hyper["cg_iters"]))
        self.p_prev = p
        return bk.scalar(hyper["lr"]) * p

    def _kfac(self, k, ref, g, events, log) -> np.ndarray:
        bk, hyper = self.bk, self.hyper
        if k % int(hyper["stats_every"]) == 0:
            new = self._factors(ref, hyper["kind"])
            if self.average is None:
                self.average = [(a * 0, s * 0) for a, s in new]
            self.average = ema_update(self.average, new, hyper["ema"])
            rounding = self.trace_rounding(ref, hyper["kind"])
            if rounding is not None:
                eta = float(hyper["ema"])
                self.average_trace_rounding = [
                    eta * old + (1 - eta) * new for old, new in
                    zip(self.average_trace_rounding or [0.0] * len(rounding), rounding,
                        strict=True)]
            self.updates += 1
            events.append(Event.STATISTICS)
        if k % int(hyper["inverse_every"]) == 0:
            assert self.average is not None  # step 0 refreshes the statistics (0 % every == 0)
            if hyper["ema_bias_correction"]:
                scale = 1 - bk.scalar(hyper["ema"]) ** self.updates
                factors = [(a / scale, s / scale) for a, s in self.average]
            else:
                factors = list(self.average)
            factored = DampingMethod(hyper["damping_method"]) is DampingMethod.FACTORED
            self.solver = (factors, self.lam, self._kfac_condition(factors, self.lam),
                           self._trace_cancellation(factors) if factored else 1.0,
                           self._pi_sensitivity(factors, self.lam) if factored else 0.0)
            events.append(Event.INVERSE)
            if factored and not all(
                    np.trace(self.f64(a)) > 0 and np.trace(self.f64(s)) > 0 for a, s in factors):
                log["undefined"] = "eq. 24's pi: a K-FAC factor has zero trace"
        assert self.solver is not None  # step 0 builds the inverses
        factors, lam_solve, condition, log["trace_cancellation"], log["pi_sensitivity"] = \
            self.solver
        log["condition"] = condition
        delta = self._kfac_solve(factors, g, lam_solve, hyper["damping_method"])
        rule = StepRule(hyper["step_rule"])
        if rule is StepRule.FIXED:
            alpha, beta = -bk.scalar(hyper["lr"]), bk.scalar(hyper["momentum"])
        else:
            system = self.damped(self.curvature(ref), self.lam)
            log["min_eigenvalue"] = self.min_eigenvalue(system)
            alpha, beta = self._subspace(k, system, g, delta, rule, events, log)
        log["alpha"], log["beta"] = alpha, beta
        return alpha * delta + beta * self.d_prev

    def _subspace(self, k, system, g, delta, rule, events, log) -> tuple[Any, Any]:
        """Eq. 26 (`rescaled`) or eq. 27 (`momentum_qm`) with the singular fallback."""
        bk = self.bk
        zero = bk.scalar(0)
        a11 = delta @ (system @ delta)
        rescaled = (-(g @ delta) / a11 if a11 != 0 else zero, zero)
        if rule is StepRule.RESCALED:
            return rescaled
        prev = self.d_prev
        if k == 0 or not any(float(v) != 0 for v in self.f64(prev)):
            events.append(Event.MOMENTUM_FALLBACK)
            return rescaled
        a12 = delta @ (system @ prev)
        a22 = prev @ (system @ prev)
        det = a11 * a22 - a12 * a12
        product = a11 * a22
        log["det_ratio"] = det / product if product != 0 else zero
        if det <= 64 * bk.scalar(self.eps) * product:
            events.append(Event.MOMENTUM_FALLBACK)
            return rescaled
        g_delta, g_prev = g @ delta, g @ prev
        return (-g_delta * a22 + g_prev * a12) / det, (-g_prev * a11 + g_delta * a12) / det

    def _trace_cancellation(self, factors: list) -> float:
        """Largest `B_l / (3 tr S_l)` over the averaged factors (>= 1; float64).

        `B_l` is `tr(S_l)`'s first-order rounding bound in units of rtol
        (`kfac_trace_rounding_of`, averaged like `S_l`; the bias correction cancels in the
        ratio), `3 tr(S_l)` its value without cancellation. Eq. 24's
        `pi = sqrt((tr A / dim A) / (tr S / dim S))` is known to a port only to
        `(2 + 3 x) rtol / 2` relative (`tr A`, a mean of `||abar||^2`, to `2 rtol`): a factor
        whose trace cancels to rounding (a reduce-approx convolution under a softmax, whose
        summed output gradients are exactly zero) leaves pi undetermined. `inf` where a trace
        is not positive but has a rounding bound, 1 where both are zero (a dead layer's
        `S_l = 0` has no rounding: every port computes it exactly, and eq. 24's pi falls back
        to 1 alike); 1.0 where the bounds are not tracked (the JAX twin's runs).
        """
        if self.average_trace_rounding is None:
            return 1.0
        worst = 1.0
        for (_, s), bound in zip(factors, self.average_trace_rounding, strict=True):
            trace = float(np.trace(self.f64(s)))
            if trace > 0:
                worst = max(worst, bound / (3 * trace))
            elif bound > 0:
                worst = math.inf
        return worst

    def _pi_sensitivity(self, factors: list, lam: Any) -> float:
        """Largest relative change of a damped block's eigenvalue per relative change of pi.

        Eq. 24's block `(A + pi r I) (x) (S + r/pi I)`, `r = sqrt(lambda)`, has eigenvalues
        `(a + pi r)(s + r/pi)`; with `alpha = a / (pi r)`, `sigma = s / (r/pi)` their
        logarithmic derivative in `log pi` is `(sigma - alpha) / ((1 + alpha)(1 + sigma))`,
        at most 1 in size and near 0 where the damping terms dominate both factors (the
        Kronecker product is then `lambda I`, whatever pi). A relative rounding `delta` of
        pi moves the step by at most `delta` times this (first order, float64).
        """
        root = math.sqrt(float(lam))
        worst = 0.0
        for a, s in factors:
            pi = float(factored_damping_pi(self.f64(a), self.f64(s)))
            alpha = np.clip(np.linalg.eigvalsh(self.f64(a)), 0.0, None) / (pi * root)
            sigma = np.clip(np.linalg.eigvalsh(self.f64(s)), 0.0, None) * pi / root
            ratio = np.abs(np.subtract.outer(sigma, alpha)) / np.outer(1 + sigma, 1 + alpha)
            worst = max(worst, float(np.max(ratio)))
        return worst

    def _kfac_condition(self, factors: list, lam: Any) -> float:
        """Largest condition number of a damped block `A (x) S + lambda I` or its eq. 24 form."""
        worst = 1.0
        for a, s in factors:
            if DampingMethod(self.hyper["damping_method"]) is DampingMethod.EIGEN:
                block = np.kron(self.f64(a), self.f64(s)) + float(lam) * np.eye(
                    a.shape[0] * s.shape[0])
            else:
                a_d, s_d = damped_factors(a, s, lam, backend=self.bk)
                block = np.kron(self.f64(a_d), self.f64(s_d))
            worst = max(worst, _condition(block))
        return worst

    def _shampoo(self, k, ref, g, events, log) -> np.ndarray:
        bk, hyper = self.bk, self.hyper
        layers, slices = self.problem.layers, layer_slices(self.problem.layers)
        grads = [g[sl].reshape(layer.weight_shape, order="F")
                 for layer, sl in zip(layers, slices, strict=True)]
        beta2 = bk.scalar(hyper["beta2"])
        if self.left is None:
            self.left = [(gm @ gm.T * 0, gm.T @ gm * 0) for gm in grads]
        self.left = [(beta2 * lm + gm @ gm.T, beta2 * rm + gm.T @ gm)
                     for (lm, rm), gm in zip(self.left, grads, strict=True)]
        if k % int(hyper["root_every"]) == 0:
            eps = hyper["eps"]
            roots = [(self._root(lm, eps), self._root(rm, eps)) for lm, rm in self.left]
            eye = np.eye
            condition = max(
                _condition(self.f64(lm) + eps * eye(lm.shape[0]))
                + _condition(self.f64(rm) + eps * eye(rm.shape[0]))
                for lm, rm in self.left)
            self.roots = (roots, condition)
            events.append(Event.ROOT)
        assert self.roots is not None  # step 0 builds the roots
        roots, log["condition"] = self.roots
        lr = bk.scalar(hyper["lr"])
        blocks = [-lr * (rl @ gm @ rr).reshape(-1, order="F")
                  for (rl, rr), gm in zip(roots, grads, strict=True)]
        return np.concatenate(blocks)

    def _gamma(self) -> Any:
        gamma = self.hyper["gamma"]
        if gamma != "scaled":
            return self.bk.scalar(gamma)
        if not self.pairs:
            return self.bk.scalar(1)
        s, y = self.pairs[-1]
        return (s @ y) / (y @ y)

    def _lbfgs(self, k, ref, g, events, log) -> np.ndarray:
        bk = self.bk
        gamma = self._gamma()
        s_list, y_list = [s for s, _ in self.pairs], [y for _, y in self.pairs]
        if self.pairs:
            h = inverse_bfgs_matrix([self.f64(s) for s in s_list], [self.f64(y) for y in y_list],
                                    float(gamma), n=self.n)
            log["condition"] = _condition(h)
        direction = self._two_loop(g, s_list, y_list, gamma)
        return -bk.scalar(self.hyper["lr"]) * direction

    def _store_pair(self, s, y, g, after, mag_g, events, log) -> None:
        """Store `(s, y)` if `y^T s > 0`, keep the newest `memory` (PROTOCOL s10 lbfgs)."""
        ys = y @ s
        _, mag_after, _ = self.magnitudes(after)
        s64, y64 = self.f64(s), self.f64(y)
        log["pair_curvature"] = ys
        log["pair_scale"] = float(np.linalg.norm(s64) * (mag_g + mag_after)
                                  + np.abs(s64) @ np.abs(y64))
        if not ys > 0:
            events.append(Event.PAIR_REJECTED)
            return
        self.pairs.append((s, y))
        events.append(Event.PAIR_STORED)
        while len(self.pairs) > int(self.hyper["memory"]):
            self.pairs.pop(0)
            events.append(Event.PAIR_EVICTED)


def trajectory(problem: Problem, batches: Sequence[tuple[Any, Any]], method: Method | str,
               hyper: Mapping[str, Any], *, backend: Backend = FLOAT64, eps: float | None = None,
               start: np.ndarray | None = None) -> Trajectory:
    """Run the reference trajectory of PROTOCOL s10 (module docstring).

    Args:
        problem: layers, loss and reduction (its `inputs`/`targets` are not used) and
            `theta_0 = problem.params`.
        batches: K pairs `(inputs, targets)` shaped like the problem's.
        method: one of `Method`.
        hyper: every key of `HYPER_KEYS[method]` (others are ignored).
        backend: `FLOAT64` or `mp_backend(dps)`.
        eps: machine epsilon of the eq. 27 singularity test `det <= 64 eps a11 a22` (the
            port's dtype; default float64's).
        start: override `theta_0` (the harness's sensitivity runs start a rounding apart).

    Returns:
        The `Trajectory`.

    Raises:
        ValueError: a missing or invalid key of `hyper`, an unknown method, mismatched
            batches, or (from CG) a `C + lambda I` that is not positive definite.
    """
    method = Method(method)
    _check_hyper(method, hyper)
    eps = float(np.finfo(np.float64).eps) if eps is None else float(eps)
    with backend.precision():
        theta = backend.asarray(problem.params if start is None else start)
        return drive(_Runner(problem, batches, method, hyper, backend, eps, theta))


def drive(run: _Runner, *, first: int = 0) -> Trajectory:
    """Take every step of a runner from step `first` on (inside its backend's precision)."""
    start = run.bk.to_float64(run.theta)
    params, steps = [], []
    for k in range(first, len(run.batches)):
        steps.append(run.step(k))
        params.append(run.theta)
    return Trajectory(run.method, tuple(params), tuple(steps), run.bk.name, start)


class Restarts:
    """A float64 reference run's whole state before each step k = 1..K-1, to restart it from.

    A restart copies the state after step k - 1 (moving averages, stale inverses, damping,
    previous steps, L-BFGS pairs), moves `theta_k` alone and takes steps k..K-1: how an error
    a port makes in `theta_k` travels. A run started a rounding apart does not show this,
    because its state stays consistent with its parameters. Campaign seed 18's
    `gen-3x1x2-relu-identity-mse-b1-mean-k1-s57321` is an example: stale rank-1 K-FAC
    statistics divide an error off the residual's direction by `lambda`, while a shifted start
    rotates the statistics along with the residual.
    """

    def __init__(self, states: list[_Runner]) -> None:
        self._states = states

    def run(self, shift: Callable[[np.ndarray], np.ndarray]) -> list[Trajectory]:
        """Restart k = 1..K-1 from `theta_k + shift(theta_k)` (float64).

        Returns:
            Restart k's `theta_{k+1} .. theta_K`, its `start` the shifted `theta_k`.
        """
        out = []
        for k, state in enumerate(self._states, start=1):
            branch = copy.deepcopy(state)
            branch.theta = branch.theta + shift(branch.theta)
            out.append(drive(branch, first=k))
        return out


def restartable_trajectory(problem: Problem, batches: Sequence[tuple[Any, Any]],
                           method: Method | str, hyper: Mapping[str, Any], *,
                           eps: float | None = None) -> tuple[Trajectory, Restarts]:
    """The float64 reference trajectory (as `trajectory`) and its `Restarts`."""
    method = Method(method)
    _check_hyper(method, hyper)
    eps = float(np.finfo(np.float64).eps) if eps is None else float(eps)
    run = _Runner(problem, batches, method, hyper, FLOAT64, eps, FLOAT64.asarray(problem.params))
    start = run.theta
    params, steps, states = [], [], []
    for k in range(len(batches)):
        if k:
            states.append(copy.deepcopy(run))
        steps.append(run.step(k))
        params.append(run.theta)
    return (Trajectory(run.method, tuple(params), tuple(steps), run.bk.name, start),
            Restarts(states))
