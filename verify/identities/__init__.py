"""The identity battery: a table of theorems, each checked on the dense reference.

| identity | statement | source |
|---|---|---|
| `fisher_equals_ggn` | F = G when z are natural parameters | Martens s8-s9 (003) |
| `fisher_differs_from_ggn` (neg.) | F != G for nll_probs, gaussian_logvar | Martens s9 |
| `fisher_is_expected_ggn` | F = E_y[G(y)] for every loss | Martens s8 |
| `fisher_forms_agree` | E[score score^T] = -E[Hessian log p] | Martens s5; 000/001 |
| `mean_score_vanishes` | E_y[score] = 0 | Martens s5; 000 |
| `empirical_fisher_differs` (neg.) | EF != F | Martens s7 |
| `kl_second_order` | KL(p_theta, p_theta+td) = 1/2 t^2 d^T F d + O(t^3): t^2 coefficient in mpmath | Martens s6; 001 |
| `kl_not_ggn` (neg.) | with G, z not natural: the t^2 coefficient differs | Martens s6 |
| `split_invariance` | h, grad, H, F unchanged by moving the softmax | Martens s3, s9 |
| `ggn_depends_on_split` (neg.) | G changes with the split | Martens s3, s9 |
| `hessian_decomposition` | H = G + c sum r_j H_[f]_j | Martens s3 |
| `hessian_equals_ggn_last_layer` | H = G on an identity last layer's block | Martens s3 |
| `hessian_equals_ggn_affine_network` | H = G for an affine network | Martens s3 |
| `hessian_equals_ggn_zero_residual` | H = G at zero residual | Martens s3 |
| `hessian_differs_from_ggn` (neg.) | H != G otherwise | Martens s3 |
| `ggn_psd`, `fisher_psd`, `empirical_fisher_psd` | PSD (G: convex loss) | Martens s3, s5, s7; Grosse s2.1 (002) |
| `hessian_indefinite`, `ggn_indefinite_gaussian_logvar` (neg.) | not PSD | Martens s3 |
| `kron_vec` ... `kron_eigendecomposition`; `kron_order_matters` (neg.) | Kronecker algebra | Grosse eqs. (16)-(21) |
| `affine_invariance` | undamped Newton/GN/NG steps commute with w = R w~ + b | Grosse s2.3; Martens s10 |
| `gradient_descent_not_invariant`, `damped_steps_not_invariant` (neg.) | they do not | Grosse eq. (8), s2.3 |
| `pullback_curvatures` | G, F, EF -> J_g^T C J_g (nonlinear g) | Martens s10 |
| `hessian_not_pullback` (incl. neg.) | H gains sum_j [grad h]_j H_[g]_j | Martens s10 |
| `damped_steps_descend` | -(C + lambda I)^{-1} g descends, C in {G, F, EF} | Grosse eq. (6) |
| `small_damping_newton_ascends` (neg.) | not so for H + lambda I, lambda small | Grosse s2.1 |
| `reduction_ratio_quadratic`, `reduction_ratio_large_damping` | rho = 1; rho -> 2; LM | Grosse eq. (14), s4.1 |
| `reduction_ratio_not_one` (neg.) | rho != 1 off the quadratic | Grosse eq. (14) |
| `martens_bound`; `martens_bound_needs_psd_model` (neg.) | best improvement of M | Martens s11 |
| `natural_gradient_minimizes_model`; `..._not_model_minimizer` (neg.) | F = G => NG minimizes M | Martens s11 |
| `optimal_step_stationary`; `seed_step_formula_literal` (neg.) | alpha* of eq. (26) | Grosse eq. (26) |
| `momentum_subspace_stationary` (incl. neg.) | 2-D subspace minimizer | Grosse eq. (27) |

plus the K-FAC identities (`verify.identities.kfac`) and the other methods' identities
(`verify.identities.methods`). Importing this package registers every identity in
`IDENTITIES`; `verify.battery.run_battery` runs them. docs/identities.md has the full table
with hypotheses.
"""

from verify.identities import (  # noqa: F401  (imported to register their identities)
    damping,
    definiteness,
    descent,
    fisher,
    hessian,
    invariance,
    kfac,
    kronecker,
    methods,
    quadratic_model,
    split,
)
from verify.identities._registry import IDENTITIES, Identity

__all__ = ["IDENTITIES", "Identity"]
