"""Convolutional layers (PROTOCOL s12): spec, problems, the dense reference and K-FAC.

The dense reference's H, G, F, EF of conv networks are checked against JAX autodiff of an
independent forward pass written with `jax.lax.conv_general_dilated` (float64), and the
mpmath backend against itself (the same code at two precisions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import Conv2d, Layer, Problem, ProblemError, bind_layers, zoo
from ngd_ref.dense import FLOAT64, dense, mp_backend, mp_self_agreement
from ngd_ref.jax import get_jax_loss
from verify._policy import tolerance_policy
from verify._tolerance import compare

CONV = zoo.conv_problems()
NAMES = [p.name for p in CONV]
#: JAX autodiff compiles slowly on conv Hessians (10-30 s each on a loaded 2-core machine):
#: three problems that together cover padding, stride 2, two convolutions and a conv last layer.
AUTODIFF = [p for p in CONV if p.name in ("conv-last-linear-1x4x3-pad-mse-b3",
                                           "conv-2x3x3-2c-last-sigmoid-bce-b2",
                                           "conv-1x1-stride2-3x3x3-poisson-b2")]


# -- spec and problem ----------------------------------------------------------------------------
def test_conv_geometry_and_patch_order():
    conv = Conv2d(2, 3, (2, 3), (2, 1), (1, 0), "tanh", input_hw=(3, 4))
    assert conv.output_hw == ((3 + 2 - 2) // 2 + 1, (4 - 3) // 1 + 1) == (2, 2)
    assert conv.weight_shape == (3, 2 * 2 * 3 + 1) and conv.n_params == 39
    assert (conv.input_size, conv.output_size, conv.n_positions) == (24, 12, 4)
    x = np.arange(24.0).reshape(2, 3, 4)
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    index = conv.patch_index
    flat = np.append(x.reshape(-1), 0.0)
    for t, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        # (channel, kernel row, kernel column) row-major: an im2col / unfold patch
        expected = padded[:, 2 * i: 2 * i + 2, j: j + 3].reshape(-1)
        np.testing.assert_array_equal(flat[index[:, t]], expected)


def test_conv_needs_binding():
    with pytest.raises(ValueError, match="spatial size"):
        _ = Conv2d(1, 1, (2, 2), (1, 1), (0, 0), "tanh").input_size
    assert Conv2d(1, 1, (2, 2), (1, 1), (0, 0), "tanh").n_params == 5


@pytest.mark.parametrize("problem", CONV, ids=NAMES)
def test_round_trip(problem):
    data = problem.to_dict()
    assert data["input_shape"] == list(problem.input_shape)
    assert all(entry[0] == "conv2d" for entry, layer in zip(data["layers"], problem.layers,
                                                           strict=True) if layer.is_convolution)
    back = Problem.from_dict(data)
    assert back.layers == problem.layers and back.input_shape == problem.input_shape
    assert [getattr(a, "input_hw", None) for a in back.layers] == \
        [getattr(a, "input_hw", None) for a in problem.layers]
    np.testing.assert_array_equal(back.params, problem.params)


def _conv_problem(layers, input_shape=(1, 3, 3), n=None, loss="mse"):
    bound = bind_layers(layers, input_shape)
    n = sum(layer.n_params for layer in bound) if n is None else n
    c = bound[-1].output_size
    targets = np.zeros(1, int) if loss == "softmax_cross_entropy" else np.zeros((1, c))
    return Problem("p", layers, loss, np.zeros(n), np.zeros((1, int(np.prod(input_shape)))),
                   targets, input_shape=input_shape)


@pytest.mark.parametrize("layers, input_shape, field", [
    ((Conv2d(1, 2, (2, 2), (1, 1), (0, 0), "tanh"),), None, "input_shape"),
    ((Conv2d(2, 2, (2, 2), (1, 1), (0, 0), "tanh"),), (1, 3, 3), r"layers\[0\].c_in"),
    ((Conv2d(1, 2, (4, 2), (1, 1), (0, 0), "tanh"),), (1, 3, 3), r"layers\[0\].kernel"),
    ((Conv2d(1, 2, (2, 2), (0, 1), (0, 0), "tanh"),), (1, 3, 3), r"layers\[0\].stride"),
    ((Conv2d(1, 2, (2, 2), (1, 1), (-1, 0), "tanh"),), (1, 3, 3), r"layers\[0\].padding"),
    ((Conv2d(1, 2, (2, 2), (1, 1), (0, 0), "softmax"),), (1, 3, 3), r"layers\[0\].activation"),
    ((Layer(9, 4, "tanh"), Conv2d(1, 2, (2, 2), (1, 1), (0, 0), "tanh")), (1, 3, 3),
     r"layers\[1\]: a convolution must come first"),
    ((Conv2d(1, 2, (2, 2), (1, 1), (0, 0), "tanh"), Layer(9, 2, "identity")), (1, 3, 3),
     r"layers\[1\].n_in: expected 8"),
    ((Conv2d(1, 2, (2, 2), (1, 1), (0, 0), "tanh"),), (1, 3), "input_shape"),
])
def test_validation_names_the_field(layers, input_shape, field):
    with pytest.raises(ProblemError, match=field):
        _conv_problem(layers, input_shape)


def test_fixture_layer_entries_accepted():
    p = _conv_problem([["conv2d", 1, 2, [2, 2], [1, 1], [1, 1], "tanh"], [32, 2, "identity"]])
    assert p.layers[0].is_convolution and p.layers[0].kernel == (2, 2)
    assert p.layers[0].output_hw == (4, 4)


# -- the dense reference against JAX autodiff -----------------------------------------------------
_ACT = {"identity": lambda s: s, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
        "relu": jax.nn.relu, "softplus": jax.nn.softplus, "softmax": jax.nn.softmax}


def _jax_forward(problem: Problem):
    """An independent conv forward: `lax.conv_general_dilated` (NCHW / OIHW cross-correlation)."""
    def forward(theta, x):
        a, start = x.reshape(-1, *problem.input_shape) if problem.input_shape else x, 0
        for layer in problem.layers:
            wbar = theta[start:start + layer.n_params].reshape(layer.weight_shape[::-1]).T
            start += layer.n_params
            w, b = wbar[:, :-1], wbar[:, -1]
            if layer.is_convolution:
                kernel = w.reshape(layer.c_out, layer.c_in, *layer.kernel)
                s = jax.lax.conv_general_dilated(
                    a, kernel, layer.stride, [(p, p) for p in layer.padding],
                    dimension_numbers=("NCHW", "OIHW", "NCHW")) + b[None, :, None, None]
            else:
                s = a.reshape(a.shape[0], -1) @ w.T + b
            a = _ACT[layer.activation](s)
        return a.reshape(a.shape[0], -1)
    return forward


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("problem", AUTODIFF, ids=[p.name for p in AUTODIFF])
def test_dense_reference_matches_jax_autodiff(problem):
    forward = _jax_forward(problem)
    loss = get_jax_loss(problem.loss)
    x, theta = jnp.asarray(problem.inputs), jnp.asarray(problem.params)
    y = jnp.asarray(problem.targets)

    def h(t):
        return problem.scale * jnp.sum(jax.vmap(loss.value)(y, forward(t, x)))

    ref = dense(problem)
    policy = tolerance_policy(problem, "float64")
    # jit: op-by-op dispatch of batched convolutions takes a minute per problem
    jac = jax.jit(jax.jacobian(lambda t: forward(t, x)))(theta)        # (B, C, n)
    z = jax.jit(forward)(theta, x)
    h_l = jax.vmap(jax.hessian(loss.value, argnums=1))(y, z)
    g_l = jax.vmap(jax.grad(loss.value, argnums=1))(y, z)
    ggn = problem.scale * jnp.einsum("bcn,bcd,bdm->nm", jac, h_l, jac)
    per_example = jnp.einsum("bcn,bc->bn", jac, g_l)
    checks = {
        "outputs": (ref.outputs, z, 0.0),
        "jacobians": (ref.jacobians, jac, 0.0),
        "gradient": (ref.gradient, jax.jit(jax.grad(h))(theta), float(np.linalg.norm(
            policy.gradient_magnitude))),
        "hessian": (ref.hessian, jax.jit(jax.hessian(h))(theta), float(np.linalg.norm(
            policy.matrix_magnitude("hessian")))),
        "ggn": (ref.ggn, ggn, float(np.linalg.norm(policy.matrix_magnitude("ggn")))),
        "empirical_fisher": (ref.empirical_fisher,
                             problem.scale * per_example.T @ per_example,
                             float(np.linalg.norm(policy.matrix_magnitude("empirical_fisher")))),
    }
    for name, (actual, desired, mag) in checks.items():
        cmp = compare(actual, np.asarray(desired), tolerance=policy.rtol, magnitude=mag)
        assert cmp.passed, f"{name}: {cmp.describe()}"
    # The Fisher's two forms (Martens s5) agree on conv nets too.
    cmp = compare(ref.fisher_expected_hessian, ref.fisher, tolerance=policy.rtol,
                  magnitude=float(np.linalg.norm(policy.matrix_magnitude("fisher"))))
    assert cmp.passed, cmp.describe()


@pytest.mark.usefixtures("x64")
def test_jax_comparison_detects_a_flipped_kernel():
    """Negative control: the reference on a flipped kernel (a convolution, not a
    cross-correlation) disagrees with the s12 forward far beyond the tolerance."""
    problem = CONV[1]
    conv = problem.layers[0]
    wbar = problem.params[:conv.n_params].reshape(conv.weight_shape, order="F")
    w = wbar[:, :-1].reshape(conv.c_out, conv.c_in, *conv.kernel)[:, :, ::-1, ::-1]
    flipped = np.column_stack([w.reshape(conv.c_out, -1), wbar[:, -1]]).reshape(-1, order="F")
    params = np.concatenate([flipped, problem.params[conv.n_params:]])
    z = jax.jit(_jax_forward(problem))(jnp.asarray(problem.params), jnp.asarray(problem.inputs))
    wrong = dense(problem.replace(params=params)).outputs
    cmp = compare(wrong, np.asarray(z), tolerance=tolerance_policy(problem, "float64").rtol)
    assert cmp.error > 1e6 * cmp.tolerance


@pytest.mark.parametrize("problem", [CONV[3], CONV[4]], ids=[CONV[3].name, CONV[4].name])
def test_mpmath_self_agreement_and_float64_certified(problem):
    digits = mp_self_agreement(problem, dps=30, check_dps=45,
                               quantities=("gradient", "hessian", "fisher"))
    assert min(digits.values()) > 25, digits
    mp = dense(problem, mp_backend(30))
    with mp.backend.precision():
        hessian = np.asarray(mp.hessian, dtype=np.float64)
    policy = tolerance_policy(problem, "float64")
    cmp = compare(dense(problem, FLOAT64).hessian, hessian, tolerance=policy.rtol,
                  magnitude=float(np.linalg.norm(policy.matrix_magnitude("hessian"))))
    assert cmp.passed, cmp.describe()


# -- K-FAC expand and reduce (dense twin) and the identities --------------------------------------
from ngd_ref.dense import (  # noqa: E402
    KfacApprox,
    KfacKind,
    conv_block,
    kfac_factors,
    kfac_solve,
)
from verify.identities import conv as conv_ids  # noqa: E402

BY_NAME = {p.name: p for p in CONV}
SAME_PATCHES = BY_NAME["conv-same-patches-1x3x3-mse-b1"]
LINEAR_LAST = BY_NAME["conv-last-linear-1x4x3-pad-mse-b3"]


@pytest.mark.parametrize("name", ["mlp-3x4x3-tanh-softmax_cross_entropy-b3",
                                  "deep-linear-2x3x3x2-mse-b4"])
def test_dense_layers_expand_equals_reduce_equals_s4(name):
    problem = zoo.get(name)
    for kind in KfacKind:
        default = kfac_factors(problem, kind)
        for approx in KfacApprox:
            for (a, s), (a0, s0) in zip(kfac_factors(problem, kind, approx=approx), default,
                                        strict=True):
                np.testing.assert_array_equal(a, a0)
                np.testing.assert_array_equal(s, s0)


def test_approx_argument_is_validated():
    with pytest.raises(ValueError, match="approx"):
        kfac_factors(SAME_PATCHES, "fisher", approx="expanded")


def test_expand_and_reduce_definitions():
    """s12's formulas written out from the patches and the position Jacobians."""
    from ngd_ref.dense import conv_position_pieces

    problem = BY_NAME["conv-1x4x4-2c-pad-stride-ce-b2"]
    for index in (0, 1):
        pieces = conv_position_pieces(problem, index, "ggn")
        positions = problem.layers[index].n_positions
        a_exp = sum(cols @ cols.T for cols, _, _ in pieces) / problem.batch_size
        s_exp = problem.scale * sum(sum(j.T @ m @ j for j in per_t)
                                    for _, per_t, m in pieces) / positions
        means = [cols.mean(axis=1) for cols, _, _ in pieces]
        a_red = sum(np.outer(x, x) for x in means) / problem.batch_size
        s_red = problem.scale * sum(per_t.sum(0).T @ m @ per_t.sum(0) for _, per_t, m in pieces)
        for approx, (a, s) in ((KfacApprox.EXPAND, (a_exp, s_exp)),
                               (KfacApprox.REDUCE, (a_red, s_red))):
            a_k, s_k = kfac_factors(problem, "ggn", approx=approx)[index]
            np.testing.assert_allclose(a_k, a, rtol=1e-13, atol=0)
            np.testing.assert_allclose(s_k, s, rtol=1e-13, atol=1e-300)


