"""kfac-jax on PROTOCOL s12 convolutions: pinned verdicts and findings (docs/findings.md).

Skipped where kfac_jax is absent (tox -e kfac-jax: kfac-jax 0.0.8 needs jax 0.9.0). The
quick conv problems (`zoo.QUICK_CONV`): two convolutions with padding and stride under a dense
softmax head (`CE`, T = 25 and 4), a convolution as last layer with one output channel under
sigmoid cross-entropy (`BCE`, T = 4 and 1) and a Poisson problem (no registration).
"""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import layer_slices, unflatten, zoo
from ngd_ref.dense import kfac_factors, kfac_solve
from verify import Status
from verify._policy import tolerance_policy
from verify._tolerance import compare
from verify.harness import load_adapter, run_checks, trajectory_batches, trajectory_reference

KFAC_JAX_SKIP = "kfac_jax not installed (tox -e kfac-jax: kfac-jax 0.0.8 needs jax 0.9.0)"
CE, BCE, POISSON = (zoo.get(name) for name in zoo.QUICK_CONV)
EXACT = ["loss", "hessian", "ggn", "fisher", "empirical_fisher", "hvp", "ggn_vp", "fisher_vp"]

pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX for the by-hand parts (conftest)


def _port():
    pytest.importorskip("kfac_jax", reason=KFAC_JAX_SKIP)
    from verify.adapters.kfac_jax_adapter import KfacJax

    return KfacJax()


def _results(problem, capabilities):
    report = run_checks(load_adapter("kfac-jax"), [problem], capabilities=capabilities)
    return [r for r in report.results if r.problem != "*"]


@pytest.mark.parametrize("problem", [CE, BCE], ids=lambda p: p.name)
def test_kfac_jax_conv_exact_curvature_passes(problem):
    """`register_conv2d` (NCHW images, HWIO kernels): loss, H, G, F, EF and their products."""
    _port()
    results = _results(problem, EXACT)
    assert {Status(r.status) for r in results} == {Status.PASS}, \
        [f"{r.check}: {r.message}" for r in results if Status(r.status) is not Status.PASS][:3]
    assert {r.capability for r in results} == set(EXACT)


#: per problem, the K-FAC checks that fail (finding: pi-adjusted damping of a 1x1 factor)
KFAC_FAILURES = {CE.name: set(), BCE.name: {"factored"}}


@pytest.mark.parametrize("problem", [CE, BCE], ids=lambda p: p.name)
def test_kfac_jax_conv_kfac_verdicts(problem):
    """Expand passes (factors of every kind, eigen solves, the omitted-approx defaults); reduce
    is declined (skip); factored solves fail where a layer has one output channel."""
    _port()
    results = _results(problem, ["kfac_factors", "kfac_solve"])
    by_status: dict[Status, set[str]] = {}
    for r in results:
        by_status.setdefault(Status(r.status), set()).add(r.check)
    skipped = by_status.get(Status.SKIP, set())
    assert skipped and all("_reduce" in check for check in skipped)
    assert all("no K-FAC-reduce" in r.message for r in results if Status(r.status) is Status.SKIP)
    failed = by_status.get(Status.FAIL, set())
    assert {check.split("_")[2] for check in failed} == KFAC_FAILURES[problem.name], failed
    assert all(check.startswith("kfac_solve_factored_") for check in failed)
    passed = by_status[Status.PASS]
    for name in ("kfac_factors_fisher_expand_product", "kfac_factors_ggn_expand_product",
                 "kfac_factors_empirical_expand_product", "kfac_factors_default_approx_product",
                 "kfac_solve_eigen_fisher_expand", "kfac_solve_eigen_empirical_expand",
                 "kfac_solve_default_kind"):
        assert name in passed, sorted(passed)
    assert Status.ERROR not in by_status


def test_kfac_jax_conv_poisson_is_declined():
    _port()
    results = _results(POISSON, ["fisher", "kfac_factors"])
    assert {Status(r.status) for r in results} == {Status.SKIP}


def _raw(problem, kind="fisher"):
    """kfac-jax's own factors (no mapping) and its blocks, one per layer."""
    port = _port()
    setup, factors, _, _, blocks = port._kfac(problem, kind)
    return [tuple(np.asarray(f) for f in pair) for pair in factors(setup.args)], blocks


