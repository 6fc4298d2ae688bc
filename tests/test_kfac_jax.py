"""JAX K-FAC statistics and solves (ngd_ref.kfac._jax) against the dense reference."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import dense as ref
from ngd_ref import zoo
from ngd_ref.kfac import _dense as kd
from ngd_ref.kfac import _jax as kj
from verify._report import Status
from verify._tolerance import compare, rounding_rtol, solve_rtol
from verify.adapters._x64 import in_x64
from verify.harness import run_capability

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


# -- the pullback sampling trick: the s11 statistical test --------------------------------------
BOUNDED = [zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3"),
           zoo.get("mlp-3x4x3-sigmoid-sigmoid_cross_entropy-b4-sum")]


@in_x64  # the harness calls ports on a worker thread, outside this test's x64 context
class _PullbackPort:
    """`kfac_statistics(..., estimator="sampled")` as PROTOCOL s11's `mc_kfac_factors`.

    `num_samples` draws, one PRNG key each (split from `seed`), averaged: the mean of the
    sampled factors over S sampled targets per example. `kind="empirical"` is the negative
    control: the observed labels instead of samples from r(y|z) (a biased estimator of F's
    factors).
    """

    name = "ngd-ref-jax-pullback"
    dtype = "float64"
    layer_kinds = ("dense",)

    def __init__(self, kind: str = "fisher") -> None:
        self.kind = kind
        self._compiled: dict[str, object] = {}

    def mc_kfac_factors(self, problem, num_samples, seed, estimator="targets"):
        if estimator != "targets":
            raise NotImplementedError("the pullback trick samples targets, not a sketch")
        if problem.name not in self._compiled:
            self._compiled[problem.name] = jax.jit(jax.vmap(
                lambda key: kj.kfac_factors(problem, self.kind, estimator="sampled", key=key)))
        draws = self._compiled[problem.name](
            jax.random.split(jax.random.PRNGKey(seed), num_samples))
        return [(np.asarray(a).mean(axis=0), np.asarray(s).mean(axis=0)) for a, s in draws]


def _mean_result(port, problem):
    results = run_capability(port, "mc_kfac_factors", problem, dtype="float64")
    return next(r for r in results if r.check == "mc_kfac_factors_targets_mean")


@pytest.mark.parametrize("problem", BOUNDED, ids=lambda p: p.name)
def test_pullback_sampling_trick_is_unbiased(problem):
    """The exact-moment mean test of s11 (false-positive rate <= 1e-6 for the estimator's
    real distribution, `verify._statistics`), with its power; the observed labels fail it."""
    result = _mean_result(_PullbackPort(), problem)
    assert result.status is Status.PASS, result.message
    assert result.power is not None and result.power <= 0.05
    control = _mean_result(_PullbackPort("empirical"), problem)
    assert control.status is Status.FAIL, control.message


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
