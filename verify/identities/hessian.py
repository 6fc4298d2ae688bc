"""The Hessian and the GGN: Martens' decomposition and when the two coincide (seed 003, s3).

    H = G + c sum_b sum_j [dL/dz_b]_j H_[f]_j(x_b),    H_[f]_j = d^2 z_j / dtheta^2,

so `H = G` wherever the second term vanishes: a network affine in theta (every `H_[f]_j = 0`),
a zero residual (`dL/dz = 0` at every example), and -- for any network whose last activation
is the identity -- on the diagonal block of the last layer, in which z is affine.

`hessian_decomposition` alone cannot validate H: the reference computes H and the
network-curvature term with the same routine (`second_order_backward`, linear in its tangent
seed), so an error in that routine cancels. `hessian_matches_gradient_differences` checks H
against an independent computation: `H v = d/dt grad h(theta + t v)` by a central difference
in mpmath of a first-order reverse-mode gradient written here (`mp_gradient`: the forward
rule `s = Wbar abar`, `a = phi(s)`, then `delta_L = dL/dz`, `g_s = phi'(s) delta`,
`grad_Wbar = g_s abar^T`, `delta = W^T g_s`), which uses neither `second_order_backward`, nor
the reference's forward tangents, nor the loss's Hessian or the activations' second
derivatives. For a seeded random v, `E v = 0` for a nonzero error
`E = H_ref - H` only on the null space of E, a set of measure zero (Freivalds' argument), so
one direction identifies the matrix.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem, layer_slices, unflatten
from ngd_ref.dense import Backend, get_activation, get_loss, mp_backend
from verify._policy import tolerance_policy
from verify._tolerance import compare
from verify.identities._common import (
    default_direction,
    exact_rtol,
    gauss_newton_magnitude,
    magnitude,
    reference,
    smooth_along,
)
from verify.identities._registry import identity, result, separated
from verify.identities.fisher import kl_step_scale

__all__ = [
    "affine_network",
    "curved_with_residual",
    "network_curved",
    "hessian_decomposition",
    "hessian_differs_from_ggn",
    "hessian_equals_ggn_affine_network",
    "hessian_equals_ggn_last_layer",
    "hessian_equals_ggn_zero_residual",
    "hessian_gradient_difference",
    "hessian_matches_gradient_differences",
    "mp_gradient",
    "reverse_mode_vjp",
    "zero_residual_twin",
]

SOURCE = "Martens s3 (seed 003)"
#: `t = 2^-FD_EXPONENT / 2^e` (`2^e >= ||J v||_inf`) at FD_DIGITS digits: the central
#: difference's truncation `t^2 |D^3 h| / 6 ~ 1e-24` and rounding `10^-FD_DIGITS / t ~ 1e-28`
#: (relative) are far below float64's rounding of `H v`, so the comparison uses `exact_rtol`.
FD_EXPONENT = 40
FD_DIGITS = 40


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


def _fd_step(problem: Problem, direction: np.ndarray) -> float:
    return 2.0 ** -(FD_EXPONENT + kl_step_scale(problem, direction))


def reverse_mode_vjp(problem: Problem, theta: np.ndarray, bk: Backend,
                     cotangents: np.ndarray | None = None) -> np.ndarray:
    """`sum_b J_b^T u_b` by reverse mode through the dense layers (inside `bk.precision()`).

    Backpropagation `g_s = phi'(s)^T delta` uses `Activation.jacobian_apply` with the
    Jacobian's symmetry (diagonal for elementwise activations, `diag(p) - p p^T` for softmax);
    the layer-l block is `vec(g_s abar^T) = abar (x) g_s` (PROTOCOL s1's column-major vec).
    A convolution (PROTOCOL s12) is the same with the patch matrix: `abar` the `(d + 1, T)`
    columns gathered by `Conv2d.patch_index` (then a row of ones), the block `vec(G Abar^T)`,
    and `W^T G` scattered back onto the input pixels. The cotangents `u_b` (`(B, C)`,
    output-sized) default to `dL/dz_b` at the targets.
    """
    loss = get_loss(problem.loss)
    labels = problem.targets.dtype.kind == "i"
    blocks = [(np.column_stack([w, b]), layer.phi) for (w, b), layer
              in zip(unflatten(problem.layers, theta), problem.layers, strict=True)]
    total = bk.zeros(problem.n_params)
    slices = layer_slices(problem.layers)
    for index_b, (x, y) in enumerate(zip(bk.asarray(problem.inputs), problem.targets,
                                         strict=True)):
        a, tape = x, []
        for wbar, layer in zip((w for w, _ in blocks), problem.layers, strict=True):
            if layer.is_convolution:
                gathered = np.concatenate([a, bk.zeros(1)])[layer.patch_index]
                abar = np.concatenate([gathered, bk.asarray(np.ones((1, layer.n_positions)))])
                s_l = (wbar @ abar).reshape(-1)
            else:
                abar = np.concatenate([a, bk.asarray(np.ones(1))])
                s_l = wbar @ abar
            a = get_activation(layer.activation).value(bk, s_l)
            tape.append((abar, s_l, a))
        delta = (loss.grad(bk, y if labels else bk.asarray(y), a) if cotangents is None
                 else bk.asarray(cotangents[index_b]))
        for index in reversed(range(len(blocks))):
            abar, s_l, a_l = tape[index]
            layer = problem.layers[index]
            g_s = get_activation(layer.activation).jacobian_apply(bk, s_l, a_l, delta)
            w = blocks[index][0][:, :-1]
            if layer.is_convolution:
                big_g = g_s.reshape(w.shape[0], layer.n_positions)
                total[slices[index]] = (total[slices[index]]
                                        + (big_g @ abar.T).reshape(-1, order="F"))
                pixels = bk.zeros(layer.input_size + 1)
                np.add.at(pixels, layer.patch_index, w.T @ big_g)
                delta = pixels[:-1]
            else:
                total[slices[index]] = total[slices[index]] + np.kron(abar, g_s)
                delta = w.T @ g_s
    return total


def mp_gradient(problem: Problem, theta: np.ndarray, bk: Backend) -> np.ndarray:
    """`grad h(theta) = c sum_b J_b^T dL/dz_b` by `reverse_mode_vjp` (inside `bk.precision()`)."""
    return bk.scalar(problem.scale) * reverse_mode_vjp(problem, theta, bk)


def hessian_gradient_difference(problem: Problem, direction: np.ndarray) -> np.ndarray:
    """`(grad h(theta + t v) - grad h(theta - t v)) / (2 t)` in mpmath (`mp_gradient`), float64."""
    bk = mp_backend(FD_DIGITS)
    t = _fd_step(problem, direction)
    with bk.precision():
        theta, v, step = bk.asarray(problem.params), bk.asarray(direction), bk.scalar(t)
        plus = mp_gradient(problem, theta + v * step, bk)
        minus = mp_gradient(problem, theta - v * step, bk)
        return bk.to_float64((plus - minus) / (2 * step))


def _fd_smooth(problem: Problem) -> bool:
    """Hypothesis: no ReLU kink within `theta +- t v` (the difference needs a smooth h)."""
    v = default_direction(problem, "hessian-fd")
    return smooth_along(problem, v, _fd_step(problem, v))


@identity("hessian_matches_gradient_differences", source=SOURCE,
          statement="H v = (grad h(theta + t v) - grad h(theta - t v)) / 2t + O(t^2) "
                    "(first-order gradient, mpmath; independent of second_order_backward)",
          applies=lambda p: p.dense_only and _fd_smooth(p))  # mp_gradient: dense layers only
def hessian_matches_gradient_differences(problem: Problem, *,
                                         direction: np.ndarray | None = None):
    """H against an independent route: a central difference of the gradient (module docstring).

    Magnitude: `||MAG(H) |v|||` of the float64 product (the policy's Hessian magnitude).

    Args:
        problem: the problem (hypothesis: smooth over the difference's steps, `_fd_smooth`).
        direction: `v`, default a seeded unit vector.
    """
    v = default_direction(problem, "hessian-fd") if direction is None else np.asarray(direction)
    ref = reference(problem)
    mag = float(np.linalg.norm(tolerance_policy(problem, "float64").matrix_magnitude("hessian")
                               @ np.abs(v)))
    cmp = compare(ref.hessian @ v, hessian_gradient_difference(problem, v),
                  tolerance=exact_rtol(problem), magnitude=mag)
    return result("hessian_matches_gradient_differences", problem, cmp,
                  "H v = central difference of the first-order gradient (mpmath)", SOURCE)


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
