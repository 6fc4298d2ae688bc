"""Identities over optimizer trajectories (PROTOCOL s10; issue 15 item 3), with negative controls.

Each compares two reference trajectories (`ngd_ref.trajectory`, float64) that the mathematics
says coincide, over `STEPS` steps on `verify.harness.trajectory_batches(problem)`. The
tolerance of step k is the sum of both runs' `trajectory_tolerances` at float64 (each run's
rounding, carried by its own measured sensitivity; `verify.harness.trajectory_reference`).

* `trajectory_kfac_one_example_is_block_natural_gradient`: with one example, `ema = 0`,
  `stats_every = inverse_every = 1`, `eigen` damping, `fixed` step and no momentum, K-FAC's step
  is `-lr (blockdiag(F) + lambda I)^{-1} g` (Grosse s5: `A (x) S` is the exact diagonal block
  of F for B = 1, PROTOCOL s4), i.e. `damped_newton` on the block-diagonal Fisher -- checked
  against that recurrence written out. Negative control: with `ema = 7/8` (stale averages)
  the trajectory leaves it.
* `trajectory_hf_full_cg_is_newton`: `hessian_free` with `cg_iters = n` and no warm start is
  `damped_newton` (CG is exact after n steps on an n x n SPD system, Grosse s4). Negative
  control: with `cg_iters = 1` it is not.
* `trajectory_momentum_qm_first_step_is_rescaled`: eq. 27 at k = 0 is eq. 26 (PROTOCOL s10:
  `beta = 0` without a previous step). Negative control: the second steps differ.
* `trajectory_bias_corrected_constant_statistics`: on a one-layer linear mse network with the
  same batch every step the K-FAC statistics are constant (`A` is the inputs' second moment,
  `S = c B I`), so their bias-corrected average is those statistics for any eta (eq. 25 with
  `sum_j eta^{m-j} A / sum_j eta^{m-j} = A`): the trajectory with `ema = 7/8` and bias
  correction equals the one with `ema = 0`. Negative control: without the correction the
  averages are `(1 - eta^m) A` and the trajectory differs.

Every negative control requires a difference beyond `MARGIN` tolerances (`separated`).
"""

from __future__ import annotations

import math

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import DenseCurvature, exact_diagonal_blocks
from ngd_ref.trajectory import Trajectory
from verify._report import CheckResult, Status
from verify._tolerance import Comparison, compare, trajectory_tolerances
from verify.harness import trajectory_batches, trajectory_reference
from verify.identities._common import problem_rng, reference
from verify.identities._registry import detectable, identity, result, separated
from verify.identities.damping import quadratic_twin
from verify.identities.invariance import default_reparameterization

__all__ = ["STEPS"]

SOURCE_KFAC = "Grosse ch.4 s5, eq. 25; PROTOCOL s4, s10 (seed 002)"
SOURCE_HF = "Grosse ch.4 s4; PROTOCOL s10 (seed 002)"
SOURCE_QM = "Grosse ch.4 eqs. (26)-(27); PROTOCOL s10 (seed 002)"
#: steps of each identity's trajectories
STEPS = 3
#: the problems the (comparatively costly) trajectory identities run on
MAX_PARAMS = 64


def _small(problem: Problem) -> bool:
    return problem.n_params <= MAX_PARAMS


def _damping(problem: Problem, curvature: str) -> float:
    """A power of two near `||C||_2 / 4`: well-conditioned damped systems."""
    norm = float(np.linalg.norm(reference(problem).matrix(curvature), 2))
    return float(2.0 ** round(np.log2(max(norm, 1e-3) / 4)))


#: a reference run and its float64 tolerances, or why the reference cannot run it
Reference = tuple[Trajectory, list[float]] | str


