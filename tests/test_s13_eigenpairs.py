"""`top_eigenpairs`: the campaign's false alarms (ties of `|lambda|` that rounding breaks).

The seed-0 and seed-13 campaign problems (`ngd-verify campaign --fuzz 25`) have indefinite
Hessians with `+a, -a` pairs tied in `|lambda|` exactly: a correct port's rounding (LAPACK's
`eigh`, on the same matrix) orders them either way, so the order inside a run of `|lambda|`
within `2 e` is not checked; the values, the order between runs and the eigenspaces are.
The problems are stored by their build arguments (not by their index in the generator).
"""

from __future__ import annotations

import numpy as np
import pytest

from verify._report import Status
from verify.harness import load_adapter, run_checks
from verify.harness._s13 import eigen_order, tie_groups
from verify.mutants import NumpyPort, NumpyPort32
from verify.strategies import build

#: (campaign seed, build arguments) of the three false alarms
CASES = [
    (0, ("softmax_cross_entropy", (4, 4, 1, 2), ("identity", "relu"), 4, "sum", 1, 63434)),
    (0, ("gaussian_logvar", (1, 4, 2), ("identity",), 4, "sum", -1, 40263)),
    (13, ("sigmoid_cross_entropy", (1, 3, 1), ("identity",), 1, "sum", 1, 21017)),
]
IDS = [build(*args).name for _, args in CASES]


def _top(port, problem, seed):
    report = run_checks(load_adapter(port), [problem], seed=seed, capabilities=["top_eigenpairs"])
    return [r for r in report.results if r.capability == "top_eigenpairs"]


class _TiesReversed(NumpyPort):
    """Breaks exact `|lambda|` ties the other way (smaller value first): still correct."""

    def top_eigenpairs(self, problem, curvature, k):
        lam, vec = np.linalg.eigh(getattr(self, curvature)(problem))
        order = np.lexsort((lam, -np.abs(lam)))[:k]
        return lam[order], vec[:, order]


class _ByValue(NumpyPort):
    """Largest values first, ignoring `|lambda|` (wrong where a negative one is largest)."""

    def top_eigenpairs(self, problem, curvature, k):
        lam, vec = np.linalg.eigh(getattr(self, curvature)(problem))
        order = np.argsort(-lam)[:k]
        return lam[order], vec[:, order]


class _ValuesOffBy1e7(NumpyPort):
    def top_eigenpairs(self, problem, curvature, k):
        values, vectors = super().top_eigenpairs(problem, curvature, k)
        return values * (1 + 1e-7), vectors


class _VectorsOfTheNextRun(NumpyPort):
    """The right values, but the first two eigenvectors swapped (different eigenspaces)."""

    def top_eigenpairs(self, problem, curvature, k):
        values, vectors = super().top_eigenpairs(problem, curvature, k)
        if k > 1:
            vectors = vectors[:, [1, 0, *range(2, k)]]
        return values, vectors


@pytest.mark.parametrize(("seed", "args"), CASES, ids=IDS)
def test_correct_ports_pass_whichever_way_they_break_ties(seed, args):
    problem = build(*args)
    for port in (NumpyPort, NumpyPort32, _TiesReversed):
        results = _top(port, problem, seed)
        assert results and all(r.status is Status.PASS for r in results), (
            port.__name__, [r.message for r in results if r.status is not Status.PASS])


def test_the_hessian_ties_are_reported_as_not_checked():
    problem = build(*CASES[0][1])
    values = [r for r in _top(NumpyPort, problem, 0)
              if r.check.startswith("top_eigenpairs_hessian_values")]
    assert any("not checked (positions 3..6)" in r.message for r in values)  # k = 8


@pytest.mark.parametrize("broken", [_ValuesOffBy1e7, _VectorsOfTheNextRun, _ByValue],
                         ids=["values-1e-7", "vectors-swapped", "ordered-by-value"])
def test_wrong_eigenpairs_still_fail_on_the_tied_problem(broken):
    problem = build(*CASES[0][1])  # H has -16.3 second and the +-13.4 ties
    assert any(r.status is Status.FAIL for r in _top(broken, problem, 0))


def test_tie_groups_chain_neighbours_and_the_order_sorts_each_run_by_value():
    assert tie_groups(np.array([5.0, 3.0, 3.0 - 1e-3, 3.0 - 2e-3, 1.0]), 1.5e-3) == [
        (0, 1), (1, 4), (4, 5)]
    values = np.array([-3.0, 3.0 + 1e-16, 5.0, -3.0 + 1e-16])
    assert list(values[eigen_order(values, 1e-12)]) == [5.0, 3.0 + 1e-16, -3.0 + 1e-16, -3.0]


def test_ngd_ref_jax_top_eigenpairs_on_a_convolutional_problem():
    """Regression: its Lanczos sized the space by `n_in` (`AttributeError` on a `Conv2d`)."""
    from ngd_ref import zoo

    results = _top("ngd-ref-jax", zoo.get("conv-1x1-stride2-3x3x3-poisson-b2"), 0)
    assert results and {r.status for r in results} == {Status.PASS}, results
