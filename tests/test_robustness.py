"""Issue 13: the oracle never crashes, hangs, false-alarms or loses a report.

One regression test per case of the issue (tiny problems, the quick zoo, short timeouts).
"""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref.dense import krylov_optimal_iterate, mp_backend
from verify import Status
from verify.harness import load_adapter, run_checks
from verify.harness._context import CheckContext
from verify.harness._cg import cg_system
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
