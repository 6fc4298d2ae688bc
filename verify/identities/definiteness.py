"""Definiteness: G, F and EF are PSD; H, and G for a non-convex loss, need not be.

* `G = c sum_b J_b^T H_L,b J_b` is PSD when every `H_L,b` is (a convex loss; Martens s3,
  Grosse s2.1, seed 002) -- all protocol losses except `gaussian_logvar`, whose `H_L` in
  `(mu, s)` has determinant `-1/2 (y - mu)^2 e^{-2s} < 0` per coordinate;
* `F = c sum_b J_b^T F_R,b J_b` and `EF = c sum_b g_b g_b^T` are sums of outer products or
  covariances, PSD always (Martens s5, s7);
* negative controls: `H` is indefinite for a network with an identity last layer and more
  than one layer whenever that layer has more homogeneous inputs than there are examples
  (then some `u` in the last layer's block has `J_b u = 0` for all b, so `u^T H u = 0`
  while `H u` is the network-curvature term's cross block, nonzero at a nonzero residual:
  a PSD matrix would need `H u = 0`); and `G` is indefinite for `gaussian_logvar` when an
  example's residual is nonzero and its last-layer input is not in the span of the others'.

Tolerance: eigenvalues of a symmetric matrix known to `exact_rtol * MAG` are computed to
within that plus `u ||C||` (backward stability), so `lambda_min >= -exact_rtol * MAG`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ngd_ref import Loss, Problem
from verify.identities._common import (
    at_most,
    exact_rtol,
    gauss_newton_magnitude,
    magnitude,
    reference,
)
from verify.identities._registry import identity
from verify.identities.hessian import curved_with_residual

__all__ = ["ggn_indefinite_gaussian_logvar", "hessian_indefinite", "min_eigenvalue", "psd_check"]

#: How far below zero a negative control's eigenvalue must be, in tolerances (as `separated`).
MARGIN = 100.0


def min_eigenvalue(matrix: np.ndarray, mag: float) -> float:
    """Smallest eigenvalue of a symmetric matrix, relative to the computation's magnitude."""
    return float(np.linalg.eigvalsh(matrix)[0]) / max(mag, np.finfo(np.float64).tiny)


def _magnitudes(problem: Problem) -> dict[str, Callable[[], tuple[np.ndarray, float]]]:
    ref = reference(problem)
    return {
        "ggn": lambda: (ref.ggn, gauss_newton_magnitude(ref, ref.loss_hessians)),
        "fisher": lambda: (ref.fisher, gauss_newton_magnitude(ref, ref.output_fishers)),
        "empirical_fisher": lambda: (ref.empirical_fisher, magnitude(ref.empirical_fisher)),
        "hessian": lambda: (ref.hessian, magnitude(ref.ggn, ref.hessian - ref.ggn)),
    }


def psd_check(name: str, curvature: str, problem: Problem, source: str):
    """`lambda_min(C) >= -exact_rtol * MAG(C)` for the curvature `C` named `curvature`."""
    matrix, mag = _magnitudes(problem)[curvature]()
    return at_most(name, problem, -min_eigenvalue(matrix, mag), exact_rtol(problem),
                   f"-lambda_min({curvature}) / MAG", source)


def _register_psd(curvature: str, source: str, applies: Callable[[Problem], bool]) -> None:
    name = f"{curvature}_psd"

    def check(problem: Problem):
        return psd_check(name, curvature, problem, source)

    check.__doc__ = f"`{curvature}` is positive semidefinite ({source})."
    identity(name, source=source, statement=f"{curvature} is positive semidefinite",
             applies=applies)(check)


_register_psd("ggn", "Martens s3 (seed 003); Grosse s2.1 (seed 002)",
              lambda p: Loss(p.loss).spec.hessian_psd)
_register_psd("fisher", "Martens s5 (seed 003)", lambda p: True)
_register_psd("empirical_fisher", "Martens s7 (seed 003)", lambda p: True)


def _hessian_witness(problem: Problem) -> bool:
    layers = problem.layers
    return (len(layers) >= 2 and layers[-1].phi.linear and not layers[-1].is_convolution
            and layers[-1].n_in + 1 > problem.batch_size and curved_with_residual(problem))


@identity("hessian_indefinite", source="Martens s3 (seed 003); Grosse s2.1 (seed 002)",
          statement="H is indefinite (multi-layer, identity last layer wider than the batch)",
          applies=_hessian_witness, negative_control=True)
def hessian_indefinite(problem: Problem):
    """Negative control of the PSD identities: `H` has an eigenvalue below `-100 tol MAG`."""
    matrix, mag = _magnitudes(problem)["hessian"]()
    return at_most("hessian_indefinite", problem, min_eigenvalue(matrix, mag),
                   -MARGIN * exact_rtol(problem), "lambda_min(H) / MAG",
                   "Martens s3 (seed 003)", negative_control=True)


def _logvar_witness(problem: Problem) -> bool:
    """Some example has a nonzero residual and the last-layer inputs are linearly independent."""
    if Loss(problem.loss).spec.hessian_psd:
        return False
    ref = reference(problem)
    inputs = np.stack([t.abar[-1] for t in ref.traces])
    return (bool(np.any(ref.loss_grads != 0))
            and np.linalg.matrix_rank(inputs) == problem.batch_size)


@identity("ggn_indefinite_gaussian_logvar", source="Martens s3 (seed 003)",
          statement="G is indefinite for gaussian_logvar (H_L indefinite in (mu, s))",
          applies=_logvar_witness, negative_control=True)
def ggn_indefinite_gaussian_logvar(problem: Problem):
    """Negative control of `ggn_psd`: with a non-convex loss the GGN is not PSD."""
    matrix, mag = _magnitudes(problem)["ggn"]()
    return at_most("ggn_indefinite_gaussian_logvar", problem, min_eigenvalue(matrix, mag),
                   -MARGIN * exact_rtol(problem), "lambda_min(G) / MAG",
                   "Martens s3 (seed 003)", negative_control=True)
