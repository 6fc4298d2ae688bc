"""Optimizer trajectories (PROTOCOL s10): the dense reference, the harness check, the ports."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ngd_ref import Layer, Problem, zoo
from ngd_ref.dense import mp_backend
from ngd_ref.trajectory import Event, trajectory
from verify._report import Status
from verify._tolerance import trajectory_tolerances
from verify.harness import load_adapter, run_checks
from verify.harness._trajectory import FAMILIES, schedule, trajectory_batches
from verify.mutants import NumpyPort, NumpyPort32

TINY = zoo.get("mlp-3x4x3-tanh-mse-b1")
ADAPT = dict(adapt_damping=True, damping_every=1, damping_factor=1.5)
SETTINGS = {
    "damped_newton": dict(curvature="hessian", lr=1.0, damping=0.5, **ADAPT),
    "hessian_free": dict(curvature="fisher", lr=1.0, damping=0.5, cg_iters=3,
                         cg_warm_start=0.5, **ADAPT),
    "kfac": dict(kind="empirical", ema=0.5, ema_bias_correction=True, stats_every=2,
                 inverse_every=3, damping=0.5, damping_method="eigen", step_rule="momentum_qm",
                 lr=0.1, momentum=0.5, **ADAPT),
    "shampoo": dict(lr=0.25, eps=0.125, beta2=0.5, root_every=2),
    "lbfgs": dict(lr=0.5, memory=2, gamma="scaled"),
}


def _batches(problem: Problem, count: int) -> list:
    return trajectory_batches(problem, count)


# -- the reference ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_mpmath_certifies_the_float64_reference(method):
    batches = _batches(TINY, 3)
    fast = trajectory(TINY, batches, method, SETTINGS[method])
    exact = trajectory(TINY, batches, method, SETTINGS[method], backend=mp_backend(30))
    assert [s.events for s in fast.steps] == [s.events for s in exact.steps]
    scale = np.max(np.abs(exact.float64()))
    assert np.max(np.abs(fast.float64() - exact.float64())) <= 1e3 * np.finfo(float).eps * scale


def test_kfac_schedule_of_statistics_and_inverses():
    run = trajectory(TINY, _batches(TINY, 7), "kfac", SETTINGS["kfac"])
    stats = [s.k for s in run.steps if Event.STATISTICS in s.events]
    inverses = [s.k for s in run.steps if Event.INVERSE in s.events]
    assert stats == [0, 2, 4, 6] and inverses == [0, 3, 6]
    assert [s.k for s in run.steps if Event.MOMENTUM_FALLBACK in s.events][:1] == [0]


def test_shampoo_roots_and_lbfgs_memory():
    roots = trajectory(TINY, _batches(TINY, 5), "shampoo", SETTINGS["shampoo"])
    assert [s.k for s in roots.steps if Event.ROOT in s.events] == [0, 2, 4]
    pairs = trajectory(TINY, _batches(TINY, 4), "lbfgs", SETTINGS["lbfgs"])
    stored = pairs.count(Event.PAIR_STORED)
    assert stored - pairs.count(Event.PAIR_EVICTED) == min(stored, 2)


def test_lbfgs_memory_zero_is_gradient_descent():
    hyper = dict(lr=0.25, memory=0, gamma=2.0)
    run = trajectory(TINY, _batches(TINY, 3), "lbfgs", hyper)
    gd = trajectory(TINY, _batches(TINY, 3), "shampoo", dict(lr=1.0, eps=1.0, beta2=0.0,
                                                                 root_every=1))
    assert run.count(Event.PAIR_STORED) == run.count(Event.PAIR_EVICTED)
    theta, batches = TINY.params, _batches(TINY, 3)
    from ngd_ref.dense import DenseCurvature

    for k, (x, y) in enumerate(batches):
        theta = theta - 0.5 * DenseCurvature(TINY.replace(inputs=x, targets=y), params=theta
                                             ).gradient
        np.testing.assert_allclose(run.float64()[k], theta, rtol=1e-13, atol=1e-15)
    assert gd.float64().shape == run.float64().shape


def test_momentum_qm_singular_fallback_when_steps_are_parallel():
    # one dense layer, one output, one example: every gradient is a multiple of [x; 1] and the
    # K-FAC factors are the same every step, so Delta_k is parallel to d_{k-1}.
    problem = Problem("line", (Layer(1, 1, "identity"),), "mse", np.array([0.5, 0.25]),
                      np.array([[1.0]]), np.array([[2.0]]))
    hyper = dict(SETTINGS["kfac"], kind="ggn", adapt_damping=False, inverse_every=1)
    run = trajectory(problem, [(problem.inputs, problem.targets)] * 3, "kfac", hyper)
    assert all(Event.MOMENTUM_FALLBACK in s.events for s in run.steps)
    assert all(s.det_ratio is not None and abs(float(s.det_ratio)) <= 64 * 2.0**-52
               for s in run.steps[1:])


def test_missing_hyper_key_names_it():
    with pytest.raises(ValueError, match="cg_iters"):
        trajectory(TINY, _batches(TINY, 1), "hessian_free", dict(curvature="ggn", lr=1.0,
                                                                  damping=1.0, **ADAPT))


def _same(value: float) -> object:
    """`pytest.approx` relative only (its default absolute 1e-12 would pass any tolerance)."""
    return pytest.approx(value, rel=1e-12, abs=0)


def test_trajectory_tolerances_follow_the_measured_growth():
    flat = trajectory_tolerances("float64", length=4, depth=3, step_norms=[1.0, 1.0],
                                 param_norms=[0.0, 0.0], conditions=[1.0, 1.0],
                                 divergences=[1.0, 1.0, 1.0])
    grown = trajectory_tolerances("float64", length=4, depth=3, step_norms=[1.0, 1.0],
                                  param_norms=[0.0, 0.0], conditions=[1.0, 1.0],
                                  divergences=[1.0, 1.0, 100.0])
    assert flat[1] == _same(2 * flat[0]) and grown[1] == _same(101 * grown[0])
    f32 = trajectory_tolerances("float32", length=4, depth=3, step_norms=[1.0, 1.0],
                                param_norms=[0.0, 0.0], conditions=[1.0, 1.0],
                                divergences=[1.0, 1.0, 1.0])
    assert f32[1] / flat[1] == _same(2.0**29)


def test_trajectory_tolerances_take_the_restarts_growth_where_larger():
    def tolerances(restart_growth):
        return trajectory_tolerances("float64", length=4, depth=3, step_norms=[1.0] * 3,
                                     param_norms=[0.0] * 3, conditions=[1.0] * 3,
                                     divergences=[1.0, 1.0, 2.0, 2.0],
                                     restart_growth=restart_growth)

    twin = tolerances(None)  # e_j = e; theta_1's error grows 2-fold to theta_2 (a_2 / a_1)
    assert twin == [_same(twin[0]), _same(3 * twin[0]), _same(4 * twin[0])]
    assert tolerances({(1, 2): 50.0})[1] == _same(51 * twin[0])  # restart 1 grows more
    assert tolerances({(1, 2): 0.5})[1] == _same(twin[1])  # never below the twin's
    assert tolerances({(1, 3): 10.0})[2] == _same(12 * twin[0])  # 10 e + e + e
    assert tolerances({(1, 2): float("nan")})[1] == float("inf")  # unknown growth: unbounded


# -- the harness check ------------------------------------------------------------------------
QUICK = zoo.problems(quick=True)


def _run(adapter, problems=QUICK[:1]):
    report = run_checks(load_adapter(adapter), problems, capabilities=["optimizer_trajectory"])
    return [r for r in report.results if r.capability == "optimizer_trajectory"]


@pytest.mark.parametrize("port", [NumpyPort, NumpyPort32], ids=["float64", "float32"])
def test_correct_ports_pass(port):
    results = _run(port)
    assert len(results) == len(FAMILIES)
    assert all(r.status is Status.PASS for r in results), [r.message for r in results]


class _OffBy1e7InOneStep(NumpyPort):
    def optimizer_trajectory(self, problem, batches, method, hyper):
        out = [np.array(t) for t in super().optimizer_trajectory(problem, batches, method, hyper)]
        kick = 1e-7 * (out[1] - out[0])
        return out[:1] + [t + kick for t in out[1:]]


def test_float64_port_off_by_1e7_in_one_step_fails_at_that_step():
    results = _run(_OffBy1e7InOneStep)
    assert results and all(r.status is Status.FAIL for r in results)
    assert all("theta_2 leaves the tolerance first" in r.message for r in results)
    assert all("at step 1:" in r.message for r in results)


class _Frozen(NumpyPort32):
    def optimizer_trajectory(self, problem, batches, method, hyper):
        return [np.array(problem.params)] * len(batches)


class _Declines(NumpyPort):
    def optimizer_trajectory(self, problem, batches, method, hyper):
        if method == "shampoo":
            raise NotImplementedError("no shampoo")
        return super().optimizer_trajectory(problem, batches, method, hyper)


class _GoesNonFinite(NumpyPort):
    def optimizer_trajectory(self, problem, batches, method, hyper):
        out = [np.array(t) for t in super().optimizer_trajectory(problem, batches, method, hyper)]
        out[-1][0] = np.nan
        return out


def test_a_port_that_does_not_move_fails_in_float32():
    assert all(r.status is Status.FAIL for r in _run(_Frozen, QUICK[:1]))


def test_declined_method_is_a_skip_and_non_finite_is_a_failure():
    declined = {r.check: r.status for r in _run(_Declines, QUICK[:1])}
    assert declined.pop("optimizer_trajectory_shampoo") is Status.SKIP
    assert set(declined.values()) == {Status.PASS}
    broken = _run(_GoesNonFinite, QUICK[:1])
    assert all(r.status is Status.FAIL and "not finite" in r.message for r in broken)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_quick_zoo_schedules_make_every_event_happen_twice(dtype):
    counts, inverse_alone = Counter(), 0
    for problem in QUICK:
        for family in FAMILIES:
            sched = schedule(problem, family, dtype)
            if isinstance(sched, str):
                continue
            for step in sched.reference.steps:
                counts.update(step.events)
                inverse_alone += Event.INVERSE in step.events and (
                    Event.STATISTICS not in step.events)
    wanted = [e for e in Event if e is not Event.DAMPING_KEPT]
    assert {e: counts[e] for e in wanted if counts[e] < 2} == {}
    assert inverse_alone >= 2


# -- identities over trajectories -------------------------------------------------------------
from verify.identities import IDENTITIES  # noqa: E402
from verify.identities import trajectory as trajectory_ids  # noqa: E402
from verify.identities._registry import result, separated  # noqa: E402

TRAJECTORY_IDENTITIES = [i for i in IDENTITIES if i.name.startswith("trajectory_")]


@pytest.mark.parametrize("problem", [TINY, QUICK[1]], ids=lambda p: p.name)
def test_trajectory_identities_and_controls_pass(problem):
    results = [r for i in TRAJECTORY_IDENTITIES if i.applies(problem) for r in i.run(problem)]
    assert len(results) >= 6
    assert all(r.status is Status.PASS for r in results), [r.message for r in results]


def test_trajectory_controls_fail_where_the_identity_holds():
    batches = trajectory_batches(TINY, 2)
    newton = ("damped_newton", trajectory_ids._newton("ggn", 0.5))
    run = trajectory_ids._reference(TINY, batches, *newton)
    same = trajectory_ids._compare_runs(run, run)
    assert len(same) == 2  # one comparison per step
    assert separated("control", TINY, trajectory_ids._worst(same), "x", "y").status is Status.FAIL
    twin = trajectory_ids.quadratic_twin(TINY)
    constant = [(twin.inputs, twin.targets)] * 2
    raw = trajectory_ids._compare_runs(
        trajectory_ids._reference(twin, constant, "kfac",
                                  trajectory_ids._constant_statistics(0.875, False, 0.5)),
        trajectory_ids._reference(twin, constant, "kfac",
                                  trajectory_ids._constant_statistics(0.0, True, 0.5)))
    assert result("identity", twin, trajectory_ids._worst(raw), "x", "y").status is Status.FAIL


def test_hf_one_cg_step_control_is_weighed_against_step_0s_tolerance():
    """The predicted gap of `trajectory_hf_one_cg_step_is_not_newton` is theta_1's: it is
    compared with step 0's tolerance, which is the smallest (tolerances grow along a run)."""
    curvature, damping = "ggn", trajectory_ids._damping(TINY, "ggn")
    batches = trajectory_batches(TINY, trajectory_ids.STEPS)
    one = trajectory_ids._compare_runs(
        trajectory_ids._reference(TINY, batches, "hessian_free",
                                  trajectory_ids._hf(curvature, 1, damping)),
        trajectory_ids._reference(TINY, batches, "damped_newton",
                                  trajectory_ids._newton(curvature, damping)))
    assert len(one) == trajectory_ids.STEPS
    assert one[0].tolerance <= trajectory_ids._worst(one).tolerance