def test_kfac_mpmath_matches_float64_on_conv():
    problem = SAME_PATCHES
    mp = mp_backend(30)
    for approx in KfacApprox:
        with mp.precision():
            high = [(np.asarray(a, dtype=np.float64), np.asarray(s, dtype=np.float64))
                    for a, s in kfac_factors(problem, "fisher", backend=mp, approx=approx)]
        policy = tolerance_policy(problem, "float64")
        for (a, s), (a_h, s_h) in zip(kfac_factors(problem, "fisher", approx=approx), high,
                                      strict=True):
            assert compare(np.kron(a, s), np.kron(a_h, s_h), tolerance=policy.rtol).passed


def test_expand_off_by_about_t_on_identical_patches():
    """The issue's measurement: on identical patches expand's product misses the
    cross-position terms (its bias block is the sum over t of the diagonal terms only)."""
    exact = conv_block(SAME_PATCHES, 0, "ggn")
    a, s = kfac_factors(SAME_PATCHES, "ggn", approx="expand")[0]
    ratio = np.linalg.norm(exact) / np.linalg.norm(np.kron(a, s))
    assert ratio > 1.2


def test_kfac_solve_takes_approx():
    problem = BY_NAME["conv-2x3x3-tanh-dense-tanh-mse-b3"]
    v = np.ones(problem.n_params)
    x_e = kfac_solve(problem, v, 0.1, "eigen", "ggn")
    x_r = kfac_solve(problem, v, 0.1, "eigen", "ggn", approx="reduce")
    assert x_e.shape == x_r.shape == (problem.n_params,)
    assert not np.allclose(x_e, x_r)