def _reference(problem: Problem, batches: list, method: str, hyper: dict) -> Reference:
    """`trajectory_reference` in float64, or the reason it refuses the setting."""
    try:
        run, _, tolerances = trajectory_reference(problem, batches, method, hyper, "float64")
    except ValueError as exc:
        return str(exc)
    return run, tolerances


def _compare_runs(first: Reference, second: Reference) -> list[Comparison] | str:
    """Compare two reference runs step by step: one Comparison per step.

    Step k's tolerance is the sum of both runs' tolerances at that step, relative to the
    second run's `||theta_{k+1}||`.

    Returns:
        The per-step comparisons (`theta_1 .. theta_K`), or the reason the reference cannot
        run them.
    """
    if isinstance(first, str) or isinstance(second, str):
        return first if isinstance(first, str) else str(second)
    (a, tol_a), (b, tol_b) = first, second
    out = []
    for k, (x, y) in enumerate(zip(a.float64(), b.float64(), strict=True)):
        scale = max(float(np.linalg.norm(y)), np.finfo(np.float64).tiny)
        out.append(compare(x, y, tolerance=(tol_a[k] + tol_b[k]) / scale))
    return out


def _worst(comparisons: list[Comparison]) -> Comparison:
    """The step furthest from agreement, in units of its own tolerance."""
    return max(comparisons, key=lambda c: c.error / c.tolerance if c.tolerance > 0 else math.inf)


def _skip(name: str, problem: Problem, why: str) -> CheckResult:
    return CheckResult(name, "identity", problem.name, Status.SKIP, message=why)


def _fisher_kfac(problem: Problem, ema: float, lr: float, damping: float) -> dict:
    return dict(kind="fisher", ema=ema, ema_bias_correction=False, stats_every=1,
                inverse_every=1, damping=damping, damping_method="eigen", step_rule="fixed",
                lr=lr, momentum=0.0, adapt_damping=False, damping_every=1, damping_factor=1.5)


def _block_natural_gradient(problem: Problem, batches: list, lr: float,
                            damping: float) -> list[np.ndarray]:
    """`theta <- theta - lr (blockdiag(F) + lambda I)^{-1} g`, written out."""
    theta, out = problem.params, []
    for x, y in batches:
        moved = problem.replace(params=theta, inputs=x, targets=y)
        blocks = exact_diagonal_blocks(moved, "fisher")
        g = DenseCurvature(moved).gradient
        steps, start = [], 0
        for block in blocks:
            stop = start + block.shape[0]
            steps.append(np.linalg.solve(block + damping * np.eye(block.shape[0]), g[start:stop]))
            start = stop
        theta = theta - lr * np.concatenate(steps)
        out.append(theta)
    return out


@identity("trajectory_kfac_one_example_is_block_natural_gradient", source=SOURCE_KFAC,
          statement="K-FAC with B = 1, ema = 0, every statistic and inverse fresh = block-diagonal "
                    "damped natural gradient", applies=lambda p: (_small(p) and p.batch_size == 1
                                      # B = 1 is exact for T = 1 layers only (s12)
                                      and not p.has_weight_sharing))
def kfac_block_natural_gradient(problem: Problem) -> list[CheckResult]:
    name = "trajectory_kfac_one_example_is_block_natural_gradient"
    batches = trajectory_batches(problem, STEPS)
    damping, lr = _damping(problem, "fisher"), 0.5
    fresh = _reference(problem, batches, "kfac", _fisher_kfac(problem, 0.0, lr, damping))
    if isinstance(fresh, str):
        return [_skip(name, problem, fresh)]
    run, tolerances = fresh
    direct = _block_natural_gradient(problem, batches, lr, damping)
    final = run.float64()[-1]
    comparison = compare(final, direct[-1], tolerance=2 * tolerances[-1] / max(
        float(np.linalg.norm(direct[-1])), np.finfo(np.float64).tiny))
    out = [result(name, problem, comparison, f"theta_{STEPS} of K-FAC = block natural gradient",
                  SOURCE_KFAC)]
    stale = _compare_runs(_reference(problem, batches, "kfac",
                                     _fisher_kfac(problem, 0.875, lr, damping)), fresh)
    if not isinstance(stale, str):
        out.append(separated("trajectory_kfac_stale_average_differs", problem, _worst(stale),
                             "ema = 7/8 leaves the block natural gradient trajectory",
                             SOURCE_KFAC))
    return out


