"""Dense K-FAC reference (ngd_ref.kfac._dense) and the K-FAC identities on the zoo."""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import dense as ref
from ngd_ref import layer_slices, unflatten, zoo
from ngd_ref.kfac import _dense as kd
from verify._report import Status
from verify._tolerance import compare, rounding_rtol, solve_rtol
from verify.identities import kfac as kfac_ids
from verify.identities._registry import IDENTITIES

ZOO = zoo.problems()
#: the dense layers' s4 construction (conv K-FAC, expand and reduce: tests/test_conv.py)
DENSE_ZOO = [p for p in ZOO if p.dense_only]
QUICK = zoo.problems(quick=True)
KINDS = [k.value for k in kd.KfacKind]


def _tol(problem) -> float:
    return rounding_rtol("float64", length=max(problem.n_params, problem.batch_size *
                                               problem.output_dim), depth=len(problem.layers) + 2)


def _explicit_a(problem) -> list[np.ndarray]:
    """`A_l` from an independent numpy forward pass (no DenseCurvature)."""
    out, a = [], problem.inputs
    acts = {"identity": lambda s: s, "tanh": np.tanh, "relu": lambda s: np.maximum(s, 0),
            "sigmoid": lambda s: 1 / (1 + np.exp(-s)), "softplus": lambda s: np.logaddexp(0, s),
            "softmax": lambda s: np.exp(s - s.max(1, keepdims=True)) /
            np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)}
    for (w, b), layer in zip(unflatten(problem.layers, problem.params),
                             problem.layers, strict=True):
        abar = np.column_stack([a, np.ones(len(a))])
        out.append(abar.T @ abar / problem.batch_size)
        a = acts[layer.activation](a @ w.T + b)
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("problem", DENSE_ZOO, ids=lambda p: p.name)
def test_factors_match_explicit_construction(problem, kind):
    """A_l from a separate forward pass; S_l is the bias-bias block of the exact C_ll.

    Since abar's last entry is 1, the bias-bias block of `c sum_b abar abar^T (x) M_b` is
    `c sum_b M_b = S_l` exactly, for every batch size.
    """
    factors = kd.kfac_factors(problem, kind)
    blocks = kd.exact_diagonal_blocks(problem, kind)
    mags = kd.kfac_magnitudes(problem, kind)
    for (a, s), (a_mag, s_mag), block, layer, a_exp in zip(factors, mags, blocks, problem.layers,
                                                          _explicit_a(problem), strict=True):
        bias = slice(block.shape[0] - layer.n_out, block.shape[0])
        assert compare(s, block[bias, bias], tolerance=_tol(problem),
                       magnitude=np.linalg.norm(s_mag)).passed
        assert compare(a, a_exp, tolerance=_tol(problem), magnitude=np.linalg.norm(a_mag)).passed
        assert a.shape == (layer.n_in + 1,) * 2 and s.shape == (layer.n_out,) * 2


@pytest.mark.parametrize("problem", QUICK, ids=lambda p: p.name)
def test_mpmath_backend_agrees_with_float64(problem):
    mp = ref.mp_backend(30)
    v = np.linspace(-1.0, 1.0, problem.n_params)
    for kind in ("fisher", "empirical"):
        for (a, s), (a_mp, s_mp) in zip(kd.kfac_factors(problem, kind),
                                        kd.kfac_factors(problem, kind, backend=mp), strict=True):
            assert a_mp.dtype == object
            assert compare(a, mp.to_float64(a_mp), tolerance=_tol(problem)).passed
            assert compare(s, mp.to_float64(s_mp), tolerance=_tol(problem),
                           magnitude=1e-300 + np.abs(s).max()).passed
    for method in ("eigen", "factored"):
        x = kd.kfac_solve(problem, v, 0.5, method, "fisher")
        x_mp = mp.to_float64(kd.kfac_solve(problem, v, 0.5, method, "fisher", backend=mp))
        tol = solve_rtol("float64", length=problem.n_params, depth=len(problem.layers) + 2,
                         condition=float(np.linalg.cond(kd.kfac_matrix(problem, "fisher")
                                                        + 0.5 * np.eye(problem.n_params))))
        assert compare(x, x_mp, tolerance=tol).passed


REGISTERED = {i.name: i for i in IDENTITIES if i.name.startswith("kfac_")}


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_identity_passes_on_the_zoo(name):
    ident = REGISTERED[name]
    applicable = [p for p in ZOO if ident.applies(p)]
    assert applicable, f"{name} applies to no zoo problem"
    for problem in applicable:
        for res in ident.run(problem):
            assert res.status is Status.PASS, res.message


def test_every_exactness_regime_and_kind_is_exercised():
    seen = {(r, k) for p in ZOO for k in kd.KfacKind for r in kd.exactness_regimes(p, k)}
    expected = {(r, k) for r in kd.ExactnessRegime for k in kd.KfacKind
                if not (r is kd.ExactnessRegime.DEEP_LINEAR_MSE and k is kd.KfacKind.EMPIRICAL)}
    assert seen == expected


