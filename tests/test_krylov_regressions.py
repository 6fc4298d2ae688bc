"""The seed-23 crash class (`check --fuzz 25 --seed 23`): degenerate Krylov spaces in `cg`.

The reference's `krylov_optimal_iterate` once divided by zero (its Galerkin solve) where the Krylov
basis stops growing before `n`; the seed-7 case of `test_robustness` tests the reference
itself. Here two of the seed-23 problems whose basis degenerates with and without the Jacobi
preconditioner go through the whole `cg` capability: a correct port passes with no error, a
port off by a relative 1e-7 fails. Problems are stored by their build arguments.
"""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref.dense import krylov_optimal_iterates
from verify._report import Status
from verify.harness import load_adapter, run_checks
from verify.harness._cg import cg_system
from verify.harness._context import CheckContext
from verify.mutants import NumpyPort
from verify.strategies import build

SEED23 = [("softmax_cross_entropy", (1, 2), (), 3, "sum", 0, 44815),
          ("nll_probs", (4, 2), (), 4, "mean", 0, 37812)]


class _CgOffBy1e7(NumpyPort):
    def cg(self, *args, **kwargs):
        return super().cg(*args, **kwargs) * (1 + 1e-7)


def _degenerates(a: np.ndarray, b: np.ndarray, precond=None) -> bool:
    iterates = krylov_optimal_iterates(a, b, None, b.shape[0], precond=precond)
    return any(x is y for x, y in zip(iterates[:-1], iterates[1:], strict=True))  # repeated


@pytest.mark.parametrize("args", SEED23, ids=[build(*a).name for a in SEED23])
def test_cg_on_degenerate_krylov_spaces_passes_a_correct_port(args):
    problem = build(*args)
    a, b = cg_system(CheckContext(None, "cg", problem, "float64", 23))
    diagonal = np.diag(a).copy()
    assert _degenerates(a, b) and _degenerates(a, b, lambda r: r / diagonal)
    results = [r for r in run_checks(load_adapter(NumpyPort), [problem], seed=23,
                                     capabilities=["cg"]).results if r.capability == "cg"]
    assert results and all(r.status is Status.PASS for r in results), [
        r.message for r in results if r.status is not Status.PASS]
    bad = run_checks(load_adapter(_CgOffBy1e7), [problem], seed=23, capabilities=["cg"])
    assert any(r.status is Status.FAIL for r in bad.results if r.capability == "cg")