def _statuses(results):
    return {r.status.value for r in results}


def test_conv_identities_pass_on_the_conv_zoo_subset():
    for problem in (SAME_PATCHES, LINEAR_LAST):
        for name in conv_ids.__all__:
            fn = getattr(conv_ids, name)
            results = fn(problem)
            assert _statuses(results) <= {"pass"}, [r.message for r in results]


def test_regimes_fail_when_expand_and_reduce_are_swapped(monkeypatch):
    """Negative control of the regime checks: the swapped-approx bug is caught."""
    original = conv_ids.kfac_factors

    def swapped(problem, kind, backend=None, *, approx="expand"):
        other = "reduce" if KfacApprox(approx) is KfacApprox.EXPAND else "expand"
        return original(problem, kind, approx=other)

    monkeypatch.setattr(conv_ids, "kfac_factors", swapped)
    for problem in (SAME_PATCHES, LINEAR_LAST):
        results = conv_ids.conv_kfac_exact_regimes(problem)
        assert results and all(r.status.value == "fail" for r in results)
    assert "fail" in _statuses(conv_ids.conv_kfac_reduce_bias_block_exact(SAME_PATCHES))


def test_bias_check_fails_with_wrong_power_of_t(monkeypatch):
    """`S_l` off by a factor T (a wrong power of T in reduce) fails the bias-block theorem."""
    original = conv_ids.kfac_factors

    def wrong(problem, kind, backend=None, *, approx="expand"):
        out = original(problem, kind, approx=approx)
        return [(a, s * layer.n_positions) for (a, s), layer in zip(out, problem.layers,
                                                                    strict=True)]

    monkeypatch.setattr(conv_ids, "kfac_factors", wrong)
    problem = BY_NAME["conv-1x1-stride2-3x3x3-poisson-b2"]
    results = conv_ids.conv_kfac_reduce_bias_block_exact(problem)
    assert results and all(r.status.value == "fail" for r in results)