def test_exactness_check_catches_a_wrong_factor(monkeypatch):
    """A port that sums instead of averaging A (a factor B) fails the exactness identity."""
    problem = zoo.get("deep-linear-2x3x3x2-mse-b4")
    original = kd.kfac_factors

    def summed(p, kind, backend=ref.FLOAT64):
        return [(a * p.batch_size, s) for a, s in original(p, kind, backend=backend)]

    monkeypatch.setattr(kfac_ids, "kfac_matrix", lambda p, kind: kd._block_diagonal(
        [np.kron(a, s) for a, s in summed(p, kind)], ref.FLOAT64))
    results = kfac_ids.kfac_exact_deep_linear_mse(problem)
    assert results and all(r.status is Status.FAIL for r in results)


def test_inexact_regime_reports_gap_and_spectra():
    problem = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    approx = kd.kfac_approximation(problem, "ggn")
    assert approx.block_diagonal_error > 1e-3 and approx.full_error >= approx.block_diagonal_error
    assert approx.kfac_spectrum.shape == approx.exact_spectrum.shape == (problem.n_params,)
    assert np.all(np.diff(approx.exact_spectrum) <= 0)


@pytest.mark.parametrize("method", ["eigen", "factored"])
def test_solve_equals_explicit_inverse(method):
    problem = zoo.get("mlp-2x4x4x3-relu-softmax_cross_entropy-b3")
    v = ref.dense(problem).gradient
    factors = kd.kfac_factors(problem, "ggn")
    blocks = [np.kron(a, s) + 0.1 * np.eye(a.shape[0] * s.shape[0]) if method == "eigen"
              else np.kron(*kd.damped_factors(a, s, 0.1)) for a, s in factors]
    x = kd.kfac_solve(problem, v, 0.1, method, "ggn")
    for block, sl in zip(blocks, layer_slices(problem.layers), strict=True):
        np.testing.assert_allclose(block @ x[sl], v[sl], rtol=1e-10, atol=1e-13)


def test_factored_pi_formula_and_zero_trace():
    a, s = np.diag([1.0, 3.0]), np.diag([4.0, 4.0, 4.0, 4.0])
    assert kd.factored_damping_pi(a, s) == pytest.approx(np.sqrt(2.0 / 4.0))
    assert kd.factored_damping_pi(a, np.zeros((2, 2))) == 1.0
    a_d, s_d = kd.damped_factors(a, s, 0.25)
    pi = np.sqrt(0.5)
    np.testing.assert_allclose(a_d, a + pi * 0.5 * np.eye(2))
    np.testing.assert_allclose(s_d, s + 0.5 / pi * np.eye(4))


def test_ema_update_is_eq25():
    old = [(np.eye(2), np.ones((1, 1)))]
    new = [(np.zeros((2, 2)), 3 * np.ones((1, 1)))]
    (a, s), = kd.ema_update(old, new, 0.95)
    np.testing.assert_allclose(a, 0.95 * np.eye(2))
    np.testing.assert_allclose(s, [[0.95 + 0.05 * 3]])


def test_repeated_calls_are_identical_and_do_not_mutate():
    problem = zoo.get("mlp-3x4x3-tanh-poisson-b3")
    v = np.linspace(-1, 1, problem.n_params)
    v_copy = v.copy()
    first = kd.kfac_solve(problem, v, 0.3, "factored", "empirical")
    second = kd.kfac_solve(problem, v, 0.3, "factored", "empirical")
    assert np.array_equal(first, second) and np.array_equal(v, v_copy)
    f1, f2 = kd.kfac_factors(problem, "ggn"), kd.kfac_factors(problem, "ggn")
    assert all(np.array_equal(x, y) for p, q in zip(f1, f2, strict=True)
               for x, y in zip(p, q, strict=True))


@pytest.mark.parametrize("call, message", [
    (lambda p: kd.kfac_factors(p, "hessian"), "kind"),
    (lambda p: kd.kfac_solve(p, np.ones(p.n_params), 0.1, "cholesky"), "method"),
    (lambda p: kd.kfac_solve(p, np.ones(p.n_params), 0.0, "eigen"), "damping"),
    (lambda p: kd.kfac_solve(p, np.ones(p.n_params), float("nan"), "eigen"), "damping"),
    (lambda p: kd.kfac_solve(p, np.ones(3), 0.1, "eigen"), "v"),
    (lambda p: kd.ema_update(kd.kfac_factors(p, "ggn"), kd.kfac_factors(p, "ggn"), 1.0), "decay"),
], ids=["kind", "method", "damping-zero", "damping-nan", "v-shape", "decay"])
def test_boundary_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call(zoo.get("mlp-3x4x3-tanh-mse-b1"))
