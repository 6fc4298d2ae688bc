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

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref.dense import DenseCurvature, exact_diagonal_blocks
from verify._report import CheckResult, Status
from verify._tolerance import Comparison, compare
from verify.harness import trajectory_batches, trajectory_reference
from verify.identities._common import reference
from verify.identities._registry import detectable, identity, result, separated
from verify.identities.damping import quadratic_twin

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


def _compare_runs(problem: Problem, batches: list, first: tuple[str, dict],
                  second: tuple[str, dict]) -> Comparison | str:
    """Compare two trajectories step by step; the Comparison of the worst step (in tolerances).

    Returns:
        The worst step's comparison, or the reason the reference cannot run them.
    """
    try:
        a, _, tol_a = trajectory_reference(problem, batches, *first, "float64")
        b, _, tol_b = trajectory_reference(problem, batches, *second, "float64")
    except ValueError as exc:
        return str(exc)
    worst = None
    for k, (x, y) in enumerate(zip(a.float64(), b.float64(), strict=True)):
        scale = max(float(np.linalg.norm(y)), np.finfo(np.float64).tiny)
        comparison = compare(x, y, tolerance=(tol_a[k] + tol_b[k]) / scale)
        if worst is None or comparison.error / comparison.tolerance > (
                worst.error / worst.tolerance):
            worst = comparison
    assert worst is not None  # the batches are STEPS >= 1 steps
    return worst


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
    try:
        run, _, tolerances = trajectory_reference(problem, batches, "kfac",
                                                  _fisher_kfac(problem, 0.0, lr, damping),
                                                  "float64")
    except ValueError as exc:
        return [_skip(name, problem, str(exc))]
    direct = _block_natural_gradient(problem, batches, lr, damping)
    final = run.float64()[-1]
    comparison = compare(final, direct[-1], tolerance=2 * tolerances[-1] / max(
        float(np.linalg.norm(direct[-1])), np.finfo(np.float64).tiny))
    out = [result(name, problem, comparison, f"theta_{STEPS} of K-FAC = block natural gradient",
                  SOURCE_KFAC)]
    stale = _compare_runs(problem, batches, ("kfac", _fisher_kfac(problem, 0.875, lr, damping)),
                          ("kfac", _fisher_kfac(problem, 0.0, lr, damping)))
    if not isinstance(stale, str):
        out.append(separated("trajectory_kfac_stale_average_differs", problem, stale,
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
    full = _compare_runs(problem, batches, ("hessian_free", _hf(curvature, problem.n_params,
                                                                damping)),
                         ("damped_newton", _newton(curvature, damping)))
    if isinstance(full, str):
        return [_skip(name, problem, full)]
    out = [result(name, problem, full, f"HF with n CG iterations = damped Newton ({curvature})",
                  SOURCE_HF)]
    one = _compare_runs(problem, batches, ("hessian_free", _hf(curvature, 1, damping)),
                        ("damped_newton", _newton(curvature, damping)))
    if not isinstance(one, str) and detectable(_one_cg_step_gap(problem, batches, curvature,
                                                                damping), one.tolerance):
        out.append(separated("trajectory_hf_one_cg_step_is_not_newton", problem, one,
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
    try:
        qm, _, tol_qm = trajectory_reference(problem, batches, "kfac", _qm("momentum_qm", damping),
                                             "float64")
        rs, _, tol_rs = trajectory_reference(problem, batches, "kfac", _qm("rescaled", damping),
                                             "float64")
    except ValueError as exc:
        return [_skip(name, problem, str(exc))]
    a, b = qm.float64(), rs.float64()
    scale = [max(float(np.linalg.norm(x)), np.finfo(np.float64).tiny) for x in b]
    first = compare(a[0], b[0], tolerance=(tol_qm[0] + tol_rs[0]) / scale[0])
    out = [result(name, problem, first, "theta_1 of momentum_qm = theta_1 of rescaled", SOURCE_QM)]
    if qm.steps[1].beta is not None and float(qm.steps[1].beta) != 0:
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
    same = _compare_runs(twin, batches, ("kfac", _constant_statistics(0.875, True, damping)),
                         ("kfac", _constant_statistics(0.0, True, damping)))
    if isinstance(same, str):
        return [_skip(name, problem, same)]
    out = [result(name, problem, same, "ema 7/8 with bias correction = ema 0 on constant "
                  "statistics (linear mse twin)", SOURCE_KFAC)]
    raw = _compare_runs(twin, batches, ("kfac", _constant_statistics(0.875, False, damping)),
                        ("kfac", _constant_statistics(0.0, True, damping)))
    if not isinstance(raw, str):
        out.append(separated("trajectory_uncorrected_average_differs", problem, raw,
                             "without bias correction the averages are (1 - eta^m) A",
                             SOURCE_KFAC))
    return out
