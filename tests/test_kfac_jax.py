"""JAX K-FAC statistics and solves (ngd_ref.kfac._jax) against the dense reference."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import Loss, layer_slices, zoo
from ngd_ref import dense as ref
from ngd_ref._losses import get_loss
from ngd_ref.kfac import _dense as kd
from ngd_ref.kfac import _jax as kj
from verify._tolerance import (
    FALSE_POSITIVE_RATE,
    compare,
    hoeffding_bound,
    rounding_rtol,
    solve_rtol,
)

QUICK = list(zoo.problems(quick=True))
EXTRA = [zoo.get("mlp-2x4x4x3-relu-softmax_cross_entropy-b3"),
         zoo.get("heteroscedastic-2x5x6-tanh-b4")]


pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest


def _tol(problem, dtype: str) -> float:
    return rounding_rtol(dtype, length=max(problem.n_params, problem.batch_size *
                                           problem.output_dim), depth=len(problem.layers) + 2)


# Every problem and kind in float64; float32 (which compiles anew) on one kind per problem.
FACTOR_CASES = [(p, k, "float64") for p in QUICK + EXTRA for k in ("fisher", "ggn", "empirical")]
FACTOR_CASES += [(p, "ggn", "float32") for p in QUICK]
SOLVE_CASES = [(p, m, "float64") for p in QUICK for m in ("eigen", "factored")]
SOLVE_CASES += [(p, m, "float32") for p in QUICK[:3] for m in ("eigen", "factored")]


def _case_id(case) -> str:
    return "-".join(c if isinstance(c, str) else c.name for c in case)


@pytest.mark.parametrize("problem, kind, dtype", FACTOR_CASES, ids=map(_case_id, FACTOR_CASES))
def test_exact_factors_match_dense(problem, kind, dtype):
    ours = kj.kfac_factors(problem, kind, dtype=dtype)
    for (a, s), (a_ref, s_ref), (a_mag, s_mag) in zip(
            ours, kd.kfac_factors(problem, kind), kd.kfac_magnitudes(problem, kind), strict=True):
        assert a.dtype == jnp.dtype(dtype)
        assert compare(a, a_ref, tolerance=_tol(problem, dtype),
                       magnitude=np.linalg.norm(a_mag)).passed
        cmp = compare(s, s_ref, tolerance=_tol(problem, dtype), magnitude=np.linalg.norm(s_mag))
        assert cmp.passed, cmp.describe()


@pytest.mark.parametrize("problem, method, dtype", SOLVE_CASES, ids=map(_case_id, SOLVE_CASES))
def test_damped_solve_matches_dense(problem, method, dtype):
    v = np.asarray(ref.dense(problem).gradient)
    for kind, damping in (("fisher", 1e-2), ("empirical", 1.0)):
        desired = kd.kfac_solve(problem, v, damping, method, kind)
        matrix = kd.kfac_matrix(problem, kind) + damping * np.eye(problem.n_params)
        tol = solve_rtol(dtype, length=problem.n_params, depth=len(problem.layers) + 2,
                         condition=float(np.linalg.cond(matrix)))
        cmp = compare(kj.kfac_solve(problem, v, damping, method, kind, dtype=dtype), desired,
                      tolerance=tol)
        assert cmp.passed, cmp.describe()


def test_factored_solve_with_an_indefinite_ggn_factor_is_defined():
    """S of gaussian_logvar's indefinite GGN leaves `S + sqrt(l)/pi I` indefinite, nonsingular.

    The protocol's factored formula is defined there (the dense reference computes it); a
    Cholesky solve returned NaN (`check --adapter ngd-ref-jax`'s one failure).
    """
    problem = zoo.get("mlp-3x4x4-sigmoid-gaussian_logvar-b3-sum")
    factors = kd.kfac_factors(problem, "ggn")
    assert min(np.linalg.eigvalsh(s).min() for _, s in factors) < 0  # the case at hand
    v = np.asarray(ref.dense(problem).gradient)
    desired = kd.kfac_solve(problem, v, 0.1, "factored", "ggn")
    damped = [np.kron(a + p * np.sqrt(0.1) * np.eye(a.shape[0]),
                      s + np.sqrt(0.1) / p * np.eye(s.shape[0]))
              for (a, s), p in ((f, kd.factored_damping_pi(*f)) for f in factors)]
    condition = max(float(np.linalg.cond(m)) for m in damped)
    tol = solve_rtol("float64", length=problem.n_params, depth=len(problem.layers) + 2,
                     condition=condition)
    cmp = compare(kj.kfac_solve(problem, v, 0.1, "factored", "ggn"), desired, tolerance=tol)
    assert cmp.passed, cmp.describe()


def test_float64_port_off_by_1e7_fails():
    """The tolerance has teeth: a relative 1e-7 perturbation of S is rejected in float64."""
    problem = QUICK[1]
    (a, s), *_ = kd.kfac_factors(problem, "fisher")
    (_, s_jax), *_ = kj.kfac_factors(problem, "fisher")
    assert not compare(np.asarray(s_jax) * (1 + 1e-7), s, tolerance=_tol(problem, "float64")).passed


# -- the pullback sampling trick: a statistical test -------------------------------------------
BOUNDED = [zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3"),
           zoo.get("mlp-3x4x3-sigmoid-sigmoid_cross_entropy-b4-sum")]
DRAWS = 4000


def _entry_ranges(problem) -> list[np.ndarray]:
    """Width of the interval each entry of one draw of `S_l` is confined to.

    Each example's pseudo-gradient `Dz = dL(y, z_b)/dz` takes finitely many values (one per
    class, or per 0/1 pattern), so `Ds_i Ds_j = (D^T Dz)_i (D^T Dz)_j` lies in
    `[min_y, max_y]` per example and the draw `c sum_b Ds Ds^T` in an interval of width
    `c sum_b (max_y - min_y)`, computed exactly by enumeration.
    """
    d = ref.dense(problem)
    loss = get_loss(problem.loss)
    c_out = problem.output_dim
    outcomes = (range(c_out) if Loss(problem.loss).has_class_labels
                else [np.array(y, float) for y in itertools.product((0, 1), repeat=c_out)])
    widths = []
    for layer, sl in zip(problem.layers, layer_slices(problem.layers), strict=True):
        total = 0
        for jac, z in zip(d.jacobians, d.outputs, strict=True):
            dzds = jac[:, sl.stop - layer.n_out: sl.stop]
            products = np.stack([np.outer(g, g) for g in
                                 (dzds.T @ loss.grad(ref.FLOAT64, y, z) for y in outcomes)])
            total = total + products.max(axis=0) - products.min(axis=0)
        widths.append(problem.scale * total)
    return widths


def _sampled_mean(problem) -> list[np.ndarray]:
    keys = jax.random.split(jax.random.PRNGKey(20240611), DRAWS)
    draws = jax.jit(jax.vmap(lambda k: [s for _, s in kj.kfac_factors(
        problem, "fisher", estimator="sampled", key=k)]))(keys)
    return [np.asarray(s).mean(axis=0) for s in draws]


@pytest.mark.parametrize("problem", BOUNDED, ids=lambda p: p.name)
def test_pullback_sampling_trick_is_unbiased(problem):
    """Hoeffding per entry, union bound over all entries: false-positive rate <= 1e-6."""
    widths = _entry_ranges(problem)
    tests = sum(w.size for w in widths)
    means = _sampled_mean(problem)
    exact = [s for _, s in kd.kfac_factors(problem, "fisher")]
    empirical = [s for _, s in kd.kfac_factors(problem, "empirical")]
    power = False
    for mean, s, s_emp, width in zip(means, exact, empirical, widths, strict=True):
        # Hoeffding's threshold is linear in the range width.
        threshold = width * hoeffding_bound(1.0, DRAWS, tests=tests,
                                            false_positive_rate=FALSE_POSITIVE_RATE)
        assert np.all(np.abs(mean - s) <= threshold), np.max(np.abs(mean - s) / threshold)
        power |= bool(np.any(np.abs(s_emp - s) > 2 * threshold))
    # The test can fail: a sampler from the wrong distribution (the observed labels, i.e. the
    # empirical Fisher) is off by more than twice the threshold somewhere.
    assert power


def test_sampled_ggn_needs_natural_parameters():
    problem = zoo.get("heteroscedastic-2x5x6-tanh-b4")
    with pytest.raises(ValueError, match="natural parameters"):
        kj.kfac_factors(problem, "ggn", estimator="sampled", key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="key"):
        kj.kfac_factors(problem, "fisher", estimator="sampled")


# -- networks ----------------------------------------------------------------------------------
class _Flax(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnp.tanh(nn.Dense(4)(x)))


def test_flax_network_matches_protocol_mlp():
    problem = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    network, layers = kj.problem_network(problem)
    module = _Flax()
    x = jnp.asarray(problem.inputs)
    params = module.init(jax.random.PRNGKey(0), x)
    flax_net = kj.flax_network(module)
    flax_net.apply(params, x)  # discovers the Dense layers
    params = flax_net.set_layers(params, layers)
    y = jnp.asarray(problem.targets)
    for kind in ("fisher", "empirical"):
        ours = jax.jit(lambda p, kind=kind: kj.kfac_statistics(flax_net, p, x, y, problem.loss,
                                                               kind))(params)
        for (a, s), (a_ref, s_ref) in zip(ours, kd.kfac_factors(problem, kind), strict=True):
            np.testing.assert_allclose(a, a_ref, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(s, s_ref, rtol=1e-12, atol=1e-14)
    assert all(jnp.array_equal(w, w2) for (w, _), (w2, _) in
               zip(flax_net.get_layers(params), layers, strict=True))


def test_repeated_calls_identical_and_no_recompilation():
    problem = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    network, layers = kj.problem_network(problem)
    x, y = jnp.asarray(problem.inputs), jnp.asarray(problem.targets)
    traces = []

    @jax.jit
    def stats(params, key):
        traces.append(1)
        return kj.kfac_statistics(network, params, x, y, problem.loss, "fisher",
                                  estimator="sampled", key=key)

    key = jax.random.PRNGKey(3)
    first, second = stats(layers, key), stats(layers, key)
    assert len(traces) == 1
    assert all(jnp.array_equal(p, q) for f, g in zip(first, second, strict=True)
               for p, q in zip(f, g, strict=True))


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match=r"activations\[1\]"):
        kj.mlp_network(["tanh", "gelu"])
