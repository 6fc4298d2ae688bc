"""affine_invariance over its R and lambda grid (issue 18): what the grid adds."""

from __future__ import annotations

import numpy as np

import ngd_ref.curvature._dense as curvature_dense
from ngd_ref import zoo
from verify._report import Status
from verify.identities import invariance

SCE = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")


def test_the_grid_spans_kappa_up_to_1024():
    kappas = [np.linalg.cond(r) for r, _ in invariance.reparameterization_grid(SCE)]
    assert kappas[0] <= 4 and np.allclose(kappas[1:], [64, 1024])


def test_a_damping_clamped_at_the_curvature_norm_is_killed_by_the_lambda_grid(monkeypatch):
    """Mutant: `damped_update` uses `min(lambda, ||C||_2)` (wrong only for lambda > ||C||).

    The old check (undamped steps, one R) never met it: its undamped rows still pass. The
    damped rows at `lambda = 2^6 ||C||` fail; those at `lambda <= ||C||` still pass.
    """
    real = curvature_dense.DenseCurvature.damped_update

    def clamped(self, curvature, damping):
        top = float(np.linalg.norm(np.asarray(self.matrix(curvature), dtype=float), 2))
        return real(self, curvature, min(damping, top))

    monkeypatch.setattr(curvature_dense.DenseCurvature, "damped_update", clamped)
    results = invariance.affine_invariance(SCE)
    undamped = [r for r in results if "lambda" not in r.message]
    large = [r for r in results if "lambda = 64 ||C||" in r.message]
    small = [r for r in results if "lambda = 0.015625 ||C||" in r.message]
    assert undamped and all(r.status is Status.PASS for r in undamped)
    assert small and all(r.status is Status.PASS for r in small)
    assert large and all(r.status is Status.FAIL for r in large)