def test_negative_controls_decline_inside_regimes():
    """The inexactness control never claims an approximation inside its regime."""
    cases = list(conv_ids._inexact_cases(SAME_PATCHES))
    assert cases and all(approx is KfacApprox.EXPAND for _, _, approx in cases)
    assert not [c for c in conv_ids._inexact_cases(LINEAR_LAST)
                if c[2] is KfacApprox.EXPAND and c[1] is not KfacKind.EMPIRICAL]
    full = BY_NAME["conv-full-kernel-2x2x2-ce-b1"]
    assert not list(conv_ids._inexact_cases(full))
    assert not conv_ids.conv_kfac_inexact(full)


# -- the JAX twin ---------------------------------------------------------------------------------
#: Few problems for the twin (each costs 15-30 s of compilation on a loaded 2-core machine):
#: the products on two convolutions with padding and stride (softmax CE); K-FAC on a conv last
#: layer (sum reduction) and on identical patches (where expand and reduce differ most).
TWIN = [BY_NAME["conv-1x4x4-2c-pad-stride-ce-b2"]]
KFAC_TWIN = [BY_NAME["conv-2x3x3-2c-last-sigmoid-bce-b2"], SAME_PATCHES]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("problem", TWIN, ids=[p.name for p in TWIN])
def test_jax_twin_products_match_dense(problem):
    import ngd_ref.jax as nj

    objective, params, batch = nj.from_problem(problem)
    ref = dense(problem)
    policy = tolerance_policy(problem, "float64")
    v = np.random.default_rng(0).standard_normal(problem.n_params)
    v_params = nj.mlp_params(problem.layers, v)
    grad = nj.canonical_vector(nj.gradient(objective, params, batch))
    assert compare(grad, ref.gradient, tolerance=policy.rtol,
                   magnitude=float(np.linalg.norm(policy.gradient_magnitude))).passed
    for name in ("hessian", "ggn", "fisher", "empirical_fisher"):
        product = nj.canonical_vector(nj.curvature_vp(objective, params, batch, v_params, name))
        mag = float(np.linalg.norm(policy.matrix_magnitude(name) @ np.abs(v)))
        cmp = compare(product, ref.matrix(name) @ v, tolerance=policy.rtol, magnitude=mag)
        assert cmp.passed, f"{name}: {cmp.describe()}"


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("problem", KFAC_TWIN, ids=[p.name for p in KFAC_TWIN])
def test_jax_kfac_expand_reduce_match_dense(problem):
    import ngd_ref.jax as nj
    from ngd_ref.dense import kfac_magnitudes

    rtol = tolerance_policy(problem, "float64").rtol
    for kind in KfacKind:
        for approx in KfacApprox:
            twin = nj.kfac_factors(problem, kind, approx=approx)
            for (a, s), (a0, s0), (ma, ms) in zip(
                    twin, kfac_factors(problem, kind, approx=approx),
                    kfac_magnitudes(problem, kind, approx=approx), strict=True):
                cmp = compare(np.kron(a, s), np.kron(a0, s0), tolerance=rtol,
                              magnitude=float(np.linalg.norm(np.kron(ma, ms))))
                assert cmp.passed, f"{kind.value},{approx.value}: {cmp.describe()}"
    # negative control: the twin's expand is not its reduce where the dense ones differ
    a_e, s_e = nj.kfac_factors(problem, "ggn", approx="expand")[0]
    a_r, s_r = nj.kfac_factors(problem, "ggn", approx="reduce")[0]
    assert not compare(np.kron(a_e, s_e), np.kron(a_r, s_r), tolerance=rtol).passed


