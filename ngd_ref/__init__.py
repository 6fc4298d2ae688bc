"""ngd_ref: reference implementations of second-order optimization for neural networks.

* `ngd_ref.dense` -- the exact, framework-free reference (numpy/scipy float64, and the same
  formulas in mpmath to certify it). Importing it never imports JAX.
* `ngd_ref.jax` -- the scalable JAX twin (curvature-vector products, CG, Hessian-free, K-FAC).

This top-level module holds what both share: the `Problem` contract (PROTOCOL section 1),
the model spec (what each loss, activation and layer kind declares about itself,
`ngd_ref._spec`), the canonical parameter layout and the built-in problem zoo.
"""

from ngd_ref import _zoo as zoo
from ngd_ref._layout import (
    flatten,
    from_flax,
    from_torch,
    layer_slices,
    to_flax,
    to_torch,
    unflatten,
)
from ngd_ref._problem import Problem, ProblemError
from ngd_ref._problem_io import write_problems
from ngd_ref._spec import (
    ACTIVATIONS,
    LOSSES,
    ActivationSpec,
    Layer,
    Loss,
    LossSpec,
    Probabilities,
    Reduction,
    TargetKind,
    activation_spec,
    loss_spec,
)

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "ActivationSpec",
    "Layer",
    "Loss",
    "LossSpec",
    "Probabilities",
    "Problem",
    "ProblemError",
    "Reduction",
    "TargetKind",
    "activation_spec",
    "loss_spec",
    "flatten",
    "from_flax",
    "from_torch",
    "layer_slices",
    "to_flax",
    "to_torch",
    "unflatten",
    "write_problems",
    "zoo",
]
