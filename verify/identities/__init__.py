"""The identity battery: a table of theorems, each checked on the dense reference.

| identity | statement | source |
|---|---|---|
| `fisher_equals_ggn` | F = G when z are natural parameters | Martens s8-s9 (003) |
| `fisher_differs_from_ggn` (neg.) | F != G for nll_probs, gaussian_logvar | Martens s9 |
| `fisher_is_expected_ggn` | F = E_y[G(y)] for every loss | Martens s8 |
| `fisher_forms_agree` | E[score score^T] = -E[Hessian log p] | Martens s5; 000/001 |
| `mean_score_vanishes` | E_y[score] = 0 | Martens s5; 000 |
| `empirical_fisher_differs` (neg.) | EF != F | Martens s7 |
| `kl_second_order` | KL(p_theta, p_theta+td) = t^2/2 d^T F d + O(t^3) (mpmath) | Martens s6; 001 |
| `kl_not_ggn` (neg.) | with G, z not natural: the t^2 coefficient differs | Martens s6 |
| `split_invariance` | h, grad, H, F unchanged by moving the softmax | Martens s3, s9 |
| `ggn_depends_on_split` (neg.) | G changes with the split | Martens s3, s9 |
| `hessian_decomposition` | H = G + c sum r_j H_[f]_j | Martens s3 |
| `hessian_equals_ggn_last_layer` | H = G on an identity last layer's block | Martens s3 |
| `hessian_equals_ggn_affine_network` | H = G for an affine network | Martens s3 |
| `hessian_equals_ggn_zero_residual` | H = G at zero residual | Martens s3 |
| `hessian_differs_from_ggn` (neg.) | H != G otherwise | Martens s3 |
| `ggn_psd` | PSD (convex loss) | Martens s3; Grosse s2.1 (002) |
| `fisher_psd`, `empirical_fisher_psd` | PSD | Martens s5, s7 |
| `hessian_indefinite`, `ggn_indefinite_gaussian_logvar` (neg.) | not PSD | Martens s3 |
| `kron_vec` ... `kron_eigendecomposition` | Kronecker algebra | Grosse eqs. (16)-(21) |
| `kron_order_matters` (neg.) | the factor order matters | Grosse eq. (16) |
| `affine_invariance` | undamped H/G/F steps commute with w = R w~ + b | Grosse s2.3; Martens s10 |
| `gradient_descent_not_invariant` (neg.) | gradient descent does not | Grosse eq. (8), s2.3 |
| `damped_steps_not_invariant` (neg.) | damped steps do not | Grosse s2.3 |
| `pullback_curvatures` | G, F, EF -> J_g^T C J_g (nonlinear g) | Martens s10 |
| `hessian_not_pullback` (incl. neg.) | H gains sum_j [grad h]_j H_[g]_j | Martens s10 |
| `damped_steps_descend` | -(C + lambda I)^{-1} g descends, C in {G, F, EF} | Grosse eq. (6) |
| `small_damping_newton_ascends` (neg.) | not so for H + lambda I, lambda small | Grosse s2.1 |
| `reduction_ratio_quadratic` | rho = 1 | Grosse eq. (14), s4.1 |
| `reduction_ratio_large_damping` | rho -> 2; LM | Grosse eq. (14), s4.1 |
| `reduction_ratio_not_one` (neg.) | rho != 1 off the quadratic | Grosse eq. (14) |
| `martens_bound`; `martens_bound_needs_psd_model` (neg.) | best improvement of M | Martens s11 |
| `natural_gradient_minimizes_model` | F = G => NG minimizes M | Martens s11 |
| `natural_gradient_not_model_minimizer` (neg.) | not so when F != G | Martens s11 |
| `optimal_step_stationary` | alpha* of eq. (26) | Grosse eq. (26) |
| `seed_step_formula_literal` (neg.) | eq. (26) as printed (no 1/2) | Grosse eq. (26) |
| `momentum_subspace_stationary` (incl. neg.) | 2-D subspace minimizer | Grosse eq. (27) |
| `trajectory_*` (incl. neg.) | optimizer trajectories (K-FAC, HF, eq. 27, EMA) | PROTOCOL s10 |
| `hessian_matches_gradient_differences` | H v = difference of another gradient | Martens s3 |
| `martens_bound_tight` | equality of the bound when the stacked J_b are onto | Martens s11 |
| `reduction_ratio_damped_quadratic` | exact rho(k d*), damped quadratic; LM | Grosse s4.1 |

plus the K-FAC identities (`verify.identities.kfac`), the convolutional K-FAC identities
(`verify.identities.conv`, PROTOCOL s12), the other methods' identities
(`verify.identities.methods`), rank bounds (`rank`), steepest descent in a metric
(`steepest`), damped spectra and CG vs GD (`convergence`), the natural-parameter Gaussian
(`exponential_family`), jvp/vjp (`products`), seed 004's code (`seed_code`) and the
sampled estimators with their power (`sampled`), Newton's quadratic convergence
(`local_convergence`).
`python -m verify.identities.table` regenerates docs/identities.md's table.
Importing this package registers every identity in
`IDENTITIES`; `verify.battery.run_battery` runs them. docs/identities.md has the full table
with hypotheses.
"""

from verify.identities import (  # noqa: F401  (imported to register their identities)
    conv,
    convergence,
    damping,
    definiteness,
    descent,
    exponential_family,
    fisher,
    hessian,
    invariance,
    kfac,
    kronecker,
    local_convergence,
    methods,
    products,
    quadratic_model,
    rank,
    sampled,
    seed_code,
    split,
    steepest,
    trajectory,
)
from verify.identities._registry import IDENTITIES, Identity

__all__ = ["IDENTITIES", "Identity"]