AFFINE = zoo.get("mlp-3x4x3-sigmoid-mse-b4-sum")  # a Hessian invertible along the run


def test_newton_trajectory_is_affine_invariant_and_gradient_descent_is_not():
    """Undamped Newton run in theta = R gamma maps by R onto the theta run (both checks pass,
    tolerances far below a relative 1e-7); the same comparisons cannot be turned around: the
    Newton runs are not separated, the gradient-descent runs do not agree."""
    ident = next(i for i in IDENTITIES if i.name == "trajectory_newton_affine_invariant")
    assert ident.applies(AFFINE) and not ident.applies(TINY)  # TINY's Hessian is singular
    results = ident.run(AFFINE)
    assert [r.status for r in results] == [Status.PASS, Status.PASS], [r.message for r in results]
    r, _ = trajectory_ids.default_reparameterization(AFFINE)
    batches = trajectory_batches(AFFINE, trajectory_ids.STEPS)
    newton = trajectory_ids._affine_comparisons(AFFINE, batches, r, "newton")
    descent = trajectory_ids._affine_comparisons(AFFINE, batches, r, "gd")
    assert len(newton) == len(descent) == trajectory_ids.STEPS
    assert max(c.tolerance for c in newton) < 1e-7
    assert separated("c", AFFINE, trajectory_ids._worst(newton), "x", "y").status is Status.FAIL
    assert result("i", AFFINE, trajectory_ids._worst(descent), "x", "y").status is Status.FAIL


