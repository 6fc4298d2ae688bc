"""Campaign trajectory false alarms (`campaign --first-seed 6`, `3`, `8`, `16` and `18`).

Each case is a generated problem (stored by its `verify.strategies.build` arguments) where a
correct float32 port left a tolerance that under-modelled a step's conditioning; here the
correct port passes that family and a mutant of it still fails on the same problem.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ngd_ref.trajectory import Event, StepLog
from verify._report import Status
from verify._tolerance import rounding_rtol
from verify.harness import load_adapter, run_checks
from verify.harness._trajectory import (
    _evaluate,
    _restart_growth,
    _runs,
    _tolerances,
    pair_condition,
    pi_excess,
    schedule,
    subspace_condition,
    trajectory_batches,
    trajectory_reference,
)
from verify.mutants import NumpyPort, NumpyPort32, load_corpus
from verify.strategies import build, generate

MUTANTS = load_corpus()

#: (family, build arguments, a mutant of the family, campaign seed)
CAMPAIGN_CASES = [
    # seed 3: HF's truncated CG (4 iterations) on a Poisson net, error 7.2e-3 > 1.7e-3 while
    # the step's condition was kappa(C + lambda I) alone (now CG's iterate condition too)
    ("hessian_free", ("poisson", (1, 1, 1, 1), ("softplus", "softplus"), 3, "mean", -1, 21771),
     "hf-cg-warm-start-ignored-float32", 3),
]
#: seed 6's eq. 27 alarm (float32, error 3.74e-5 > tol 3.59e-5 at step 2), pinned to the
#: setting the family chose then (the family's choice moves with the model: eq. 24's pi
#: rounding, `pi_excess`, made other settings unambiguous since)
EQ27_6 = ("mse", (2, 1, 2, 1), ("sigmoid", "tanh"), 4, "sum", 0, 64562)
EQ27_6_SETTING = {"kind": "empirical", "ema": 0.875, "ema_bias_correction": False,
                  "stats_every": 2, "inverse_every": 3, "damping": 8.0,
                  "damping_method": "factored", "step_rule": "momentum_qm", "lr": 0.5,
                  "momentum": 0.5, "adapt_damping": True, "damping_every": 2,
                  "damping_factor": 1.5}
#: the seed-6 L-BFGS alarm: a saturated softmax (`nll_probs`, B = 1) and a pair whose
#: `y^T s = 3.8e-8` is a difference of gradients 100 times larger
LBFGS6 = ("nll_probs", (3, 4, 2), ("relu",), 1, "sum", 0, 56164)


def _family_results(adapter_class: type, problem, family: str, seed: int = 6) -> list:
    report = run_checks(load_adapter(adapter_class), [problem], seed=seed,
                        capabilities=["optimizer_trajectory"])
    return [r for r in report.results if r.check == f"optimizer_trajectory_{family}"]


@pytest.mark.parametrize(("family", "args", "mutant", "seed"), CAMPAIGN_CASES,
                         ids=[f"{f}-{build(*a).name}" for f, a, _, _ in CAMPAIGN_CASES])
def test_correct_float32_port_passes_and_the_mutant_fails(family, args, mutant, seed):
    problem = build(*args)
    results = _family_results(NumpyPort32, problem, family, seed)
    assert [r.status for r in results] == [Status.PASS], [r.message for r in results]
    bad = _family_results(MUTANTS[mutant].adapter_class, problem, family, seed)
    assert [r.status for r in bad] == [Status.FAIL], [r.message for r in bad]


def _worst_ratio(adapter_class: type, problem, method: str, hyper: dict, dtype: str) -> float:
    """Largest `||theta_k - theta_k^ref|| / tol_k` of a port on one fixed setting."""
    batches = trajectory_batches(problem)
    nominal, _, tolerances = trajectory_reference(problem, batches, method, hyper, dtype)
    path = adapter_class().optimizer_trajectory(problem, batches, method, dict(hyper))
    errors = np.linalg.norm(np.asarray(path, dtype=np.float64) - nominal.float64(), axis=1)
    return float(np.max(errors / np.asarray(tolerances)))


def test_eq27_seed6_setting_passes_the_correct_float32_port_and_fails_the_mutant():
    # the float32 mutant's error there is 1.2 times the tolerance before pi's rounding was
    # modelled (`pi_excess`: tr S_0 cancels 38-fold through tanh' = 1 - a^2 and the chain, and
    # pi moves this step by 0.18-0.24 of its rounding), 0.23 of it after: float32 cannot
    # separate them on this setting; float64 can
    problem = build(*EQ27_6)
    assert _worst_ratio(NumpyPort32, problem, "kfac", EQ27_6_SETTING, "float32") <= 1.0
    mutant = MUTANTS["eq27-previous-direction"].adapter_class
    assert _worst_ratio(mutant, problem, "kfac", EQ27_6_SETTING, "float64") > 1.0
    for port in (NumpyPort32, NumpyPort):
        results = _family_results(port, problem, "kfac_momentum_qm")
        assert [r.status for r in results] == [Status.PASS], [r.message for r in results]


def test_eq27_steps_of_the_seed6_problem_are_nearly_parallel():
    # the cause: det/(a11 a22) ~ 5e-4 and 1e-3 at steps 1 and 2 (Delta_k nearly parallel to
    # d_{k-1}), so eq. 27's solve amplifies the port's rounding ~90-fold
    problem = build(*EQ27_6)
    nominal, _, _ = trajectory_reference(problem, trajectory_batches(problem), "kfac",
                                         EQ27_6_SETTING, "float32")
    ratios = [float(s.det_ratio) for s in nominal.steps[1:3]]
    assert all(r < 2e-3 for r in ratios), ratios


def test_subspace_condition_is_the_scaled_basis_condition():
    d_prev = np.array([1.0, 0.0])
    d = np.array([2.0, 0.0])  # alpha Delta = d - beta d_prev = d_prev: no cancellation
    step = StepLog(k=1, det_ratio=1e-4, beta=1.0)
    assert subspace_condition(step, d, d_prev) == pytest.approx((1 + math.sqrt(1 - 1e-4)) / 1e-2)
    orthogonal = StepLog(k=1, det_ratio=1.0, beta=1.0)
    assert subspace_condition(orthogonal, d, d_prev) == 1.0
    # a ratio rounded above 1 is an orthogonal pair
    assert subspace_condition(StepLog(k=1, det_ratio=1 + 2e-16, beta=1.0), d, d_prev) == 1.0
    fallback = StepLog(k=1, det_ratio=1e-9, beta=0.0, events=(Event.MOMENTUM_FALLBACK,))
    assert subspace_condition(fallback, d, d_prev) == 1.0
    assert subspace_condition(StepLog(k=0), d, d_prev) == 1.0
    # a cancelling combination (d_k much shorter than its two terms) is amplified further
    cancelling = subspace_condition(StepLog(k=1, det_ratio=1.0, beta=1.0), 0.01 * d_prev, d_prev)
    assert cancelling == pytest.approx((0.99 + 1.0) / 0.01)


def test_lbfgs_on_the_seed6_problem_is_not_checked_in_float32_and_checked_in_float64():
    # float32: every candidate's pair decision y^T s > 0 is within its uncertainty (the
    # gradient of a saturated softmax known to u (p + e_y), amplified by the pairs), so the
    # family is a skip naming why, not the former false alarm (error 2.2e-3 > tol 9.8e-5)
    problem = build(*LBFGS6)
    results = _family_results(NumpyPort32, problem, "lbfgs")
    assert [r.status for r in results] == [Status.SKIP], [r.message for r in results]
    assert "y^T s" in results[0].message
    # float64 resolves them: the correct port passes, the mutant storing pairs newest first
    # fails
    results = _family_results(NumpyPort, problem, "lbfgs")
    assert [r.status for r in results] == [Status.PASS], [r.message for r in results]
    bad = _family_results(MUTANTS["lbfgs-pairs-newest-first"].adapter_class, problem, "lbfgs")
    assert [r.status for r in bad] == [Status.FAIL], [r.message for r in bad]


def test_pair_condition_is_the_largest_pair_scale_ratio_in_memory():
    stored = (Event.PAIR_STORED,)
    steps = (StepLog(k=0, events=stored, pair_curvature=1.0, pair_scale=300.0),
             StepLog(k=1, events=stored, pair_curvature=2.0, pair_scale=4.0),
             StepLog(k=2, events=(Event.PAIR_REJECTED,), pair_curvature=-1.0, pair_scale=1e9),
             StepLog(k=3))
    assert pair_condition(steps, 0, 2) == 1.0  # no pair yet
    assert pair_condition(steps, 1, 2) == 300.0
    assert pair_condition(steps, 3, 2) == 300.0  # the rejected pair is not in memory
    assert pair_condition(steps, 3, 1) == 2.0  # the first pair was evicted
    assert pair_condition(steps, 3, 0) == 1.0


def _seed8_conv_problem():
    """Campaign seed 8's reduce-approx convolution under a softmax (`generate(25, 8)`)."""
    return next(p for p in generate(25, 8) if p.name.endswith("s26279"))