def _hf(curvature: str, iters: int, damping: float) -> dict:
    return dict(curvature=curvature, lr=1.0, damping=damping, cg_iters=iters, cg_warm_start=0.0,
                adapt_damping=False, damping_every=1, damping_factor=1.5)


def _newton(curvature: str, damping: float) -> dict:
    return dict(curvature=curvature, lr=1.0, damping=damping, adapt_damping=False,
                damping_every=1, damping_factor=1.5)


@identity("trajectory_hf_full_cg_is_newton", source=SOURCE_HF,
          statement="hessian_free with cg_iters = n is damped_newton", applies=_small)
def hf_full_cg_is_newton(problem: Problem) -> list[CheckResult]:
    name = "trajectory_hf_full_cg_is_newton"
    curvature = "fisher" if not Loss(problem.loss).outputs_are_natural_parameters else "ggn"
    damping = _damping(problem, curvature)
    batches = trajectory_batches(problem, STEPS)
    newton = _reference(problem, batches, "damped_newton", _newton(curvature, damping))
    full = _compare_runs(_reference(problem, batches, "hessian_free",
                                    _hf(curvature, problem.n_params, damping)), newton)
    if isinstance(full, str):
        return [_skip(name, problem, full)]
    out = [result(name, problem, _worst(full),
                  f"HF with n CG iterations = damped Newton ({curvature})",
                  SOURCE_HF)]
    one = _compare_runs(_reference(problem, batches, "hessian_free", _hf(curvature, 1, damping)),
                        newton)
    # the predicted gap is theta_1's, so it is weighed against step 0's tolerance
    if not isinstance(one, str) and detectable(_one_cg_step_gap(problem, batches, curvature,
                                                                damping), one[0].tolerance):
        out.append(separated("trajectory_hf_one_cg_step_is_not_newton", problem, _worst(one),
                             "HF with one CG iteration is not damped Newton", SOURCE_HF))
    return out


def _one_cg_step_gap(problem: Problem, batches: list, curvature: str, damping: float) -> float:
    """The predicted first-step gap `||p_N - p_1|| / ||theta_1||` of the negative control.

    One CG step from 0 is `p_1 = -(g^T g / g^T A g) g` with `A = C + lambda I`; it equals the
    Newton step `p_N = -A^{-1} g` exactly when `g` is an eigenvector of `C` (one example with
    one output: `C = f j j^T` and `g` along `j`), where no trajectory can tell them apart.
    Computed from the first batch's dense matrices, not from the trajectories compared.
    """
    inputs, targets = batches[0]
    ref = DenseCurvature(problem.replace(inputs=inputs, targets=targets))
    a = ref.matrix(curvature) + damping * np.eye(problem.n_params)
    g = ref.gradient
    curv = float(g @ a @ g)
    if not curv > 0:
        return 0.0
    newton = -np.linalg.solve(a, g)
    gap = newton + (float(g @ g) / curv) * g
    return float(np.linalg.norm(gap)) / max(float(np.linalg.norm(problem.params + newton)),
                                            np.finfo(np.float64).tiny)


