"""The Gaussian in natural parameters: mean x precision and precision (Martens s8-s9, seed 003).

For `y ~ N(mu, 1/tau)` the natural parameters are `eta = (tau mu, tau)` (sufficient statistic
`(y, -y^2/2)`), with log-partition `A(eta) = eta_1^2 / (2 eta_2) - 1/2 log eta_2 (+ const)`:

    grad^2 A = [[1/eta_2, -eta_1/eta_2^2], [-eta_1/eta_2^2, eta_1^2/eta_2^3 + 1/(2 eta_2^2)]].

In natural parameters the negative log-likelihood's Hessian is `grad^2 A` whatever y, and it is
the Fisher (Martens s9: `F_R = H_L` exactly when z are natural parameters). The loss whose
outputs are (mean, log-variance) halves (`LossSpec.outputs_per_target == 2`, z = (mu, s),
`tau = e^-s`) is not natural; mapped to eta by `J = d eta / d(mu, s) = [[tau, -mu tau],
[0, -tau]]`:

* `gaussian_natural_parameters` -- the reference's `F_R` becomes `J^-T F_R J^-1 = grad^2 A(eta)`,
  and its `H_L` at the observed targets, by the second-order chain rule
  `H_eta = J^-T (H_z - sum_k [J^-T dL/dz]_k grad^2_z eta_k) J^-1`, becomes `grad^2 A(eta)` too
  (y-independent), per example and coordinate;
* negative control `gaussian_logvar_not_natural`: in (mu, s) itself `H_L != F_R` at targets
  away from the mean (the term `(y - mu) e^-s` and `(y - mu)^2 e^-s / 2 - 1/2`), where that
  difference is detectable.

Tolerances: `exact_rtol` relative to `||grad^2 A||` (plus `||J^-1||^2` of the mapping's
amplification of the reference's rounding).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Problem
from verify._tolerance import compare
from verify.identities._common import exact_rtol, reference
from verify.identities._registry import detectable, identity, result, separated

__all__ = ["gaussian_logvar_not_natural", "gaussian_natural_parameters", "natural_hessian"]

SOURCE = "Martens s8-s9 (seed 003): Gaussian natural parameters (tau mu, tau)"


def _mean_logvar(problem: Problem) -> bool:
    """Outputs are (mean, log-variance) halves (`LossSpec.outputs_per_target == 2`)."""
    return Loss(problem.loss).spec.outputs_per_target == 2


def natural_hessian(eta1: float, eta2: float) -> np.ndarray:
    """`grad^2 A(eta)` of the Gaussian's log-partition (module docstring)."""
    return np.array([[1 / eta2, -eta1 / eta2**2],
                     [-eta1 / eta2**2, eta1**2 / eta2**3 + 1 / (2 * eta2**2)]])


def _blocks(problem: Problem):
    """Per example and coordinate: `(J, grad^2 A, F_R block, H_L block, dL/dz block)`."""
    ref = reference(problem)
    half = problem.output_dim // 2
    for z, fisher, hessian, grad in zip(ref.outputs, ref.output_fishers, ref.loss_hessians,
                                        ref.loss_grads, strict=True):
        z = np.asarray(z, dtype=np.float64)
        for c in range(half):
            index = [c, c + half]
            mu, s = float(z[c]), float(z[c + half])
            tau = float(np.exp(-s))
            jac = np.array([[tau, -mu * tau], [0.0, -tau]])
            yield (jac, natural_hessian(mu * tau, tau), np.asarray(fisher)[np.ix_(index, index)],
                   np.asarray(hessian)[np.ix_(index, index)], np.asarray(grad)[index], mu, tau)


@identity("gaussian_natural_parameters", source=SOURCE,
          statement="for z = (mu, log variance) mapped to eta = (tau mu, tau): J^-T F_R J^-1 = "
                    "grad^2 A(eta) = the NLL Hessian in eta at any target",
          applies=_mean_logvar)
def gaussian_natural_parameters(problem: Problem):
    """Both sides per example and coordinate (module docstring)."""
    out = []
    for k, (jac, exact, fisher, hessian, grad, mu, tau) in enumerate(_blocks(problem)):
        inv = np.linalg.inv(jac)
        g_eta = inv.T @ grad
        second = (g_eta[0] * np.array([[0.0, -tau], [-tau, mu * tau]])
                  + g_eta[1] * np.array([[0.0, 0.0], [0.0, tau]]))
        tol = exact_rtol(problem) * float(np.linalg.norm(inv)) ** 2 * max(
            1.0, float(np.linalg.norm(jac)) ** 2)
        mag = float(np.linalg.norm(inv) ** 2 * (np.linalg.norm(fisher) + np.linalg.norm(hessian)
                                                 + np.linalg.norm(second)))
        out += [result("gaussian_natural_parameters", problem,
                       compare(inv.T @ fisher @ inv, exact, tolerance=tol, magnitude=mag),
                       f"output {k}: J^-T F_R J^-1 = grad^2 A(eta)", SOURCE),
                result("gaussian_natural_parameters", problem,
                       compare(inv.T @ (hessian - second) @ inv, exact, tolerance=tol,
                               magnitude=mag),
                       f"output {k}: NLL Hessian in eta = grad^2 A(eta) (y-independent)", SOURCE)]
    return out


def _gap(problem: Problem) -> bool:
    if not _mean_logvar(problem):
        return False
    ref = reference(problem)
    diff = float(np.linalg.norm(np.asarray(ref.loss_hessians) - np.asarray(ref.output_fishers)))
    scale = float(np.linalg.norm(ref.output_fishers) + np.linalg.norm(ref.loss_hessians))
    return detectable(diff / max(scale, np.finfo(float).tiny), exact_rtol(problem))


@identity("gaussian_logvar_not_natural", source=SOURCE, negative_control=True,
          statement="in z = (mu, log variance) the NLL Hessian at the targets is not the "
                    "Fisher: (mu, s) are not natural parameters", applies=_gap)
def gaussian_logvar_not_natural(problem: Problem):
    """Negative control (hypothesis: `||H_L - F_R||` detectable against rounding)."""
    ref = reference(problem)
    scale = float(np.linalg.norm(ref.output_fishers) + np.linalg.norm(ref.loss_hessians))
    return separated("gaussian_logvar_not_natural", problem,
                     compare(ref.loss_hessians, ref.output_fishers, tolerance=exact_rtol(problem),
                             magnitude=scale), "H_L != F_R in (mu, s)", SOURCE)