@pytest.mark.parametrize("problem", [CE, BCE], ids=lambda p: p.name)
def test_kfac_jax_conv_block_is_expand_with_the_positions_in_its_fixed_scale(problem):
    """Convention (in code, not in the docs): `Conv2DTwoKroneckerFactored` normalizes both
    factors by `B T` and carries `fixed_scale() = T`, so its curvature `T (A (x) S)` is s12's
    K-FAC-expand with `A_l = T A` (HWIO patch order) and `S_l = S`; its raw product is `1/T` of
    expand's and it is not reduce (negative controls)."""
    from verify.adapters._jax_conv import hwio_patch_order

    raw, blocks = _raw(problem)
    policy = tolerance_policy(problem, "float64")
    expand, reduce = kfac_factors(problem, "fisher"), kfac_factors(problem, "fisher",
                                                                   approx="reduce")
    magnitudes = policy.kfac_magnitudes("fisher")
    for layer, block, (a, s), (a_ref, s_ref), (a_red, s_red), (a_mag, s_mag) in zip(
            problem.layers, blocks, raw, expand, reduce, magnitudes, strict=True):
        if not layer.is_convolution:
            assert block.fixed_scale() == 1.0
            continue
        t = layer.n_positions
        assert block.fixed_scale() == t
        order = np.argsort(hwio_patch_order(layer))
        a_mapped = t * a[np.ix_(order, order)]
        mag = float(np.linalg.norm(a_mag) * np.linalg.norm(s_mag))
        tol = policy.rtol
        assert compare(s, s_ref, tolerance=tol, magnitude=np.linalg.norm(s_mag)).passed
        assert compare(a_mapped, a_ref, tolerance=tol, magnitude=np.linalg.norm(a_mag)).passed
        product = np.kron(a_mapped, s)
        assert compare(product, np.kron(a_ref, s_ref), tolerance=tol, magnitude=mag).passed
        if t > 1:  # the raw product is 1/T of expand's, and expand is not reduce here
            assert compare(product / t, np.kron(a_ref, s_ref), tolerance=tol,
                           magnitude=mag).error > 100 * tol
            assert compare(product, np.kron(a_red, s_red), tolerance=tol,
                           magnitude=mag).error > 100 * tol
        if layer.c_in > 1 and np.prod(layer.kernel) > 1:  # the patch order matters
            assert compare(t * a, a_ref, tolerance=tol,
                           magnitude=np.linalg.norm(a_mag)).error > 100 * tol


def _oihw_estimator(problem):
    """A one-convolution mse problem registered with an OIHW kernel (PyTorch's layout):
    `(estimator, args)`, `dimension_numbers` NCHW/OIHW/NCHW, the loss as the adapter's."""
    import jax
    import jax.numpy as jnp
    import kfac_jax

    from verify.adapters._jax_conv import conv_options

    (layer,) = problem.layers
    images = jnp.asarray(problem.inputs).reshape(problem.batch_size, *layer.input_shape)
    (w, b), = unflatten(problem.layers, problem.params)
    kernel = jnp.asarray(w.reshape(layer.c_out, layer.c_in, *layer.kernel))
    options = conv_options(layer, images.shape) | dict(
        dimension_numbers=jax.lax.conv_dimension_numbers(images.shape, kernel.shape,
                                                         ("NCHW", "OIHW", "NCHW")))

    def func(params, batch):
        x, y = batch
        s = jax.lax.conv_general_dilated(x, params[0], **options) + params[1][None, :, None, None]
        s = kfac_jax.register_conv2d(s, x, params[0], params[1], **options)
        z = s.reshape(x.shape[0], -1)
        kfac_jax.register_squared_error_loss(z, y, weight=problem.scale * problem.batch_size / 2)
        return problem.scale * jnp.sum((z - y) ** 2) / 2

    estimator = kfac_jax.BlockDiagonalCurvature(func, default_estimation_mode="fisher_exact",
                                                auto_register_tags=False)
    return estimator, ((kernel, jnp.asarray(b)), (images, jnp.asarray(problem.targets)))


def test_kfac_jax_conv_kernel_must_be_hwio():
    """Limitation: `Conv2DTwoKroneckerFactored` flattens a kernel to `(prod(shape[:-1]),
    shape[-1])` (KroneckerFactored's default `parameters_specs`: output channels last, HWIO)
    whatever the registered `dimension_numbers` say. An OIHW kernel (PyTorch's layout, with
    `dimension_numbers` NCHW/OIHW/NCHW) raises: `TypeError` in `init` when that matrix and the
    bias row disagree, and where they happen to agree (`c_in k_h = c_out`, `k_w = c_out`: 1 -> 2
    channels, 2x2 kernel) `IndexError` in the first curvature update (the patch moments read
    the kernel's spatial axes). An error, never a silently wrong block."""
    _port()
    import jax

    from ngd_ref import Conv2d
    from ngd_ref._zoo_conv import make_conv_problem

    rng = jax.random.PRNGKey(0)
    mismatched = make_conv_problem((2, 3, 3), (Conv2d(2, 3, (2, 2), (1, 1), (0, 0), "identity"),),
                                   "mse", 2, name="oihw-mismatch")
    estimator, args = _oihw_estimator(mismatched)
    with pytest.raises(TypeError, match="concatenat"):
        estimator.init(rng, args, exact_powers_to_cache=-1, approx_powers_to_cache=-1)

    problem = zoo.get("conv-last-linear-1x4x3-pad-mse-b3")
    (layer,) = problem.layers
    assert layer.c_in * layer.kernel[0] == layer.c_out == layer.kernel[1]
    estimator, args = _oihw_estimator(problem)
    state = estimator.init(rng, args, exact_powers_to_cache=-1, approx_powers_to_cache=-1)
    with pytest.raises(IndexError):
        estimator.update_curvature_matrix_estimate(state, 0.0, 1.0, 0.0, problem.batch_size,
                                                   rng, args)


