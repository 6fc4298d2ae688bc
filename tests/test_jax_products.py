"""ngd_ref.jax products and diagonals against the dense reference (float64 and float32)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import jax as nj
from ngd_ref import zoo
from verify._policy import tolerance_policy
from verify._tolerance import compare, rounding_rtol

pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest


# one problem per loss (and a deep/sum case): each product compiles once per problem
PROBLEMS = [p for p in zoo.problems(quick=True)]
KINDS = {"hessian": nj.hvp, "ggn": nj.ggn_vp, "fisher": nj.fisher_vp,
         "empirical_fisher": nj.empirical_fisher_vp}


def _probe(problem):
    return np.random.default_rng(0).standard_normal(problem.n_params)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_products_match_dense_reference(problem, dtype):
    objective, params, batch = nj.from_problem(problem, dtype)
    b = tolerance_policy(problem, dtype)
    v = _probe(problem)
    tree = nj.mlp_params(problem.layers, v, dtype)
    together = nj.curvature_products(objective, params, batch, tree)  # all four in one program
    for kind, product in KINDS.items():
        desired = b.ref.matrix(kind) @ v
        magnitude = float(np.linalg.norm(b.matrix_magnitude(kind) @ np.abs(v)))
        for actual in (product(objective, params, batch, tree), together[kind]):
            actual = np.asarray(nj.canonical_vector(actual))
            assert actual.dtype == np.dtype(dtype)
            comparison = compare(actual, desired, tolerance=b.rtol, magnitude=magnitude)
            assert comparison.passed, f"{kind}: {comparison.describe()}"


@pytest.mark.parametrize("problem", PROBLEMS[:4], ids=lambda p: p.name)
def test_exact_diagonals(problem):
    objective, params, batch = nj.from_problem(problem)
    b = tolerance_policy(problem, "float64")
    together = nj.exact_diagonals(objective, params, batch)  # one pass serves G, F, EF
    computed = [(kind, fn(objective, params, batch)) for kind, fn in (
        ("ggn", nj.ggn_diag), ("fisher", nj.fisher_diag),
        ("empirical_fisher", nj.empirical_fisher_diag), ("hessian", nj.hessian_diag))]
    computed += [(f"{kind} (exact_diagonals)", diagonal) for kind, diagonal in together.items()]
    for label, diagonal in computed:
        kind = label.split()[0]
        comparison = compare(nj.canonical_vector(diagonal), np.diag(b.ref.matrix(kind)),
                             tolerance=b.rtol,
                             magnitude=float(np.linalg.norm(np.diag(b.matrix_magnitude(kind)))))
        assert comparison.passed, f"{label}: {comparison.describe()}"


def test_exact_diagonals_of_the_hessian_is_refused():
    objective, params, batch = nj.from_problem(zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3"))
    with pytest.raises(ValueError, match="hessian_diag"):
        nj.exact_diagonals(objective, params, batch, ("ggn", "hessian"))


def test_ggn_vp_without_reduction_constant_fails():
    """Negative control: a GGN-vp that forgets c = 1/B is caught by the same comparison."""
    problem = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    objective, params, batch = nj.from_problem(problem)
    b = tolerance_policy(problem, "float64")
    v = _probe(problem)
    summed = nj.Objective(objective.apply, objective.loss, "sum")  # the bug: no 1/B
    actual = nj.canonical_vector(nj.ggn_vp(summed, params, batch, nj.mlp_params(problem.layers, v)))
    comparison = compare(actual, b.ref.ggn @ v, tolerance=b.rtol,
                         magnitude=float(np.linalg.norm(b.matrix_magnitude("ggn") @ np.abs(v))))
    assert comparison.error > 100 * comparison.tolerance


def test_jitted_products_do_not_recompile():
    problem = zoo.get("mlp-3x4x3-tanh-mse-b3")
    objective, params, batch = nj.from_problem(problem)
    v = params
    nj.ggn_vp(objective, params, batch, v)
    before = nj.curvature_vp._cache_size()
    for _ in range(3):
        objective2, params2, batch2 = nj.from_problem(problem)  # equal objective, new arrays
        nj.ggn_vp(objective2, params2, batch2, v)
    assert nj.curvature_vp._cache_size() == before


def _compilations(run) -> int:
    """XLA compilations while `run()` executes (JAX's compile log)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, logger = Collect(logging.DEBUG), logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return sum("Finished XLA compilation" in m for m in messages)


def test_host_conversions_compile_nothing():
    """Regression: `from_problem`, K-FAC's and the trajectory twin's inputs were converted by
    eager `jnp.asarray(x, dtype)` and `mlp_params` (a program per slice, shape and dtype: half
    of `check --adapter ngd-ref-jax --quick`'s 926 compilations)."""
    problem = zoo.get("mlp-3x4x3-tanh-mse-b3")

    def convert():
        nj.from_problem(problem, "float32")
        nj.device_params(problem.layers, problem.params, "float32")
        nj.to_device(problem.inputs, "float32")

    assert _compilations(convert) == 0
    # the control: the log sees a compilation (a new jitted function always compiles)
    theta = nj.to_device(problem.params, "float32")
    assert _compilations(lambda: jax.jit(lambda x: x * 3)(theta)) >= 1


def test_strict_dtype_promotion_float32():
    problem = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    objective, params, batch = nj.from_problem(problem, "float32")
    with jax.numpy_dtype_promotion("strict"):
        for product in KINDS.values():
            out = product(objective, params, batch, params)
            assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out))
        assert nj.loss_value(objective, params, batch).dtype == jnp.float32


