"""The Hessian and the GGN: Martens' decomposition and when the two coincide (seed 003, s3).

    H = G + c sum_b sum_j [dL/dz_b]_j H_[f]_j(x_b),    H_[f]_j = d^2 z_j / dtheta^2,

so `H = G` wherever the second term vanishes: a network affine in theta (every `H_[f]_j = 0`),
a zero residual (`dL/dz = 0` at every example), and -- for any network whose last activation
is the identity -- on the diagonal block of the last layer, in which z is affine.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem, layer_slices
from verify._tolerance import compare
from verify.identities._common import exact_rtol, gauss_newton_magnitude, magnitude, reference
from verify.identities._registry import identity, result, separated

__all__ = [
    "affine_network",
    "curved_with_residual",
    "network_curved",
    "hessian_decomposition",
    "hessian_differs_from_ggn",
    "hessian_equals_ggn_affine_network",
    "hessian_equals_ggn_last_layer",
    "hessian_equals_ggn_zero_residual",
    "zero_residual_twin",
]

SOURCE = "Martens s3 (seed 003)"


def affine_network(problem: Problem) -> bool:
    """Whether z is affine in theta: one layer with the identity activation."""
    return len(problem.layers) == 1 and problem.layers[0].phi.linear


def _ggn_tolerance(problem: Problem):
    ref = reference(problem)
    mag = magnitude(ref.hessian - ref.ggn) + gauss_newton_magnitude(ref, ref.loss_hessians)
    return ref, exact_rtol(problem), mag


@identity("hessian_decomposition", source=SOURCE,
          statement="H = G + c sum_b sum_j [dL/dz_b]_j d^2 z_bj/dtheta^2")
def hessian_decomposition(problem: Problem):
    """Martens s3's decomposition of the Hessian into the GGN and the network-curvature term."""
    ref, tol, mag = _ggn_tolerance(problem)
    rebuilt = ref.ggn + ref.output_hessian_term(ref.loss_grads)
    cmp = compare(rebuilt, ref.hessian, tolerance=tol, magnitude=mag)
    return result("hessian_decomposition", problem, cmp, "G + sum_j r_j H_[f]_j = H", SOURCE)


@identity("hessian_equals_ggn_last_layer", source=SOURCE,
          statement="H and G share the last layer's diagonal block "
                    "when its activation is the identity",
          applies=lambda p: p.layers[-1].phi.linear)
def hessian_equals_ggn_last_layer(problem: Problem):
    """`H_LL = G_LL` for the last layer's block.

    z is affine in `Wbar_L`, so `H_[f]_j` vanishes there.
    """
    ref, tol, mag = _ggn_tolerance(problem)
    last = layer_slices(problem.layers)[-1]
    cmp = compare(ref.hessian[last, last], ref.ggn[last, last], tolerance=tol, magnitude=mag)
    return result("hessian_equals_ggn_last_layer", problem, cmp,
                  "H = G on the last (affine) layer's block", SOURCE)


@identity("hessian_equals_ggn_affine_network", source=SOURCE,
          statement="H = G when the network is affine in theta", applies=affine_network)
def hessian_equals_ggn_affine_network(problem: Problem):
    """`H = G` for a one-layer linear network: every `H_[f]_j` is zero."""
    ref, tol, mag = _ggn_tolerance(problem)
    cmp = compare(ref.hessian, ref.ggn, tolerance=tol, magnitude=mag)
    return result("hessian_equals_ggn_affine_network", problem, cmp,
                  "H = G (affine network)", SOURCE)


def zero_residual_twin(problem: Problem) -> Problem:
    """The problem with targets replaced by the network's outputs (so `dL/dz = 0` exactly).

    Raises:
        ValueError: for a loss that is not a residual loss (`LossSpec.residual`: no target
            makes every `dL/dz` vanish).
    """
    if not Loss(problem.loss).spec.residual:
        raise ValueError(f"problem: zero-residual targets exist for residual losses only (mse), "
                         f"got {problem.loss!r}")
    outputs = np.asarray(reference(problem).outputs, dtype=np.float64)
    return problem.replace(name=f"{problem.name}/zero-residual", targets=outputs)


@identity("hessian_equals_ggn_zero_residual", source=SOURCE,
          statement="H = G at zero residual (mse with targets = outputs)",
          applies=lambda p: Loss(p.loss).spec.residual)
def hessian_equals_ggn_zero_residual(problem: Problem):
    """`H = G` when `dL/dz = 0` for every example (checked on `zero_residual_twin`)."""
    twin = zero_residual_twin(problem)
    ref, tol, mag = _ggn_tolerance(twin)
    cmp = compare(ref.hessian, ref.ggn, tolerance=tol, magnitude=mag)
    return result("hessian_equals_ggn_zero_residual", problem, cmp,
                  "H = G with targets = outputs", SOURCE)


def network_curved(problem: Problem) -> bool:
    """Whether z is curved in theta at this point.

    True when the last activation is softmax, or when there are hidden layers and z actually
    depends on their parameters (`J_b` nonzero outside the last layer: not a fully dead ReLU
    network, which is locally affine).
    """
    if affine_network(problem):
        return False
    if not problem.layers[-1].phi.linear:
        return True
    earlier = layer_slices(problem.layers)[-1].start
    return bool(np.any(reference(problem).jacobians[:, :, :earlier] != 0))


def curved_with_residual(problem: Problem) -> bool:
    """Hypotheses of `hessian_differs_from_ggn`: z curved in theta, and a residual to weigh it."""
    return network_curved(problem) and bool(np.any(reference(problem).loss_grads != 0))


@identity("hessian_differs_from_ggn", source=SOURCE,
          statement="H != G when the network is not affine and the residual is nonzero",
          applies=curved_with_residual, negative_control=True)
def hessian_differs_from_ggn(problem: Problem):
    """Negative control of the `hessian_equals_ggn_*` identities: the second term is there."""
    ref, tol, mag = _ggn_tolerance(problem)
    cmp = compare(ref.hessian, ref.ggn, tolerance=tol, magnitude=mag)
    return separated("hessian_differs_from_ggn", problem, cmp, "H != G", SOURCE)