@pytest.mark.usefixtures("x64")
def test_jax_kfac_solve_takes_approx():
    import ngd_ref.jax as nj

    problem = SAME_PATCHES
    v = np.ones(problem.n_params)
    policy = tolerance_policy(problem, "float64")
    from scipy.linalg import block_diag

    from ngd_ref.dense import kfac_magnitudes

    for approx in KfacApprox:
        mine = np.asarray(nj.kfac_solve(problem, v, 0.5, "eigen", "ggn", approx=approx))
        ref = kfac_solve(problem, v, 0.5, "eigen", "ggn", approx=approx)
        matrix = block_diag(*[np.kron(a, s) for a, s in kfac_factors(problem, "ggn",
                                                                     approx=approx)])
        mag = block_diag(*[np.kron(a, s) for a, s in kfac_magnitudes(problem, "ggn",
                                                                     approx=approx)])
        tol, _ = policy.solve_tolerance(matrix, mag, 0.5, v, np.abs(v))
        assert compare(mine, ref, tolerance=tol).passed


# -- strategies -----------------------------------------------------------------------------------
def test_conv_strategy_draws_valid_tiny_problems():
    from hypothesis import HealthCheck, given, settings

    from verify.strategies import problems

    seen = []

    @settings(max_examples=15, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(problems(conv=True))
    def check(problem):
        assert not problem.dense_only and problem.n_params <= 400
        ref = dense(problem)
        assert np.all(np.isfinite(ref.hessian))
        seen.append(problem.layers[-1].is_convolution)

    check()
    assert len(set(seen)) == 2  # conv last layer and dense head both drawn


# -- fixtures -------------------------------------------------------------------------------------
def test_conv_fixtures_verify_in_float64():
    from verify._fixture_conv import CONV_FIXTURE_DIR, CONV_FIXTURES
    from verify.fixtures import load_fixtures, verify_fixtures

    fixtures = load_fixtures(CONV_FIXTURE_DIR)
    assert sorted(f.name for f in fixtures) == sorted(name for name, _ in CONV_FIXTURES)
    assert all(f.problem.input_shape is not None for f in fixtures)
    report = verify_fixtures(CONV_FIXTURE_DIR, full=False)
    assert report.results and report.passed