def test_factored_kfac_with_a_trace_at_rounding_is_ambiguous_and_another_setting_runs():
    # seed 8 (float64): the chosen momentum_qm setting had approx = reduce and an empirical
    # S_0 = (sum_t g_t)(sum_t g_t)^T with sum_t (p - e_y)_t = 0 exactly; the reference's tr S_0
    # was a 2e-17 residue and the port's 0, so eq. 24's pi was rounding (the port raised
    # LinAlgError). Such a setting is now ambiguous; the family runs another and passes.
    problem = _seed8_conv_problem()
    assert pi_excess(StepLog(k=0, trace_cancellation=100.0, pi_sensitivity=0.5)) == 75.5
    assert pi_excess(StepLog(k=0)) == 0.0
    results = _family_results(NumpyPort, problem, "kfac_momentum_qm", seed=8)
    assert [r.status for r in results] == [Status.PASS], [r.message for r in results]
    sched = schedule(problem, "kfac_momentum_qm", "float64")
    rtol = rounding_rtol("float64", length=max(problem.n_params, problem.batch_size
                                               * problem.output_dim),
                         depth=len(problem.layers) + 2)
    assert all(3 * rtol * s.trace_cancellation < 1 for s in sched.reference.steps)  # pi known
    bad = _family_results(MUTANTS["eq27-previous-direction"].adapter_class, problem,
                          "kfac_momentum_qm", seed=8)
    assert [r.status for r in bad] == [Status.FAIL], [r.message for r in bad]