def _momentum_detectable(problem: Problem, qm: np.ndarray, rescaled: np.ndarray, beta: float,
                         tolerance: float) -> bool:
    """Whether eq. 27's second step differs detectably from eq. 26's (the control's hypothesis).

    `theta_2^qm - theta_2^rs = (alpha_qm - alpha_rs) Delta_1 + beta d_0` with the same
    `theta_1` (the first steps agree), so the gap is at least `|beta| ||P d_0||`, `P` the
    projection off `Delta_1` (rescaled's second step `theta_2^rs - theta_1` is along it).
    `beta != 0` alone is not enough: a generated problem whose outputs overflowed had
    `beta d_0` below the trajectories' tolerances (100 x tol = 5e5 against a gap of 9e-2).
    """
    d0 = np.asarray(qm[0], dtype=np.float64) - np.asarray(problem.params, dtype=np.float64)
    u = np.asarray(rescaled[1], dtype=np.float64) - np.asarray(rescaled[0], dtype=np.float64)
    norm = float(np.linalg.norm(u))
    off = d0 - (float(u @ d0) / norm**2) * u if norm > 0 else d0
    scale = max(float(np.linalg.norm(rescaled[1])), np.finfo(np.float64).tiny)
    return detectable(abs(beta) * float(np.linalg.norm(off)) / scale, tolerance)


def _qm(rule: str, damping: float) -> dict:
    return dict(kind="fisher", ema=0.5, ema_bias_correction=True, stats_every=1, inverse_every=1,
                damping=damping, damping_method="factored", step_rule=rule, lr=1.0, momentum=0.0,
                adapt_damping=False, damping_every=1, damping_factor=1.5)


@identity("trajectory_momentum_qm_first_step_is_rescaled", source=SOURCE_QM,
          statement="eq. 27's first step is eq. 26's", applies=_small)
def momentum_qm_first_step(problem: Problem) -> list[CheckResult]:
    name = "trajectory_momentum_qm_first_step_is_rescaled"
    damping = _damping(problem, "fisher")
    batches = trajectory_batches(problem, 2)
    momentum = _reference(problem, batches, "kfac", _qm("momentum_qm", damping))
    rescaled = _reference(problem, batches, "kfac", _qm("rescaled", damping))
    if isinstance(momentum, str) or isinstance(rescaled, str):
        return [_skip(name, problem, momentum if isinstance(momentum, str) else str(rescaled))]
    (qm, tol_qm), (rs, tol_rs) = momentum, rescaled
    a, b = qm.float64(), rs.float64()
    scale = [max(float(np.linalg.norm(x)), np.finfo(np.float64).tiny) for x in b]
    first = compare(a[0], b[0], tolerance=(tol_qm[0] + tol_rs[0]) / scale[0])
    out = [result(name, problem, first, "theta_1 of momentum_qm = theta_1 of rescaled", SOURCE_QM)]
    if qm.steps[1].beta is not None and _momentum_detectable(problem, a, b, float(
            qm.steps[1].beta), (tol_qm[1] + tol_rs[1]) / scale[1]):
        second = compare(a[1], b[1], tolerance=(tol_qm[1] + tol_rs[1]) / scale[1])
        out.append(separated("trajectory_momentum_qm_second_step_differs", problem, second,
                             "momentum_qm's second step uses d_0 (beta != 0)", SOURCE_QM))
    return out


def _constant_statistics(ema: float, bias: bool, damping: float) -> dict:
    return dict(kind="ggn", ema=ema, ema_bias_correction=bias, stats_every=1, inverse_every=1,
                damping=damping, damping_method="eigen", step_rule="fixed", lr=0.5, momentum=0.0,
                adapt_damping=False, damping_every=1, damping_factor=1.5)


@identity("trajectory_bias_corrected_constant_statistics", source=SOURCE_KFAC,
          statement="the bias-corrected average of constant statistics is those statistics",
          applies=lambda p: _small(p) and not p.layers[-1].is_convolution)  # dense twin