# -- the strategy over method x hyperparameters x batch sequences ------------------------------
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from verify.harness._trajectory import _evaluate  # noqa: E402
from verify.strategies import TRAJECTORY_FAMILIES, problems, trajectory_settings  # noqa: E402


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_numpy_port_follows_the_reference_on_drawn_settings(data):
    problem = data.draw(problems(max_layers=2, max_width=3, max_batch=2))
    family, method, hyper, batches = data.draw(trajectory_settings(problem))
    assert family in TRAJECTORY_FAMILIES
    outcome = _evaluate(problem, method, hyper, batches, "float64")
    assume(not isinstance(outcome, str))
    run, tolerances = outcome
    port = NumpyPort().optimizer_trajectory(problem, batches, method, dict(hyper))
    errors = np.linalg.norm(np.asarray(port) - run.float64(), axis=1)
    assert np.all(errors <= tolerances), (family, hyper, errors, tolerances)


def _exhaustive_schedule(problem, family, dtype):
    """The search without screening: every candidate finished, the first best score kept."""
    from ngd_ref.dense import DenseCurvature
    from verify.harness._trajectory import _POSSIBLE, _candidates, _score

    batches, best = trajectory_batches(problem), None
    for method, hyper in _candidates(problem, family, DenseCurvature(problem)):
        outcome = _evaluate(problem, method, hyper, batches, dtype)
        if isinstance(outcome, str):
            continue
        score = _score(*outcome)
        if score[0] and (best is None or score > best[0]):
            best = (score, method, hyper, outcome[1])
            if score[1] == _POSSIBLE[family]:
                break
    return best