def test_kfac_jax_pi_adjusted_damping_is_exact_on_a_scalar_factor():
    """Finding: kfac-jax's `pi_adjusted_kronecker_factors` puts all the damping on the
    non-scalar factor when the other is 1x1 (its "special behavior for scalar factors"), so a
    layer with one output gets the exact damped inverse `(s A + lambda I)^{-1}`, not Grosse
    eq. (24)'s `(A + pi sqrt(lambda) I)^{-1} (x) (s + sqrt(lambda)/pi)^{-1}`. On BCE's last
    convolution (c_out = 1) the factored solve is the eigen one; on its first (c_out = 3) it
    is eq. (24)."""
    port = _port()
    v = np.linspace(-1.0, 1.0, BCE.n_params)
    policy = tolerance_policy(BCE, "float64")
    first, last = layer_slices(BCE.layers)
    for kind, damping in (("fisher", 0.1), ("empirical", 1.0)):
        got = port.kfac_solve(BCE, v, damping, "factored", kind)
        factored = kfac_solve(BCE, v, damping, "factored", kind)
        eigen = kfac_solve(BCE, v, damping, "eigen", kind)
        condition = max(float(np.linalg.cond(np.kron(a, s) + damping * np.eye(len(a) * len(s))))
                        for a, s in kfac_factors(BCE, kind))
        tol = policy.solve_rtol(condition)
        assert BCE.layers[1].c_out == 1
        assert compare(got[last], eigen[last], tolerance=tol).passed
        assert compare(got[last], factored[last], tolerance=tol).error > 100 * tol
        assert compare(got[first], factored[first], tolerance=tol).passed


# -- kfac-jax's Optimizer (PROTOCOL s10 `kfac`) on a convolutional problem ----------------------
#: the dense tests' setting (tests/test_real_adapters.py KFAC_JAX_HYPER) with s12's approx
CONV_HYPER = dict(kind="fisher", ema=0.5, ema_bias_correction=True, stats_every=2,
                  inverse_every=3, damping=1 / 32, damping_method="factored", step_rule="fixed",
                  lr=0.5, momentum=0.5, adapt_damping=True, damping_every=1, damping_factor=2.0,
                  approx="expand")


#: constant damping 1/2: at the adapted run's initial 1/32 the eigen run diverges (|theta| ~ 1e4
#: by step 5) into saturated softmaxes whose gradient is pure rounding, and the reference
#: refuses the setting (an infinite tolerance; `trajectory_reference`)
@pytest.mark.parametrize("changes", [dict(), dict(adapt_damping=False, damping_method="eigen",
                                                  damping=0.5)],
                         ids=["factored-adapted", "eigen-constant-damping"])
def test_kfac_jax_optimizer_follows_s10_on_a_convolution(changes):
    """No extra code: the registered conv blocks drive `kfac_jax.Optimizer`, 6 steps within
    the harness's float64 tolerances."""
    port = _port()
    hyper = dict(CONV_HYPER, **changes)
    batches = trajectory_batches(CE)
    ref, _, tols = trajectory_reference(CE, batches, "kfac", hyper, "float64")
    got = port.optimizer_trajectory(CE, batches, "kfac", dict(hyper))
    errors = np.linalg.norm(np.asarray(got) - ref.float64(), axis=1)
    assert np.all(errors <= np.asarray(tols)), errors / np.asarray(tols)


def test_the_diverging_constant_damping_setting_is_refused():
    """Why the eigen run above uses damping 1/2: at 1/32 the reference cannot bound step 3."""
    hyper = dict(CONV_HYPER, adapt_damping=False, damping_method="eigen")
    with pytest.raises(ValueError, match="step 3: the tolerance is not finite"):
        trajectory_reference(CE, trajectory_batches(CE), "kfac", hyper, "float64")


def test_kfac_jax_optimizer_declines_reduce():
    port = _port()
    batches = [(CE.inputs, CE.targets)] * 2
    with pytest.raises(NotImplementedError, match="K-FAC-reduce"):
        port.optimizer_trajectory(CE, batches, "kfac", dict(CONV_HYPER, approx="reduce"))
