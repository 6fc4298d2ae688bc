"""Problems and tolerances shared by the real-library tests (`test_real_*.py`)."""

from __future__ import annotations

from ngd_ref import zoo

ONE_EXAMPLE = zoo.get("mlp-3x4x3-tanh-mse-b1")
BATCHED = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
BATCHED_MSE = zoo.get("deep-linear-2x3x3x2-mse-b4")
SIGMOID_CE = zoo.get("mlp-3x4x3-relu-sigmoid_cross_entropy-b3")
KFAC_JAX_SKIP = "kfac_jax not installed (tox -e kfac-jax: kfac-jax 0.0.8 needs jax 0.9.0)"


def f64_tolerance(problem, depth: int) -> float:
    """The policy's float64 rounding tolerance for `problem` at `depth`."""
    from verify._tolerance import rounding_rtol

    return rounding_rtol("float64", length=problem.n_params, depth=depth)


def reference_tolerance(problem) -> float:
    """`f64_tolerance` at the depth of the problem's network plus the loss."""
    return f64_tolerance(problem, depth=len(problem.layers) + 2)
