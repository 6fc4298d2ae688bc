"""Conv problems through the harness (PROTOCOL s12): layer kinds, approx, ports, fuzz, CG.

* A port declares the layer kinds it supports (`layer_kinds`, `verify.harness._layer_kinds`);
  on a problem with an undeclared kind every capability that takes the problem is recorded
  as `skip` ("not checked") without calling the port, and a bad declaration is a usage error.
* The independent numpy port (its own im2col, `verify.mutants._port_conv`) passes in float64
  and float32 on conv problems, K-FAC with both of s12's `approx`; a perturbed result fails.
* The `--fuzz` draws and both zoos contain conv problems.
* Dense CG run past convergence with `tol = 0` no longer underflows `p^T A p` (the cause of
  `trajectory_hf_full_cg_is_newton` declining conv-2x3x3-2c-last-sigmoid-bce-b2), while a
  matrix that is not positive definite is still refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import zoo
from ngd_ref.cg._dense import cg_solve
from ngd_ref.dense import dense
from verify import UsageError
from verify._report import Status
from verify.harness import load_adapter, run_checks
from verify.mutants import NumpyPort, NumpyPort32

CONV = zoo.get("conv-1x4x4-2c-pad-stride-ce-b2")
DENSE = zoo.problems(quick=True)[0]
PORT_CAPABILITIES = ("loss", "gradient", "hessian", "ggn", "fisher", "empirical_fisher",
                     "hvp", "kfac_factors", "kfac_solve", "kfac_factors_separate")


class DenseOnly(NumpyPort):
    """The correct port, declaring dense layers only; refuses to be called on a conv net."""

    layer_kinds = ("dense",)

    def loss(self, problem):
        assert problem.dense_only, "a port must not be called on an undeclared layer kind"
        return super().loss(problem)


def _statuses(report, problem=None):
    return {(r.check, Status(r.status)) for r in report.results
            if problem is None or r.problem == problem.name}


def test_undeclared_conv_is_not_checked_and_the_port_is_not_called():
    report = run_checks(load_adapter(DenseOnly), [DENSE, CONV],
                        capabilities=("loss", "gradient", "cg"))
    conv = [r for r in report.results if r.problem == CONV.name]
    by_capability = {r.capability: r for r in conv if r.capability in ("loss", "gradient")}
    assert {Status(r.status) for r in by_capability.values()} == {Status.SKIP}
    assert all("not checked" in r.message and "conv2d" in r.message
               for r in by_capability.values())
    # problem-free capabilities still run on the conv problem's matrices
    assert any(r.capability == "cg" and Status(r.status) is Status.PASS for r in conv)
    dense_results = [r for r in report.results if r.problem == DENSE.name]
    assert dense_results and all(Status(r.status) is Status.PASS for r in dense_results)


def test_default_layer_kinds_is_dense_only():
    class Plain:
        def loss(self, problem):
            raise AssertionError("not to be called on a conv net")

    assert load_adapter(Plain).layer_kinds == ("dense",)
    report = run_checks(load_adapter(Plain), [CONV])
    assert [Status(r.status) for r in report.results if r.problem == CONV.name] == [Status.SKIP]


@pytest.mark.parametrize("value", ["conv2d", ("dense", "conv3d"), 3])
def test_bad_layer_kinds_is_a_usage_error(value):
    cls = type("Bad", (NumpyPort,), {"layer_kinds": value})
    with pytest.raises(UsageError, match="layer_kinds"):
        load_adapter(cls)


@pytest.mark.parametrize("port", [NumpyPort, NumpyPort32], ids=["float64", "float32"])
def test_numpy_port_passes_on_conv_with_both_approximations(port):
    report = run_checks(load_adapter(port), [CONV], capabilities=PORT_CAPABILITIES)
    bad = [r for r in report.results if Status(r.status) in (Status.FAIL, Status.ERROR)]
    assert not bad, [(r.check, r.message[:120]) for r in bad[:3]]
    checks = {r.check for r in report.results}
    for approx in ("expand", "reduce"):
        assert f"kfac_factors_fisher_{approx}_product" in checks
        assert f"kfac_solve_eigen_ggn_{approx}" in checks
        assert f"kfac_factors_separate_empirical_{approx}_bias" in checks
    assert "kfac_factors_default_approx_product" in checks


def test_a_port_off_by_a_relative_1e7_on_conv_fails():
    class Off(NumpyPort):
        def hessian(self, problem):
            return super().hessian(problem) * (1 + 1e-7)

    report = run_checks(load_adapter(Off), [CONV], capabilities=("hessian",))
    assert (("hessian_matches_reference", Status.FAIL) in _statuses(report)
            or any(Status(r.status) is Status.FAIL for r in report.results))


def test_approx_is_not_passed_on_dense_problems():
    class NoApprox(NumpyPort):  # a protocol-v1 port: kfac_factors(problem, kind) only
        def kfac_factors(self, problem, kind):
            return super().kfac_factors(problem, kind)

    report = run_checks(load_adapter(NoApprox), [DENSE], capabilities=("kfac_factors",))
    assert all(Status(r.status) is Status.PASS for r in report.results)


def test_sampled_checks_decline_rules_over_budget():
    problem = zoo.get("conv-last-linear-1x4x3-pad-mse-b3")  # 20 mse outputs: 5^20 nodes
    report = run_checks(load_adapter(NumpyPort), [problem],
                        capabilities=("mc_fisher_diag", "mc_kfac_factors"))
    results = [r for r in report.results if r.problem == problem.name]
    assert results and all(Status(r.status) is Status.SKIP and "not checked" in r.message
                           for r in results)


def test_fuzz_draws_and_zoos_contain_conv_problems():
    from verify.strategies import generate

    drawn = generate(8, 0)
    assert [not p.dense_only for p in drawn] == [False, False, False, True] * 2
    assert [p.name for p in generate(8, 0)] == [p.name for p in drawn]  # deterministic
    assert {p.name for p in zoo.problems(quick=True) if not p.dense_only} == set(zoo.QUICK_CONV)
    assert {p.name for p in zoo.conv_problems()} <= set(zoo.names())


def test_cg_past_convergence_does_not_underflow():
    """G has rank 2 here: CG from 0 converges in 2 steps; 40 more must not fail."""
    problem = zoo.get("conv-2x3x3-2c-last-sigmoid-bce-b2")
    ref = dense(problem)
    a = ref.matrix("ggn") + 0.0625 * np.eye(problem.n_params)
    result = cg_solve(a, -ref.gradient, 1e-3 * ref.gradient, tol=0.0,
                      maxiter=4 * problem.n_params)
    assert result.iterations == 4 * problem.n_params
    np.testing.assert_allclose(result.x, np.linalg.solve(a, -ref.gradient), rtol=1e-12)
    assert min(result.residual_norms) < 1e-150  # r . r and p . A p underflow there


def test_cg_still_refuses_an_indefinite_matrix():
    a = np.diag([1.0, -1.0])
    with pytest.raises(ValueError, match="not positive definite"):
        cg_solve(a, np.array([1.0, 1.0]), tol=0.0, maxiter=2)


def test_problems_file_refuses_a_conv_net_over_the_size_limit(tmp_path):
    import json

    from ngd_ref import Conv2d, Layer
    from verify.harness import load_problems

    big = zoo.make_conv_problem((1, 3, 3), (Conv2d(1, 120, (3, 3), (1, 1), (0, 0), "tanh"),
                                            Layer(120, 2, "identity")),
                                "mse", 1, name="too-big-conv")
    assert big.n_params > 1024
    path = tmp_path / "big.json"
    path.write_text(json.dumps([big.to_dict()]))
    with pytest.raises(UsageError, match="parameters"):
        load_problems(str(path))
    small = tmp_path / "small.json"
    small.write_text(json.dumps([CONV.to_dict()]))
    assert [p.name for p in load_problems(str(small))] == [CONV.name]