@pytest.mark.parametrize("name", ["mlp-3x4x3-tanh-mse-b1"])
def test_screened_search_picks_what_the_exhaustive_search_picks(name):
    # screening at the twin's tolerances and finishing with the restarts best-first is a
    # shortcut of the same search: the same setting and tolerances per family
    problem = zoo.get(name)
    for family in FAMILIES:
        for dtype in ("float64", "float32"):
            sched, best = schedule(problem, family, dtype), _exhaustive_schedule(problem, family,
                                                                                 dtype)
            if best is None:
                assert isinstance(sched, str), (family, dtype)
                continue
            assert not isinstance(sched, str), (family, dtype, sched)
            assert (sched.method, sched.hyper, sched.tolerances) == best[1:], (family, dtype)


# -- the JAX twin and ngd-ref-jax -------------------------------------------------------------
@pytest.mark.slow
def test_ngd_ref_jax_claims_and_passes_trajectories():
    """float32 in the core suite (the float64 adapter: 49/49 on the quick zoo, docs)."""
    adapter = "verify.adapters.ngd_ref_jax:NgdRefJaxFloat32"
    assert "optimizer_trajectory" in load_adapter("ngd-ref-jax").capabilities
    results = _run(adapter)
    assert len(results) == len(FAMILIES)
    assert all(r.status is Status.PASS for r in results), [r.message for r in results]


@pytest.mark.usefixtures("x64")
def test_jax_twin_takes_the_reference_decisions():
    from ngd_ref.jax import trajectory_jax

    batches = _batches(TINY, 3)
    for method, hyper in SETTINGS.items():
        twin = trajectory_jax(TINY, batches, method, hyper)
        ref = trajectory(TINY, batches, method, hyper)
        assert [s.events for s in twin.steps] == [s.events for s in ref.steps], method
        np.testing.assert_allclose(twin.float64(), ref.float64(), rtol=0, atol=1e-11)