def bias_corrected_constant_statistics(problem: Problem) -> list[CheckResult]:
    name = "trajectory_bias_corrected_constant_statistics"
    twin = quadratic_twin(problem)
    batches = [(twin.inputs, twin.targets)] * STEPS
    damping = _damping(twin, "ggn")
    fresh = _reference(twin, batches, "kfac", _constant_statistics(0.0, True, damping))
    same = _compare_runs(_reference(twin, batches, "kfac",
                                    _constant_statistics(0.875, True, damping)), fresh)
    if isinstance(same, str):
        return [_skip(name, problem, same)]
    out = [result(name, problem, _worst(same), "ema 7/8 with bias correction = ema 0 on constant "
                  "statistics (linear mse twin)", SOURCE_KFAC)]
    raw = _compare_runs(_reference(twin, batches, "kfac",
                                   _constant_statistics(0.875, False, damping)), fresh)
    if not isinstance(raw, str):
        out.append(separated("trajectory_uncorrected_average_differs", problem, _worst(raw),
                             "without bias correction the averages are (1 - eta^m) A",
                             SOURCE_KFAC))
    return out


# -- affine invariance of a whole trajectory (Grosse ch.4 s2.3) -------------------------------
SOURCE_AFFINE = "Grosse ch.4 s2.3, eqs. (7)-(9) (seed 002); PROTOCOL s10 (seed 002)"
#: step size of the written-out Newton and gradient-descent trajectories
AFFINE_LR = 0.25