def test_objective_validation_names_argument():
    with pytest.raises(ValueError, match="reduction"):
        nj.Objective(nj.mlp_apply(("tanh",)), "mse", "avg")
    with pytest.raises(ValueError, match="loss"):
        nj.Objective(nj.mlp_apply(("tanh",)), "hinge")


@pytest.mark.parametrize("loss, z", [
    ("softmax_cross_entropy", [40.0, 0.0, -3.0]),
    ("sigmoid_cross_entropy", [40.0, -0.5, 25.0]),
], ids=["softmax", "sigmoid"])
def test_output_fisher_of_a_saturated_distribution_keeps_its_accuracy(loss, z):
    """`F_R u` at `p_max = 1 - 4e-18`, closed form and by autodiff, must not cancel.

    Found by `ngd-verify run --fuzz`: a GGN-vp 2.8e-6 off in float64, an HVP 1.3x its tolerance
    off in float32.

    The exact value is the dense reference's `F_R` in mpmath at 50 digits; float64 keeps every
    entry to rounding, where `p * u - p * (p^T u)` lost all digits of the largest entry.
    """
    from ngd_ref.dense import get_loss, mp_backend

    u = np.array([0.75, -1.25, 0.5])
    bk = mp_backend(50)
    with bk.precision():
        fisher = get_loss(loss).moments(bk, bk.asarray(np.asarray(z))).fisher
        exact = bk.to_float64(fisher @ bk.asarray(u))
    jloss, z = nj.get_jax_loss(loss), jnp.asarray(z)
    y = jnp.asarray(0 if loss == "softmax_cross_entropy" else [1.0, 0.0, 1.0])
    closed_form = jloss.fisher_vp(z, jnp.asarray(u))
    # What every product differentiates: forward-over-reverse of the loss value (= H_L u).
    autodiff = jax.jvp(lambda z: jax.grad(jloss.value, argnums=1)(y, z), (z,), (jnp.asarray(u),))[1]
    # C = 3 terms of depth <= 3 (a probability, a difference, a product) per entry
    rtol = rounding_rtol("float64", length=3, depth=3)
    for got in (closed_form, autodiff):
        np.testing.assert_allclose(np.asarray(got), exact, rtol=rtol, atol=0)
