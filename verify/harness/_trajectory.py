"""Checks of `optimizer_trajectory` (PROTOCOL s10): a port's optimizer, step by step.

For every problem the harness runs seven *families* -- `damped_newton`, `hessian_free`, `kfac`
with each step rule (`fixed`, `rescaled`, `momentum_qm`), `shampoo`, `lbfgs` -- for `STEPS`
steps on batches built from the problem (`trajectory_batches`: batch 0 is the problem's own,
the others are reproducible dyadic perturbations of it, the same B, exact in float32), and
compares `theta_1 .. theta_K` with the dense reference (`ngd_ref.trajectory`).

Schedules. Each family has a short list of candidate settings, built from the problem (the
damping is a power of two times the curvature's norm, every value exact in float32), and
`DRAWN` more drawn from `verify.strategies`' space of settings (seeded by the problem), so
`--fuzz` problems also meet settings no fixed list holds. Every
candidate is run twice by the reference: as given and from a start a rounding of the port's
dtype apart. A candidate is *ambiguous* -- and not used -- when the two runs' events differ,
or when a discrete decision lies within its own uncertainty of its threshold: the distance of
`rho_k` to 1/4 and 3/4, of `y^T s` to 0, of eq. 27's `det/(a11 a22)` to `64 eps` must exceed
the change between the two runs scaled up to the tolerance at that step plus the rounding of
the quantity in the port's dtype; `C + lambda I` must be positive definite beyond rounding
where the method needs it (PROTOCOL s10). Among the unambiguous candidates the one whose run
has the most distinct events (statistics update, inverse refresh, damping increase and
decrease, root refresh, pair storage, rejection and eviction, momentum fallback), then the
most events, then the smallest tolerance, is used.

Tolerances: `verify._tolerance.trajectory_tolerances`, from each step's condition number (with
eq. 27's 2 x 2 solve, `subspace_condition`, and L-BFGS's stored pairs, `pair_condition`) and
the measured growth of an error (never a fixed schedule): the divergence of the two reference
runs, and of restarts from each `theta_k` shifted alone with the run's state kept
(`ngd_ref.trajectory.Restarts`; run only for candidates usable at the twin's tolerances).
The first step whose parameters leave the tolerance -- or turn non-finite -- fails the check,
and the message names it with its events.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import weakref
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import DenseCurvature
from ngd_ref.trajectory import (
    Event,
    Restarts,
    StepLog,
    Trajectory,
    restartable_trajectory,
    trajectory,
)
from verify._report import Status
from verify._tolerance import rounding_rtol, trajectory_tolerances, unit_roundoff
from verify.harness._context import CheckContext
from verify.harness._faults import InputModified, NotClaimed, PortFault, readonly
from verify.harness._prefetch import lookup
from verify.strategies import TRAJECTORY_FAMILIES, generate_trajectory_settings

__all__ = ["FAMILIES", "STEPS", "Schedule", "check_optimizer_trajectory", "clear_schedules",
           "compute_schedule", "pair_condition", "pi_excess", "schedule", "scheduled",
           "subspace_condition", "trajectory_batches", "trajectory_reference"]

#: steps per trajectory: enough for two statistics updates, an inverse refresh between them,
#: two root refreshes, an eviction with memory 2
STEPS = 6
FAMILIES = TRAJECTORY_FAMILIES
#: settings drawn from `verify.strategies`' space appended to each family's fixed candidates
DRAWN = 2
#: the events each family can have (the candidate search stops at one that has them all)
_POSSIBLE = {"damped_newton": 2, "hessian_free": 2, "kfac_fixed": 4, "kfac_rescaled": 4,
             "kfac_momentum_qm": 5, "shampoo": 1, "lbfgs": 3}


def trajectory_batches(problem: Problem, count: int = STEPS) -> list[tuple[np.ndarray, Any]]:
    """`count` batches of the problem's B: its own, then dyadic perturbations (exact in float32).

    Batch k > 0 has inputs `round(16 (x + xi_k / 4)) / 16` (xi_k standard normal, seeded by the
    problem's name and k) and the problem's targets rolled by k examples.
    """
    out = [(problem.inputs, problem.targets)]
    for k in range(1, count):
        rng = np.random.default_rng([zlib.crc32(problem.name.encode()), k])
        noise = rng.normal(size=problem.inputs.shape) / 4
        inputs = np.round((problem.inputs + noise) * 16) / 16
        out.append((inputs, np.roll(problem.targets, k, axis=0)))
    return out


def _power_of_two(value: float) -> float:
    """The power of two nearest to `value` in log scale (1 for 0 or non-finite)."""
    if not (math.isfinite(value) and value > 0):
        return 1.0
    return float(2.0 ** round(math.log2(value)))


def _candidates(problem: Problem, family: str, ref: DenseCurvature) -> list[tuple[str, dict]]:
    """Candidate `(method, hyper)` settings of one family, most preferred first."""
    natural = Loss(problem.loss).outputs_are_natural_parameters
    rotate = zlib.crc32(problem.name.encode())

    def scale(curvature: str) -> float:
        return _power_of_two(float(np.linalg.norm(ref.matrix(curvature), 2)))

    def rotated(items: list) -> list:
        offset = rotate % len(items)
        return items[offset:] + items[:offset]

    adapt = [(1.0, 1 / 32, 1, 2.0), (1.0, 1 / 4, 2, 1.5), (1.5, 1 / 32, 1, 1.5)]
    out: list[tuple[str, dict]] = []
    if family == "damped_newton":
        for curvature, (lr, mult, every, omega) in itertools.product(
                rotated(["hessian", "ggn", "fisher", "empirical_fisher"]), adapt):
            out.append(("damped_newton", dict(
                curvature=curvature, lr=lr, damping=scale(curvature) * mult, adapt_damping=True,
                damping_every=every, damping_factor=omega)))
    elif family == "hessian_free":
        curvatures = rotated(["ggn", "fisher"]) if natural else ["fisher"]
        for curvature, (lr, mult, every, omega), (iters, warm) in itertools.product(
                curvatures, adapt[:2], [(2, 0.5), (3, 0.875)]):
            out.append(("hessian_free", dict(
                curvature=curvature, lr=lr, damping=scale(curvature) * mult, cg_iters=iters,
                cg_warm_start=warm, adapt_damping=True, damping_every=every,
                damping_factor=omega)))
    elif family.startswith("kfac_"):
        rule = family.removeprefix("kfac_")
        kinds = rotated(["fisher", "empirical", "ggn"] if natural else ["fisher", "empirical"])
        curvature = {"fisher": "fisher", "empirical": "empirical_fisher", "ggn": "ggn"}
        variants = [("eigen", 0.5, True, 1 / 32, 1, 2.0), ("factored", 0.875, False, 1 / 4, 2, 1.5),
                    ("factored", 0.5, True, 1 / 32, 1, 1.5)]
        # PROTOCOL s12: hyper["approx"] is present on convolutional problems (both kinds drawn)
        approx = ([{"approx": a} for a in rotated(["expand", "reduce"])]
                  if not problem.dense_only else [{}])
        for number, (kind, (method, ema, bias, mult, every, omega)) in enumerate(
                itertools.product(kinds, variants)):
            out.append(("kfac", dict(
                kind=kind, ema=ema, ema_bias_correction=bias, stats_every=2, inverse_every=3,
                damping=scale(curvature[kind]) * mult, damping_method=method, step_rule=rule,
                lr=0.5, momentum=0.5, adapt_damping=True, damping_every=every,
                damping_factor=omega, **approx[number % len(approx)])))
    elif family == "shampoo":
        g2 = _power_of_two(float(ref.gradient @ ref.gradient))
        for lr, mult, beta2 in [(0.25, 1 / 16, 0.5), (0.0625, 1.0, 0.875), (0.25, 1.0, 0.875)]:
            out.append(("shampoo", dict(lr=lr, eps=g2 * mult, beta2=beta2, root_every=2)))
    elif family == "lbfgs":
        gamma = 1.0 / scale("ggn" if natural else "fisher")
        for lr, memory, g0 in [(1.0, 2, "scaled"), (1.0, 2, gamma), (0.5, 1, 4 * gamma),
                               (1.0, 3, "scaled"), (1.0, 2, 16 * gamma)]:
            out.append(("lbfgs", dict(lr=lr, memory=memory, gamma=g0)))
    else:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    return out + generate_trajectory_settings(problem, family, DRAWN, seed=0)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A chosen setting with its reference run and tolerances.

    Attributes:
        family: e.g. `kfac_momentum_qm`.
        method: the PROTOCOL s10 method name.
        hyper: its `hyper` dict.
        batches: the K batches.
        reference: the float64 reference `Trajectory`.
        tolerances: absolute tolerance on `theta_1 .. theta_K`.
    """

    family: str
    method: str
    hyper: dict
    batches: list
    reference: Trajectory
    tolerances: list[float]


def _finite(run: Trajectory) -> bool:
    return bool(np.all(np.isfinite(run.float64())))


def _ambiguity(nominal: StepLog, shifted: StepLog, factor: float, rtol: float,
               eps: float) -> str:
    """Why the decisions of one step are not resolvable (empty when they are)."""
    if nominal.undefined:
        return f"undefined: {nominal.undefined}"
    if nominal.events != shifted.events:
        return "the events change between two starts a rounding apart"
    if not 3 * rtol * nominal.trace_cancellation < 1:
        return ("eq. 24's pi is not determined: a K-FAC factor's trace is within its "
                f"rounding (cancellation {nominal.trace_cancellation:.1e})")
    if nominal.min_eigenvalue is not None and not nominal.min_eigenvalue > rtol:
        return "C + lambda I is not positive definite beyond rounding"
    if nominal.model is not None:
        model = float(nominal.model)
        if model == 0 or nominal.rho is None:
            return "the model predicts no change (M_k = 0)"
        rho = float(nominal.rho)
        spread = abs(rho - float(shifted.rho)) * factor + rtol * (
            2 * nominal.loss_magnitude / abs(model) + abs(rho))
        if not (math.isfinite(rho) and min(abs(rho - 0.25), abs(rho - 0.75)) > spread):
            return f"rho {rho:.6g} is within {spread:.2e} of 1/4 or 3/4"
    if nominal.pair_curvature is not None:
        ys = float(nominal.pair_curvature)
        spread = abs(ys - float(shifted.pair_curvature)) * factor + rtol * nominal.pair_scale
        if not abs(ys) > spread:
            return f"y^T s = {ys:.3e} is within {spread:.2e} of 0"
    if nominal.det_ratio is not None:
        ratio = float(nominal.det_ratio)
        spread = abs(ratio - float(shifted.det_ratio)) * factor + 4 * rtol
        if not abs(ratio - 64 * eps) > spread:
            return f"det/(a11 a22) = {ratio:.3e} is within {spread:.2e} of 64 eps"
    return ""


def subspace_condition(step: StepLog, d: np.ndarray, d_prev: np.ndarray) -> float:
    """How much eq. 27's 2 x 2 solve amplifies the rounding of step k (1 for other steps).

    Grosse ch.4 eq. 27 (PROTOCOL s10 `momentum_qm`) minimizes the model over `V = [Delta_k,
    d_{k-1}]`: `d_k = V c`, `W c = -V^T g` with `W = V^T (C + lambda I) V`. In the basis
    scaled to unit `(C + lambda I)`-norm, `W` is `[[1, rho], [rho, 1]]` with `rho^2 = 1 -
    det/(a11 a22)` (`StepLog.det_ratio`), and a perturbation of `W` and `V^T g` of relative size
    `e` (the rounding of `a_ij`, and of `Delta_k` through `a_ij` and `g^T Delta_k`) moves `d_k`
    by `V W^-1 (dW c + db)`, of norm up to `e ||V|| ||c|| / sigma_min(V)`: the condition
    number of the scaled basis, `sigma_max / sigma_min = (1 + |rho|) / sqrt(det/(a11 a22))`
    (Higham 2002 Thm 7.2 on the 2 x 2 system, mapped back through `V`), times the
    cancellation of the combination, `(||alpha Delta_k|| + ||beta d_{k-1}||) / ||d_k||`
    (`alpha Delta_k = d_k - beta d_{k-1}`). Nearly parallel `Delta_k` and `d_{k-1}` (a det
    ratio of 5e-4 on campaign seed 6's `gen-2x1x2x1-sigmoid-tanh-identity-mse-b4-sum-k0-s64562`)
    amplify a correct float32 port's error about 90-fold; the eq. 27 fallback (eq. 26) and the
    other methods have factor 1.

    Args:
        step: the reference's log of step k.
        d: the reference's step `d_k`.
        d_prev: `d_{k-1}`.
    """
    if step.det_ratio is None or Event.MOMENTUM_FALLBACK in step.events:
        return 1.0
    ratio = min(float(step.det_ratio), 1.0)  # <= 1 (Cauchy-Schwarz) but for rounding
    if not ratio > 0:  # eq. 27 is taken only beyond 64 eps: unreachable but for NaN
        return math.inf
    basis = (1 + math.sqrt(1 - ratio)) / math.sqrt(ratio)
    beta = float(step.beta)
    norm = max(float(np.linalg.norm(d)), np.finfo(np.float64).tiny)
    combination = (float(np.linalg.norm(d - beta * d_prev))
                   + abs(beta) * float(np.linalg.norm(d_prev))) / norm
    return basis * max(combination, 1.0)


def pair_condition(steps: tuple[StepLog, ...], k: int, memory: int) -> float:
    """How much the stored L-BFGS pairs amplify the rounding of step k (1 without pairs).

    Step k's direction is the two-loop recursion (Nocedal & Wright 2006, Alg. 7.4) over the
    newest `memory` pairs stored before it. A pair's `y_j = g(theta_{j+1}) - g(theta_j)` is a
    difference of gradients, so it is known only to the rounding of `||s_j|| (||MAG g(theta_j)||
    + ||MAG g(theta_{j+1})||) + |s_j|^T |y_j|` (`StepLog.pair_scale`), not of `y_j^T s_j`: the
    pair, `rho_j = 1 / y_j^T s_j` and a scaled `gamma` are known to a relative
    `rtol pair_scale / |y_j^T s_j|` (the units of the inputs, as `solve_tolerance`'s
    `MAG(C) / ||C||`), and so is the direction. The factor is the largest such ratio over the
    pairs in memory (>= 1). Campaign seed 6's `gen-3x4x2-relu-softmax-nll_probs-b1-sum-k0-s56164`
    stored a pair with `y^T s = 3.8e-8` and scale `6.4e-6`.

    Args:
        steps: the reference's step logs.
        k: the step.
        memory: the L-BFGS memory `m`.
    """
    stored = [s for s in steps[:k] if Event.PAIR_STORED in s.events]
    newest = stored[len(stored) - memory:] if memory else []
    ratios = [s.pair_scale / abs(float(s.pair_curvature)) for s in newest]
    return max([1.0, *ratios])


def pi_excess(step: StepLog) -> float:
    """What eq. 24's pi adds to the condition of a factored K-FAC step (0 otherwise).

    `pi = sqrt((tr A / dim A) / (tr S / dim S))` is known to a port to a relative
    `delta <= (2 + 3 x) rtol / 2`, `x = StepLog.trace_cancellation` (`tr A` to `2 rtol`,
    `tr S` to `3 x rtol`), and moves the step by at most `delta` times
    `StepLog.pi_sensitivity` (the damped blocks' eigenvalues' logarithmic derivative in
    `log pi`, <= 1 and near 0 where the damping dominates): the excess
    `pi_sensitivity (1 + 1.5 x)` is added to the step's condition. Campaign seed 8's
    `gen-conv-1x4x2-c1k13s12p11relu-softmax_cross_entropy-b1-mean-k1-s26279` (`approx =
    reduce`, an empirical `S` whose summed output gradients `sum_t (p - e_y)_t` are exactly
    zero) has a `tr S` of rounding: pi is undetermined there (`_ambiguity`).
    """
    if not step.pi_sensitivity > 0:  # eigen damping, or pi moves nothing (inf * 0)
        return 0.0
    return step.pi_sensitivity * (1 + 1.5 * step.trace_cancellation)


@dataclasses.dataclass(frozen=True)
class _Runs:
    """The float64 reference runs of one setting for a port of `dtype`.

    Attributes:
        nominal: the reference trajectory.
        shifted: its twin started `start` (a rounding of `dtype` from `theta_0`).
        restarts: the nominal run's `Restarts` (its state before each step).
        shift: `theta -> ` a rounding of `dtype`, every entry moved (the twin's and the
            restarts' shift).
        start: the twin's `theta_0`.
    """

    nominal: Trajectory
    shifted: Trajectory
    restarts: Restarts
    shift: Callable[[np.ndarray], np.ndarray]
    start: np.ndarray


def _runs(problem: Problem, batches: list, method: str, hyper: dict, dtype: str) -> _Runs:
    """Run the reference and its twin (`ValueError` where the reference cannot run them)."""
    u = unit_roundoff(dtype)
    eps = float(np.finfo(np.dtype(dtype)).eps)
    theta0 = problem.params
    signs = np.where(np.random.default_rng(zlib.crc32(problem.name.encode())).random(
        theta0.shape) < 0.5, -1.0, 1.0)

    def shift(theta: np.ndarray) -> np.ndarray:
        return 2 * u * np.maximum(np.abs(theta), np.mean(np.abs(theta))) * signs

    start = theta0 + shift(theta0)
    try:
        with np.errstate(all="ignore"):
            nominal, restarts = restartable_trajectory(problem, batches, method, hyper, eps=eps)
            shifted = trajectory(problem, batches, method, hyper, eps=eps, start=start)
    except (np.linalg.LinAlgError, FloatingPointError) as exc:
        raise ValueError(str(exc)) from exc
    if not (_finite(nominal) and _finite(shifted)):
        raise ValueError("the reference trajectory is not finite")
    return _Runs(nominal, shifted, restarts, shift, start)


def _restart_growth(runs: _Runs) -> dict[tuple[int, int], float]:
    """`R_{i,k} = ||theta'_k - theta_k|| / ||theta'_i - theta_i||` of restart i (i < k)."""
    try:
        with np.errstate(all="ignore"):
            restarts = runs.restarts.run(runs.shift)
    except (np.linalg.LinAlgError, FloatingPointError):
        return {(i, len(runs.nominal.steps)): math.inf for i in range(1, len(runs.nominal.steps))}
    path = np.vstack([runs.nominal.start, runs.nominal.float64()])
    growth = {}
    for i, run in enumerate(restarts, start=1):
        moved = max(float(np.linalg.norm(run.start - path[i])), np.finfo(np.float64).tiny)
        apart = np.linalg.norm(run.float64() - path[i + 1:], axis=1) / moved
        growth.update({(i, k): float(a) if np.isfinite(a) else math.inf
                       for k, a in enumerate(apart, start=i + 1)})
    return growth


def _tolerances(problem: Problem, runs: _Runs, hyper: dict, dtype: str,
                restart_growth: dict[tuple[int, int], float] | None) -> list[float]:
    nominal = runs.nominal
    path = np.vstack([nominal.start, nominal.float64()])
    steps = np.diff(path, axis=0)
    previous = np.vstack([np.zeros_like(nominal.start), steps[:-1]])
    return trajectory_tolerances(
        dtype, length=max(problem.n_params, problem.batch_size * problem.output_dim),
        depth=len(problem.layers) + 2, step_norms=np.linalg.norm(steps, axis=1),
        param_norms=np.linalg.norm(path[1:], axis=1),
        conditions=[(s.condition * s.gradient_cancellation + pi_excess(s))
                    * subspace_condition(s, d, p)
                    * pair_condition(nominal.steps, k, int(hyper.get("memory", 0)))
                    for k, (s, d, p) in enumerate(zip(nominal.steps, steps, previous,
                                                      strict=True))],
        divergences=np.linalg.norm(path - np.vstack([runs.start, runs.shifted.float64()]),
                                   axis=1),
        restart_growth=restart_growth)


def trajectory_reference(problem: Problem, batches: list, method: str, hyper: dict,
                         dtype: str) -> tuple[Trajectory, Trajectory, list[float]]:
    """The reference run, its twin started `2u` apart, and the tolerances of a `dtype` port.

    The tolerances' growth is the twin's and the restarts' (`ngd_ref.trajectory.Restarts`:
    each `theta_k` shifted alone by the twin's rounding, the state kept).

    Raises:
        ValueError: where the reference cannot run the setting (e.g. CG on a matrix that is
            not positive definite), the trajectory is not finite, or a tolerance is not
            (nothing could fail against it).
    """
    runs = _runs(problem, batches, method, hyper, dtype)
    tolerances = _tolerances(problem, runs, hyper, dtype, _restart_growth(runs))
    if not all(math.isfinite(t) for t in tolerances):
        raise ValueError(_unbounded(runs, tolerances))
    return runs.nominal, runs.shifted, tolerances


def _unbounded(runs: _Runs, tolerances: list[float]) -> str:
    """The first step whose tolerance is not finite, as a reason (empty when all are)."""
    for k, tol in enumerate(tolerances):
        if not math.isfinite(tol):  # an unbounded condition or growth
            return (f"step {k}: the tolerance is not finite (condition "
                    f"{runs.nominal.steps[k].condition:.1e}, or a restart that cannot run)")
    return ""


def _unusable(problem: Problem, runs: _Runs, tolerances: list[float], dtype: str) -> str:
    """Why a setting's decisions are not resolvable at these tolerances (empty when usable)."""
    nominal, shifted = runs.nominal, runs.shifted
    unbounded = _unbounded(runs, tolerances)
    if unbounded:
        return unbounded
    rtol = rounding_rtol(dtype, length=max(problem.n_params, problem.batch_size
                                           * problem.output_dim), depth=len(problem.layers) + 2)
    divergences = np.linalg.norm(nominal.float64() - shifted.float64(), axis=1)
    tiny = np.finfo(np.float64).tiny
    factors = [0.0] + [t / max(d, tiny) for t, d in zip(tolerances, divergences, strict=True)]
    eps = float(np.finfo(np.dtype(dtype)).eps)
    for k, (a, b) in enumerate(zip(nominal.steps, shifted.steps, strict=True)):
        why = _ambiguity(a, b, max(1.0, factors[k], factors[k + 1]), rtol, eps)
        if why:
            return f"step {k}: {why}"
    return ""


def _screen(problem: Problem, method: str, hyper: dict, batches: list,
            dtype: str) -> tuple[_Runs, list[float]] | str:
    """The reference runs and the twin's tolerances, or why the setting is not usable."""
    try:
        runs = _runs(problem, batches, method, hyper, dtype)
    except ValueError as exc:
        return f"the reference cannot run it ({exc})"
    # every exp and log must stay inside the port's range (a softmax probability underflows to
    # 0, exp(z) overflows): the losses' summed magnitudes c^-1 sum_b (|L_b| + ||z_b||_1) and
    # twice the largest pre-activation bound their arguments; -log(tiny) is the smaller end
    c = 1.0 / problem.batch_size if problem.reduction == "mean" else 1.0
    exponent_range = -math.log(float(np.finfo(np.dtype(dtype)).tiny))
    if any(max(s.loss_magnitude / c, s.exponent_range) > exponent_range
           for s in runs.nominal.steps):
        return f"the exponentials leave the range of {dtype}"
    tolerances = _tolerances(problem, runs, hyper, dtype, None)
    return _unusable(problem, runs, tolerances, dtype) or (runs, tolerances)


def _finish(problem: Problem, runs: _Runs, hyper: dict, dtype: str) -> list[float] | str:
    """The tolerances with the restarts' growth, or why the setting is not usable with them."""
    tolerances = _tolerances(problem, runs, hyper, dtype, _restart_growth(runs))
    return _unusable(problem, runs, tolerances, dtype) or tolerances


def _evaluate(problem: Problem, method: str, hyper: dict, batches: list,
              dtype: str) -> tuple[Trajectory, list[float]] | str:
    """The reference run and its final tolerances, or why the setting is not usable."""
    screened = _screen(problem, method, hyper, batches, dtype)
    if isinstance(screened, str):
        return screened
    final = _finish(problem, screened[0], hyper, dtype)
    return final if isinstance(final, str) else (screened[0].nominal, final)


_NOT_INFORMATIVE = "a tolerance exceeds the distance travelled (not informative)"


def _score(run: Trajectory, tolerances: list[float]) -> tuple:
    """Informative (required), then distinct events, then events, then the smaller tolerance.

    A schedule is informative when every `tol_k < ||theta_k - theta_0||`: a port that does not
    move at all must fail it.
    """
    counts = [run.count(e) for e in Event if e is not Event.DAMPING_KEPT]
    path = run.float64()
    travelled = np.linalg.norm(path - run.start, axis=1)
    informative = bool(np.all(np.asarray(tolerances) < travelled))
    relative = max(t / max(float(np.linalg.norm(p)), np.finfo(np.float64).tiny)
                   for t, p in zip(tolerances, path, strict=True))
    return (informative, sum(c > 0 for c in counts), sum(min(c, 2) for c in counts), -relative)


#: the schedules computed so far, per problem object (a frozen `Problem`; freed with it)
_SCHEDULES: weakref.WeakKeyDictionary[Problem, dict[tuple[str, str], Schedule | str]] = (
    weakref.WeakKeyDictionary())


def schedule(problem: Problem, family: str, dtype: str) -> Schedule | str:
    """`compute_schedule`'s result, computed once per (problem, family, dtype).

    From a running prefetch where there is one (`verify.harness._prefetch`: a worker process
    computes the schedules of a run's problems while the parent checks other capabilities;
    the result is the same).
    """
    known = _SCHEDULES.setdefault(problem, {})
    if (family, dtype) not in known:
        found = lookup(problem, family, dtype)
        known[family, dtype] = (found if found is not None
                                else compute_schedule(problem, family, dtype))
    return known[family, dtype]


def scheduled(problem: Problem, dtype: str) -> bool:
    """Whether every family's schedule of `problem` for `dtype` is already known."""
    return all((family, dtype) in _SCHEDULES.get(problem, {}) for family in FAMILIES)


def clear_schedules() -> None:
    """Forget the schedules computed so far (the benchmark times them afresh)."""
    _SCHEDULES.clear()


def compute_schedule(problem: Problem, family: str, dtype: str) -> Schedule | str:
    """The schedule of one family on one problem for a port of `dtype` (module docstring).

    Candidates are screened at the twin's tolerances (`_screen`), up to the first with every
    event of the family, and the survivors are finished with the restarts (`_finish`) best
    screened score first: the restarts only raise tolerances, so a finished score never
    exceeds its screened one and the search stops at the first screened score no better than
    the best finished. When no finished candidate has every event, screening goes on.

    Returns:
        The `Schedule`, or a sentence saying why no candidate setting is unambiguous.
    """
    batches = trajectory_batches(problem)
    pending = enumerate(_candidates(problem, family, DenseCurvature(problem)))
    best: tuple | None = None
    reasons: list[str] = []
    while True:
        screened, exhausted = [], True
        for order, (method, hyper) in pending:
            outcome = _screen(problem, method, hyper, batches, dtype)
            if isinstance(outcome, str):
                reasons.append(outcome)
                continue
            score = _score(outcome[0].nominal, outcome[1])
            if not score[0]:
                reasons.append(_NOT_INFORMATIVE)
                continue
            screened.append(((score, -order), method, hyper, outcome[0]))
            if score[1] == _POSSIBLE[family]:  # every event of the family: good enough
                exhausted = False
                break
        for (score, _), method, hyper, runs in sorted(screened, key=lambda c: c[0],
                                                      reverse=True):
            if best is not None and not score > best[0]:
                break
            final = _finish(problem, runs, hyper, dtype)
            if isinstance(final, str):
                reasons.append(final)
                continue
            finished = _score(runs.nominal, final)
            if not finished[0]:
                reasons.append(_NOT_INFORMATIVE)
            elif best is None or finished > best[0]:
                best = (finished, method, hyper, runs.nominal, final)
        if exhausted or (best is not None and best[0][1] == _POSSIBLE[family]):
            break
    if best is None:
        return (f"no unambiguous, informative setting among {len(reasons)} candidates "
                f"(first: {reasons[0]})")
    _, method, hyper, run, tolerances = best
    return Schedule(family, method, hyper, batches, run, tolerances)


def _compare(ctx: CheckContext, check: str, sched: Schedule, value: Any) -> None:
    """Record the first step leaving the tolerance (or the worst step when none does)."""
    expected = sched.reference.float64()
    try:
        actual = np.asarray([np.asarray(v, dtype=np.float64) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        ctx.record(check, Status.FAIL, f"expected {len(expected)} parameter vectors: {exc}")
        return
    if actual.shape != expected.shape:
        ctx.record(check, Status.FAIL, f"wrong shape: got {actual.shape}, expected "
                   f"{expected.shape} (theta_1 .. theta_K)")
        return
    label = f"{sched.method} {_describe(sched.hyper)}"
    worst = (-1.0, 0)
    for k, (a, e, tol) in enumerate(zip(actual, expected, sched.tolerances, strict=True)):
        step = sched.reference.steps[k]
        if not np.all(np.isfinite(a)):
            ctx.record(check, Status.FAIL, f"{label}: theta_{k + 1} is not finite where the "
                       f"reference's is, at {step.describe()}")
            return
        error = float(np.linalg.norm(a - e))
        if not error <= tol:
            before = f" (after {sched.reference.steps[k - 1].describe()})" if k else ""
            ctx.record(check, Status.FAIL, f"{label}: theta_{k + 1} leaves the tolerance first, "
                       f"error {error:.2e} > tol {tol:.2e} at {step.describe()}{before}",
                       error, tol)
            return
        worst = max(worst, (error / tol if tol > 0 else 0.0, k))
    k = worst[1]
    error = float(np.linalg.norm(actual[k] - expected[k]))
    events = ", ".join(f"{e.value} x{sched.reference.count(e)}" for e in Event
                       if sched.reference.count(e))
    ctx.record(check, Status.PASS, f"{label}: {len(expected)} steps within tolerance (closest "
               f"theta_{k + 1}: error {error:.2e} <= tol {sched.tolerances[k]:.2e}); events: "
               f"{events}", error, sched.tolerances[k])


def _describe(hyper: dict) -> str:
    return "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in hyper.items()) + ")"


def check_optimizer_trajectory(ctx: CheckContext) -> None:
    """Every family's trajectory against the dense reference (module docstring)."""
    for family in FAMILIES:
        check = f"optimizer_trajectory_{family}"
        sched = schedule(ctx.problem, family, ctx.dtype)
        if isinstance(sched, str):
            ctx.record(check, Status.SKIP, f"not run: {sched}")
            continue
        batches = [(readonly(x), readonly(y, np.asarray(y).dtype)) for x, y in sched.batches]
        ctx.begin(check)
        try:
            value = ctx.port("optimizer_trajectory", ctx.problem, batches, sched.method,
                             dict(sched.hyper))
        except NotClaimed as exc:
            ctx.record(check, Status.SKIP, f"port declines: {exc}")
            continue
        except InputModified as exc:
            ctx.record(check, Status.FAIL, str(exc))
            continue
        except PortFault as exc:
            ctx.record(check, Status.ERROR, str(exc))
            continue
        _compare(ctx, check, sched, value)
