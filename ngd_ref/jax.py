"""The scalable JAX implementation: the twin of `ngd_ref.dense`, for real networks.

Works on any model `apply(params, inputs) -> outputs` with `params` a pytree, plus one of
the losses of PROTOCOL section 2 (an `Objective`); the protocol's MLP is `mlp_apply`.
Everything is jit-compiled and runs in float32 or float64 (the dtype of `params`), on one
device or with the batch sharded over a mesh (`mesh=batch_mesh(n)`). See docs/jax.md.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ngd_ref import jax as nj
    >>> apply = nj.mlp_apply(("tanh", "identity"))
    >>> params = [(jnp.ones((4, 3)) / 4, jnp.zeros(4)), (jnp.ones((2, 4)) / 4, jnp.zeros(2))]
    >>> batch = nj.Batch(jnp.ones((5, 3)), jnp.zeros((5, 2)))
    >>> obj = nj.Objective(apply, "mse")
    >>> gv = nj.ggn_vp(obj, params, batch, params)          # G v with v = params
    >>> step, info = nj.damped_update(obj, params, batch, 1e-3)
"""

from ngd_ref._activations_jax import ACTIVATIONS_JAX
from ngd_ref._losses_jax import JaxLoss, get_jax_loss
from ngd_ref._sharding import batch_mesh
from ngd_ref.cg._jax import CGResult, CGStatus, cg, cg_iterates, cg_solve
from ngd_ref.curvature._jax import (
    Batch,
    Objective,
    canonical_vector,
    curvature_operator,
    curvature_products,
    curvature_vp,
    device_params,
    empirical_fisher_diag,
    empirical_fisher_vp,
    exact_diagonals,
    fisher_diag,
    fisher_vp,
    from_problem,
    ggn_diag,
    ggn_vp,
    gradient,
    hessian_diag,
    hutchinson_diag,
    hvp,
    loss_value,
    mc_fisher_vp,
    mlp_apply,
    mlp_params,
    network_apply,
    to_device,
    value_and_gradient,
)
from ngd_ref.hf._jax import (
    HessianFree,
    HFInfo,
    HFState,
    damped_update,
    hessian_free,
    hf_quadratic_model,
    levenberg_marquardt,
    reduction_ratio,
)
from ngd_ref.kfac._jax import (
    DenseNetwork,
    Estimator,
    damped_solve_layers,
    flax_network,
    kfac_factors,
    kfac_solve,
    kfac_statistics,
    mlp_network,
)
from ngd_ref.kfac._optimizer import Kfac, KfacInfo, KfacState, kfac
from ngd_ref.lowrank._jax import lowrank_ggn_update
from ngd_ref.newton._jax import trust_region_update
from ngd_ref.quasi_newton._jax import bfgs_update, lbfgs_direction
from ngd_ref.sampled._jax import (
    lanczos,
    mc_fisher,
    mc_fisher_diag,
    mc_kfac_s,
    output_jacobians,
    per_example_gradients,
    sampled_scores,
    sketch_scores,
)
from ngd_ref.shampoo._jax import (
    InverseRootResult,
    coupled_newton_inverse_root,
    inverse_root,
    shampoo_direction,
)
from ngd_ref.trajectory._jax import trajectory_jax

__all__ = [
    "ACTIVATIONS_JAX",
    "Batch",
    "DenseNetwork",
    "Estimator",
    "Kfac",
    "KfacInfo",
    "KfacState",
    "CGResult",
    "CGStatus",
    "HFInfo",
    "HFState",
    "HessianFree",
    "JaxLoss",
    "Objective",
    "batch_mesh",
    "canonical_vector",
    "cg",
    "cg_iterates",
    "cg_solve",
    "curvature_operator",
    "curvature_products",
    "curvature_vp",
    "damped_solve_layers",
    "damped_update",
    "device_params",
    "empirical_fisher_diag",
    "exact_diagonals",
    "empirical_fisher_vp",
    "fisher_diag",
    "fisher_vp",
    "flax_network",
    "from_problem",
    "get_jax_loss",
    "ggn_diag",
    "ggn_vp",
    "gradient",
    "hessian_diag",
    "hessian_free",
    "hf_quadratic_model",
    "hutchinson_diag",
    "hvp",
    "kfac",
    "kfac_factors",
    "kfac_solve",
    "kfac_statistics",
    "levenberg_marquardt",
    "loss_value",
    "mc_fisher_vp",
    "lanczos",
    "mc_fisher",
    "mc_fisher_diag",
    "mc_kfac_s",
    "output_jacobians",
    "per_example_gradients",
    "sampled_scores",
    "sketch_scores",
    "mlp_apply",
    "network_apply",
    "mlp_network",
    "mlp_params",
    "reduction_ratio",
    "to_device",
    "value_and_gradient",
    "InverseRootResult",
    "bfgs_update",
    "coupled_newton_inverse_root",
    "inverse_root",
    "lbfgs_direction",
    "lowrank_ggn_update",
    "shampoo_direction",
    "trajectory_jax",
    "trust_region_update",
]