def test_a_fitting_mse_net_sizes_its_gradient_by_the_residual_magnitude():
    # seed 18 (float32): one mse example being fitted (|z - y| = 0.03 against |z| + |y| ~ 2)
    # under a dead ReLU; the trajectory's MAG g used |dL/dz| = |z - y|, not the loss's
    # grad_magnitude |z| + |y|, and a correct float32 kfac_fixed run left its tolerance 17-fold
    problem = next(p for p in generate(25, 18) if p.name.endswith("s57321"))
    results = _family_results(NumpyPort32, problem, "kfac_fixed", seed=18)
    assert [r.status for r in results] == [Status.PASS], [r.message for r in results]
    bad = _family_results(MUTANTS["kfac-inverse-every-step-float32"].adapter_class, problem,
                          "kfac_fixed", seed=18)
    assert [r.status for r in bad] == [Status.FAIL], [r.message for r in bad]


#: seed 16's damped-Newton alarm (float32): the correct port's theta_5 was not finite
NEWTON16 = ("nll_probs", (2, 2), (), 3, "mean", 0, 12339)
NEWTON16_SETTING = {"curvature": "hessian", "lr": 1.0, "damping": 0.015625, "adapt_damping": True,
                    "damping_every": 1, "damping_factor": 2.0}


def test_nll_probs_whose_hessian_leaves_float32_is_not_run_in_float32():
    # seed 16: the setting drove z_y to ~1e-20, where nll_probs' H_L = 1 / z_y^2 has a z_y^2
    # below float32's tiny; the range test bounded the exponentials only (loss `log_range`)
    problem = build(*NEWTON16)
    batches = trajectory_batches(problem)
    assert "leave the range of float32" in _evaluate(problem, "damped_newton", NEWTON16_SETTING,
                                                     batches, "float32")
    assert not isinstance(_evaluate(problem, "damped_newton", NEWTON16_SETTING, batches,
                                    "float64"), str)
    results = _family_results(NumpyPort32, problem, "damped_newton", seed=16)
    assert [r.status for r in results] == [Status.PASS], [r.message for r in results]
    bad = _family_results(MUTANTS["lm-direction-swapped-float32"].adapter_class, problem,
                          "damped_newton", seed=16)
    assert [r.status for r in bad] == [Status.FAIL], [r.message for r in bad]


