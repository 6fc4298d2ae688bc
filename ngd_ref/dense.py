"""The dense exact reference: explicit H, G, F, EF for tiny networks, without autodiff.

Everything here is numpy/scipy (float64) or, with `backend=mp_backend(dps)`, mpmath at `dps`
digits through the very same code. It never imports JAX: it is the independent oracle that
the JAX implementation and third-party ports are checked against.

Example:
    >>> from ngd_ref import zoo, dense
    >>> ref = dense.dense(zoo.get("mlp-3x4x3-tanh-mse-b1"))
    >>> ref.hessian.shape, ref.ggn.shape
    ((31, 31), (31, 31))
"""

from ngd_ref._activations import Activation, get_activation
from ngd_ref._backend import FLOAT64, Backend, mp_backend
from ngd_ref._certify import agreement_digits, certify, mp_self_agreement
from ngd_ref._losses import CategoricalLoss, OutputLoss, OutputMoments, get_loss
from ngd_ref.cg._dense import (
    CGResult,
    cg,
    cg_iterates,
    cg_solve,
    iterate_condition,
    iterate_conditions,
    krylov_optimal_iterate,
    krylov_optimal_iterates,
)
from ngd_ref.curvature._dense import (
    Curvature,
    DenseCurvature,
    ExampleTrace,
    dense,
    network_outputs,
    second_order_backward,
    trace_example,
)
from ngd_ref.diagonal._dense import (
    diagonal_update,
    ema_second_moment,
    empirical_fisher_diag,
    ggn_diag,
    hessian_diag,
    hutchinson_diag,
    hutchinson_range,
    hutchinson_variance,
    sampled_label_second_moment,
    squared_gradient,
)
from ngd_ref.hf._dense import (
    SubspaceStep,
    hf_quadratic_model,
    levenberg_marquardt,
    momentum_subspace_step,
    optimal_step_size,
    reduction_ratio,
)
from ngd_ref.kfac._conv import (
    ConvExactnessRegime,
    conv_block,
    conv_exactness_regimes,
    conv_position_pieces,
)
from ngd_ref.kfac._dense import (
    DampingMethod,
    ExactnessRegime,
    KfacApprox,
    KfacApproximation,
    KfacKind,
    damped_factors,
    ema_update,
    exact_diagonal_blocks,
    exactness_regimes,
    factored_damping_pi,
    kfac_approximation,
    kfac_factors,
    kfac_factors_of,
    kfac_magnitudes,
    kfac_magnitudes_of,
    kfac_matrix,
    kfac_solve,
    kfac_solve_factors,
    kfac_trace_rounding_of,
)
from ngd_ref.lowrank._dense import block_diagonal, lowrank_ggn_update, unscaled_damping_ggn_update
from ngd_ref.newton._dense import (
    absolute_hessian,
    newton_update,
    quadratic_model,
    trust_region_update,
)
from ngd_ref.quasi_newton._dense import (
    bfgs_update,
    broyden_rank1_update,
    inverse_bfgs_matrix,
    inverse_bfgs_update,
    lbfgs_direction,
    lbfgs_step,
)
from ngd_ref.shampoo._dense import (
    InverseRootResult,
    coupled_newton_inverse_root,
    inverse_root,
    matrix_power,
    polar_factor,
    power_iteration,
    shampoo_direction,
    shampoo_statistics,
)

__all__ = [
    "Activation",
    "Backend",
    "CGResult",
    "CategoricalLoss",
    "Curvature",
    "DampingMethod",
    "DenseCurvature",
    "ConvExactnessRegime",
    "ExactnessRegime",
    "KfacApprox",
    "ExampleTrace",
    "FLOAT64",
    "InverseRootResult",
    "KfacApproximation",
    "KfacKind",
    "OutputLoss",
    "OutputMoments",
    "SubspaceStep",
    "absolute_hessian",
    "agreement_digits",
    "bfgs_update",
    "block_diagonal",
    "broyden_rank1_update",
    "certify",
    "cg",
    "cg_iterates",
    "cg_solve",
    "iterate_condition",
    "iterate_conditions",
    "coupled_newton_inverse_root",
    "damped_factors",
    "dense",
    "diagonal_update",
    "ema_second_moment",
    "ema_update",
    "empirical_fisher_diag",
    "exact_diagonal_blocks",
    "exactness_regimes",
    "factored_damping_pi",
    "get_activation",
    "get_loss",
    "ggn_diag",
    "hessian_diag",
    "hf_quadratic_model",
    "hutchinson_diag",
    "hutchinson_range",
    "hutchinson_variance",
    "inverse_bfgs_matrix",
    "inverse_bfgs_update",
    "inverse_root",
    "kfac_approximation",
    "conv_block",
    "conv_exactness_regimes",
    "conv_position_pieces",
    "kfac_factors",
    "kfac_factors_of",
    "kfac_magnitudes",
    "kfac_magnitudes_of",
    "kfac_trace_rounding_of",
    "kfac_matrix",
    "kfac_solve",
    "kfac_solve_factors",
    "krylov_optimal_iterate",
    "krylov_optimal_iterates",
    "lbfgs_direction",
    "lbfgs_step",
    "levenberg_marquardt",
    "lowrank_ggn_update",
    "matrix_power",
    "momentum_subspace_step",
    "mp_backend",
    "mp_self_agreement",
    "network_outputs",
    "newton_update",
    "optimal_step_size",
    "polar_factor",
    "power_iteration",
    "quadratic_model",
    "reduction_ratio",
    "sampled_label_second_moment",
    "second_order_backward",
    "shampoo_direction",
    "shampoo_statistics",
    "squared_gradient",
    "trace_example",
    "trust_region_update",
    "unscaled_damping_ggn_update",
]