def _reparameterized_run(problem: Problem, batches: list, r: np.ndarray, rule: str,
                         start: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """A trajectory run in the coordinates `gamma` of `theta = R gamma`, mapped back to theta.

    Step k evaluates the dense reference at `theta_k = R gamma_k` on batch k; in gamma the
    gradient is `R^T g_k` and the Hessian `R^T H_k R` (Grosse eq. (9)), so `newton` takes
    `gamma_{k+1} = gamma_k - lr (R^T H_k R)^{-1} R^T g_k` (undamped) and `gd` takes
    `gamma_{k+1} = gamma_k - lr R^T g_k` (`lr = AFFINE_LR`). With `R = I` these are the
    methods in theta itself.

    Returns:
        `(theta_0 .. theta_K, conditions)`: the path `R gamma_k` and each step's condition
        (that of `R^T H_k R` for Newton, `kappa(R)^2` for gradient descent) times its
        gradient's cancellation `MAG(g)/||g||`.

    Raises:
        ValueError: where `R^T H_k R` is singular or the path is not finite.
    """
    gamma = np.linalg.solve(r, start)
    path, conditions = [r @ gamma], []
    for inputs, targets in batches:
        ref = DenseCurvature(problem.replace(params=r @ gamma, inputs=inputs, targets=targets))
        g = ref.gradient
        mag_g = float(np.linalg.norm(ref.c * np.einsum("bcn,bc->n", np.abs(ref.jacobians),
                                                       np.abs(ref.loss_grads))))
        cancellation = max(1.0, mag_g / max(float(np.linalg.norm(g)), np.finfo(float).tiny))
        if rule == "newton":
            system = r.T @ ref.hessian @ r
            condition = float(np.linalg.cond(system))
            if not np.isfinite(condition) or condition * np.finfo(float).eps >= 1:
                raise ValueError(f"the Hessian is singular to rounding (condition {condition:.2e})")
            step = np.linalg.solve(system, r.T @ g)
        else:
            condition, step = float(np.linalg.cond(r)) ** 2, r.T @ g
        gamma = gamma - AFFINE_LR * step
        path.append(r @ gamma)
        conditions.append(condition * cancellation)
    path_array = np.asarray(path)
    if not np.all(np.isfinite(path_array)):
        raise ValueError("the trajectory is not finite")
    return path_array, conditions


def _affine_comparisons(problem: Problem, batches: list, r: np.ndarray,
                        rule: str) -> list[Comparison] | str:
    """`R gamma_k` against `theta_k`, k = 1..K, each with its measured trajectory tolerance.

    The tolerance is `trajectory_tolerances` in float64 (as for the s10 reference) with the
    gamma run's conditions, its growth measured by a twin started `2u` apart, counted twice
    (both runs round).
    """
    n = problem.n_params
    u = float(np.finfo(np.float64).eps) / 2
    signs = np.where(problem_rng(problem, "affine-trajectory").random(n) < 0.5, -1.0, 1.0)
    theta0 = problem.params
    shifted = theta0 + 2 * u * np.maximum(np.abs(theta0), np.mean(np.abs(theta0))) * signs
    try:
        with np.errstate(all="ignore"):  # a diverging run is caught by the finiteness test
            plain, _ = _reparameterized_run(problem, batches, np.eye(n), rule, theta0)
            mapped, conditions = _reparameterized_run(problem, batches, r, rule, theta0)
            twin, _ = _reparameterized_run(problem, batches, r, rule, shifted)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return str(exc)
    tolerances = trajectory_tolerances(
        "float64", length=max(n, problem.batch_size * problem.output_dim),
        depth=len(problem.layers) + 2,
        step_norms=np.linalg.norm(np.diff(mapped, axis=0), axis=1),
        param_norms=np.linalg.norm(mapped[1:], axis=1), conditions=conditions,
        divergences=np.linalg.norm(mapped - twin, axis=1))
    out = []
    for k in range(1, len(mapped)):
        scale = max(float(np.linalg.norm(plain[k])), np.finfo(np.float64).tiny)
        out.append(compare(mapped[k], plain[k], tolerance=2 * tolerances[k - 1] / scale))
    return out


def _nonsingular_hessian(problem: Problem) -> bool:
    """Small, and the Hessian at `theta_0` is invertible beyond rounding.

    Undamped Newton is then defined; a singular H leaves the step's null-space part to the
    solver, a choice of metric that is not invariant.
    """
    return _small(problem) and float(np.linalg.cond(reference(problem).hessian)) * float(
        np.finfo(np.float64).eps) < 1


@identity("trajectory_newton_affine_invariant", source=SOURCE_AFFINE,
          statement="an undamped Newton trajectory run in theta = R gamma maps by R onto the "
                    "one in theta; gradient descent's does not", applies=_nonsingular_hessian)
def newton_trajectory_affine_invariant(problem: Problem) -> list[CheckResult]:
    """Undamped Newton is affine invariant along a whole trajectory (Grosse s2.3).

    In `gamma` (`theta = R gamma`, Grosse eq. (7)) the gradient is `R^T g` and the Hessian
    `R^T H R` (eq. (9)), so the Newton step `-(R^T H R)^{-1} R^T g` maps back to `-H^{-1} g`
    at every step: `R gamma_k = theta_k` for all k, on changing batches too. Negative control:
    gradient descent's step maps to `-R R^T g` (eq. (8)), so the trajectories part (R from
    `invariance.default_reparameterization`, not orthogonal). Not a PROTOCOL s10 run: s10
    requires `damping > 0`, and damping breaks the invariance (`damped_steps_not_invariant`);
    both trajectories are written out on the dense reference's `H_k` and `g_k`.
    """
    name = "trajectory_newton_affine_invariant"
    r, _ = default_reparameterization(problem)
    batches = trajectory_batches(problem, STEPS)
    newton = _affine_comparisons(problem, batches, r, "newton")
    if isinstance(newton, str):
        return [_skip(name, problem, newton)]
    out = [result(name, problem, _worst(newton), f"R gamma_k = theta_k for undamped Newton "
                  f"(lr {AFFINE_LR:g}, {STEPS} steps, kappa(R) = {np.linalg.cond(r):.3g})",
                  SOURCE_AFFINE)]
    descent = _affine_comparisons(problem, batches, r, "gd")
    if not isinstance(descent, str):
        out.append(separated("trajectory_gradient_descent_not_affine_invariant", problem,
                             _worst(descent), "gradient descent in gamma is preconditioned by "
                             "R R^T in theta", SOURCE_AFFINE))
    return out
