"""The dense reference on its own terms -- without JAX (tested in a subprocess too).

* symmetry of H, G, F, EF and the positive semidefiniteness theory promises;
* the two Fisher forms (score outer product, expected Hessian) agree;
* derivatives are derivatives: central differences in mpmath at 40 digits (truncation
  O(h^2) = 1e-24 with h = 1e-12) reproduce the gradient from the loss and H from the
  gradient -- an independent check that uses neither autodiff nor the second-order code;
* float64 agrees with mpmath to the digits `certify` reports.
"""

import subprocess
import sys

import mpmath
import numpy as np
import pytest

from ngd_ref import zoo
from ngd_ref.dense import FLOAT64, Curvature, DenseCurvature, certify, dense, mp_backend
from verify._tolerance import compare, rounding_rtol

ZOO = zoo.problems()
QUICK = zoo.problems(quick=True)
ids = lambda p: p.name  # noqa: E731


def _rtol(problem, *, second_order=True):
    depth = len(problem.layers) + (2 if second_order else 1)
    return rounding_rtol("float64", length=problem.n_params, depth=depth)


@pytest.mark.parametrize("problem", ZOO, ids=ids)
def test_symmetric_and_psd_where_theory_says(problem):
    ref = dense(problem)
    for curvature in Curvature:
        c = ref.matrix(curvature)
        assert compare(c.T, c, tolerance=_rtol(problem)).passed, curvature
    # G is PSD for convex losses (all but gaussian_logvar); F and EF always (Grosse s2.1,
    # Martens s9).
    psd = [Curvature.FISHER, Curvature.EMPIRICAL_FISHER]
    if problem.loss != "gaussian_logvar":
        psd.append(Curvature.GGN)
    for curvature in psd:
        c = ref.matrix(curvature)
        lowest = np.linalg.eigvalsh(c)[0]
        assert lowest >= -_rtol(problem) * np.linalg.norm(c), (curvature, lowest)


@pytest.mark.parametrize("problem", ZOO, ids=ids)
def test_fisher_two_forms_agree(problem):
    ref = dense(problem)
    assert compare(ref.fisher_expected_hessian, ref.fisher, tolerance=_rtol(problem)).passed


def _central_difference(fn, theta, h):
    cols = []
    for i in range(theta.shape[0]):
        e = np.zeros(theta.shape[0], dtype=object)
        e[i] = h
        cols.append((fn(theta + e) - fn(theta - e)) / (2 * h))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize(
    "problem", QUICK[:4] + (zoo.get("mlp-2x4x4x3-relu-softmax_cross_entropy-b3"),), ids=ids
)
def test_derivatives_match_mpmath_central_differences(problem):
    bk = mp_backend(40)
    with bk.precision():
        theta = bk.asarray(problem.params)
        h = mpmath.mpf("1e-12")
        loss = lambda t: DenseCurvature(problem, bk, params=t).loss  # noqa: E731
        grad = lambda t: DenseCurvature(problem, bk, params=t).gradient  # noqa: E731
        ref = DenseCurvature(problem, bk)
        fd_grad = _central_difference(loss, theta, h)
        fd_hess = _central_difference(grad, theta, h)
        # truncation error ~ h^2 * |third derivative| ~ 1e-24: 18 digits is a strict bar
        assert float(mpmath.norm(mpmath.matrix((fd_grad - ref.gradient).tolist()))) < 1e-18
        assert float(mpmath.norm(mpmath.matrix((fd_hess - ref.hessian).tolist()))) < 1e-18


@pytest.mark.parametrize("problem", QUICK, ids=ids)
def test_float64_carries_nearly_all_digits(problem):
    digits = certify(problem, dps=40)
    # float64 carries 15.95 digits; allow the rounding model's growth (log10 of its factor)
    floor = -np.log10(_rtol(problem))
    assert min(digits.values()) >= floor, digits


def test_damped_update_solves_the_damped_system():
    # A backward-stable solve leaves a residual of order u ||M|| ||x|| (Higham Thm 7.1).
    problem = QUICK[1]
    ref = dense(problem)
    for curvature in Curvature:
        step = ref.damped_update(curvature, 0.1)
        damped = ref.matrix(curvature) + 0.1 * np.eye(problem.n_params)
        residual = damped @ step + ref.gradient
        scale = np.linalg.norm(damped, 2) * np.linalg.norm(step) + np.linalg.norm(ref.gradient)
        assert np.linalg.norm(residual) <= _rtol(problem) * scale
        # and a step off by a relative 1e-7 would not pass this bound
        wrong = damped @ (step * (1 + 1e-7)) + ref.gradient
        assert np.linalg.norm(wrong) > _rtol(problem) * scale


def test_mp_backend_rejects_low_precision():
    with pytest.raises(ValueError, match="dps"):
        mp_backend(10)


def test_dense_reference_never_imports_jax():
    code = (
        "import sys; from ngd_ref import zoo; from ngd_ref.dense import dense;"
        "r = dense(zoo.problems(quick=True)[0]); r.hessian; r.fisher;"
        "import verify._tolerance, verify._report;"
        "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_name_and_float64_default():
    assert FLOAT64.name == "float64" and not FLOAT64.is_mp
    assert dense(QUICK[0]).backend is FLOAT64
