"""Issue 13: the oracle never crashes, hangs, false-alarms or loses a report.

One regression test per case of the issue (tiny problems, the quick zoo, short timeouts).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from ngd_ref import zoo
from ngd_ref.dense import krylov_optimal_iterate, mp_backend
from verify import Status
from verify.harness import load_adapter, run_checks
from verify.harness._budget import Budget
from verify.harness._cg import cg_system
from verify.harness._context import CheckContext
from verify.mutants import NumpyPort
from verify.strategies import generate


def _generated(count: int, seed: int, name: str):
    return next(p for p in generate(count, seed) if p.name == name)


# -- the reference: degenerate Krylov spaces ---------------------------------------------------
#: `--fuzz 20 --seed 7`: b lies in a 2-dimensional invariant subspace of A, so K_3 = K_2.
SEED7 = (20, 7, "gen-1x2-identity-softmax_cross_entropy-b4-mean-k0-s37708")


def test_krylov_optimal_iterate_on_a_degenerate_space_is_the_minimizer_reached():
    problem = _generated(*SEED7)
    a, b = cg_system(CheckContext(None, "cg", problem, "float64", 7))
    solution = np.linalg.solve(a, b)
    bk = mp_backend(40)
    with bk.precision():
        a_mp, b_mp = bk.asarray(a), bk.asarray(b)
        iterates = [bk.to_float64(krylov_optimal_iterate(a_mp, b_mp, None, k)) for k in (2, 3, 4)]
    for x in iterates:  # the space stops growing at k = 2, where A^{-1} b is reached
        np.testing.assert_allclose(x, solution, rtol=1e-13)
    for k in (2, 3, 4):  # the float64 backend too
        np.testing.assert_allclose(krylov_optimal_iterate(a, b, None, k), solution, rtol=1e-12)


def test_krylov_optimal_iterate_still_grows_a_nondegenerate_space():
    a = np.diag([1.0, 2.0, 3.0])
    b = np.ones(3)
    x1 = krylov_optimal_iterate(a, b, None, 1)
    assert not np.allclose(x1, np.linalg.solve(a, b))  # one step is not the solution
    np.testing.assert_allclose(krylov_optimal_iterate(a, b, None, 3), np.linalg.solve(a, b))


def test_cg_check_on_the_seed7_problem_passes_a_correct_port():
    report = run_checks(load_adapter("numpy-port"), [_generated(*SEED7)], seed=7,
                        capabilities=["cg"])
    bad = [r for r in report.results if r.status in (Status.FAIL, Status.ERROR)]
    assert not bad, bad


# -- containment of a port's faults --------------------------------------------------------------
SMALL = [zoo.get("mlp-3x4x3-tanh-mse-b1"), zoo.problems(quick=True)[1]]


def _results(cls, capability, problems=SMALL, **kwargs):
    report = run_checks(load_adapter(cls), problems, capabilities=[capability, "gradient"],
                        **kwargs)
    mine = [r for r in report.results if r.capability == capability]
    gradient = [r for r in report.results if r.capability == "gradient"]
    assert gradient and all(r.status is Status.PASS for r in gradient)  # the run went on
    assert not report.passed
    return mine


class _Exits(NumpyPort):
    def loss(self, problem):
        sys.exit(0)


class _RaisesKeyboardInterrupt(NumpyPort):
    def loss(self, problem):
        raise KeyboardInterrupt


class _OddBaseException(BaseException):
    pass


class _RaisesBaseException(NumpyPort):
    def loss(self, problem):
        raise _OddBaseException("odd")


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str")


class _RaisesUnprintable(NumpyPort):
    def loss(self, problem):
        raise _Unprintable


class _Complex(NumpyPort):
    def loss(self, problem):
        return complex(super().loss(problem), 1e-3)


class _ComplexZeroImaginary(NumpyPort):
    def ggn_vp(self, problem, v):
        return super().ggn_vp(problem, v).astype(complex)


class _StringResult(NumpyPort):
    def loss(self, problem):
        return "0.5"


class _BadArray:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("array gone")


class _ArrayRaises(NumpyPort):
    def loss(self, problem):
        return _BadArray()


class _DeletedJaxArray(NumpyPort):
    def gradient(self, problem):
        import jax.numpy as jnp

        out = jnp.asarray(super().gradient(problem))
        out.delete()
        return out


class _SwallowsReadOnlyError(NumpyPort):
    """Writes into v whenever it can; with read-only v the error is swallowed."""

    def ggn_vp(self, problem, v):
        out = super().ggn_vp(problem, v)
        try:
            v[...] = 0.0
        except ValueError:
            pass
        return out


class _SetsErrorsToRaiseAndOverflows(NumpyPort):
    def ggn(self, problem):
        np.seterr(all="raise")
        return np.full((problem.n_params,) * 2, 1e308)


CONTAINED = [
    ("sys-exit", _Exits, "loss", Status.ERROR, "loss raised SystemExit"),
    ("keyboard-interrupt", _RaisesKeyboardInterrupt, "loss", Status.ERROR,
     "raised KeyboardInterrupt"),
    ("base-exception", _RaisesBaseException, "loss", Status.ERROR, "_OddBaseException: odd"),
    ("unprintable-exception", _RaisesUnprintable, "loss", Status.ERROR, "<unprintable"),
    ("complex", _Complex, "loss", Status.FAIL, "result is complex"),
    ("complex-zero-imaginary", _ComplexZeroImaginary, "ggn_vp", Status.FAIL, "complex"),
    ("string", _StringResult, "loss", Status.FAIL, "not numeric"),
    ("array-raises", _ArrayRaises, "loss", Status.FAIL, "RuntimeError: array gone"),
    ("swallows-read-only-error", _SwallowsReadOnlyError, "ggn_vp", Status.FAIL,
     "handed writable copies (as its users pass them), it modified argument 2 in place"),
    ("seterr-raise-huge", _SetsErrorsToRaiseAndOverflows, "ggn", Status.FAIL, "error"),
]


@pytest.mark.parametrize(("label", "cls", "capability", "status", "text"), CONTAINED,
                         ids=[c[0] for c in CONTAINED])
def test_port_faults_are_contained(label, cls, capability, status, text):
    before = np.geterr()
    mine = _results(cls, capability)
    assert np.geterr() == before  # the port's np.seterr did not leak into the harness
    bad = [r for r in mine if r.status is status]
    assert len(bad) >= len(SMALL), [(r.status, r.message) for r in mine]
    assert text in bad[0].message


def test_a_deleted_jax_array_is_a_failure_not_a_crash():
    report = run_checks(load_adapter(_DeletedJaxArray), SMALL[:1], capabilities=["gradient"])
    first = next(r for r in report.results if r.capability == "gradient")
    assert first.status is Status.FAIL and "not numeric" in first.message, first.message


class _Hangs(NumpyPort):
    def loss(self, problem):
        time.sleep(30)


def test_a_hanging_capability_costs_one_timeout_and_the_run_goes_on():
    problems = zoo.problems(quick=True)[:3]
    start = time.monotonic()
    mine = _results(_Hangs, "loss", problems=problems, timeout=0.3)
    assert time.monotonic() - start < 10  # one timeout, not one per problem (nor 30 s)
    assert "did not return within 0.3 s" in mine[0].message and mine[0].status is Status.ERROR
    rest = mine[1:]
    assert len(rest) == len(problems) - 1
    assert all(r.status is Status.ERROR and "not run: loss timed out" in r.message for r in rest)


def test_an_internal_error_of_the_oracle_is_an_error_naming_the_oracle(monkeypatch):
    def broken(self, curvature):
        raise ZeroDivisionError("oracle bug")

    monkeypatch.setattr(Budget, "matrix_magnitude", broken)
    report = run_checks(load_adapter(NumpyPort), SMALL[:1], capabilities=["ggn", "loss"])
    ggn = [r for r in report.results if r.capability == "ggn"]
    assert ggn[0].status is Status.ERROR
    assert "internal error of ngd-verify" in ggn[0].message and "not the port" in ggn[0].message
    assert all(r.status is Status.PASS for r in report.results if r.capability == "loss")