#: seed 18's kfac_rescaled alarm (float32, error 1.46e-2 > tol 7.88e-3 at theta_5)
RESCALED18_SETTING = {"kind": "empirical", "ema": 0.5, "ema_bias_correction": True,
                      "stats_every": 2, "inverse_every": 3, "damping": 0.125,
                      "damping_method": "eigen", "step_rule": "rescaled", "lr": 0.5,
                      "momentum": 0.5, "adapt_damping": True, "damping_every": 1,
                      "damping_factor": 2.0}


def test_an_error_in_theta_alone_grows_where_the_shifted_start_does_not():
    # seed 18: dead ReLUs leave the output bias b fitting one mse target; the stale rank-1
    # statistics S ~ r r^T divide an error of b off the residual r by lambda, while the twin
    # started a rounding apart rotates S along with r and does not grow. The restarts (theta_k
    # alone shifted, the state kept) measure it.
    problem = next(p for p in generate(25, 18) if p.name.endswith("s57321"))
    batches = trajectory_batches(problem)
    runs = _runs(problem, batches, "kfac", RESCALED18_SETTING, "float32")
    growth = _restart_growth(runs)
    divergences = np.linalg.norm(np.vstack([runs.nominal.start, runs.nominal.float64()])
                                 - np.vstack([runs.start, runs.shifted.float64()]), axis=1)
    assert divergences[6] / divergences[2] < 2 < 1e3 < growth[(2, 6)]
    twin_only = _tolerances(problem, runs, RESCALED18_SETTING, "float32", None)
    tolerances = _tolerances(problem, runs, RESCALED18_SETTING, "float32", growth)
    correct = np.asarray(NumpyPort32().optimizer_trajectory(problem, batches, "kfac",
                                                            dict(RESCALED18_SETTING)))
    errors = np.linalg.norm(correct - runs.nominal.float64(), axis=1)
    assert errors[4] > twin_only[4] and np.all(errors <= np.asarray(tolerances))
    stray = np.asarray(MUTANTS["eq26-stray-half-float32"].adapter_class().optimizer_trajectory(
        problem, batches, "kfac", dict(RESCALED18_SETTING)))
    assert np.any(np.linalg.norm(stray - runs.nominal.float64(), axis=1)
                  > np.asarray(tolerances))
    # so large a growth leaves no informative float32 setting of the family here
    assert _family_results(NumpyPort32, problem, "kfac_rescaled", seed=18)[0].status \
        is not Status.FAIL
