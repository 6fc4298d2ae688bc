"""The JAX K-FAC optimizer (ngd_ref.kfac._optimizer) against the dense reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import dense as ref
from ngd_ref import zoo
from ngd_ref.curvature._jax import canonical_vector
from ngd_ref.kfac import _jax as kj
from ngd_ref.kfac._optimizer import kfac

pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX, see conftest


def _setup(name: str):
    problem = zoo.get(name)
    network, params = kj.problem_network(problem)
    batch = (jnp.asarray(problem.inputs), jnp.asarray(problem.targets))
    return problem, network, params, batch


# B = 1 takes the per-example preconditioning path, B = 3 the direct one.
CASES = [("mlp-3x4x3-tanh-mse-b1", "eigen"), ("mlp-3x4x3-tanh-mse-b1", "factored"),
         ("mlp-3x4x3-tanh-softmax_cross_entropy-b3", "eigen"),
         ("mlp-3x4x3-tanh-softmax_cross_entropy-b3", "factored")]


@pytest.mark.parametrize("name, method", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_fixed_step_is_minus_lr_times_dense_kfac_solve(name, method):
    """Exact statistics at the current params: the step is `-lr (K + l I)^{-1} g` (eq. 22-24)."""
    problem, network, params, batch = _setup(name)
    opt = kfac(network, problem.loss, learning_rate=0.5, damping=0.1, damping_method=method,
               kind="ggn", estimator="exact", ema_decay=0.5)
    state = opt.init(params, batch, jax.random.PRNGKey(0))
    updates, state, info = jax.jit(opt.update)(params, state, batch)
    gradient = ref.dense(problem).gradient
    desired = -0.5 * ref.kfac_solve(problem, gradient, 0.1, method, "ggn")
    np.testing.assert_allclose(canonical_vector(updates), desired, rtol=1e-10, atol=1e-13)
    # The moving average of identical statistics is those statistics (eq. 25).
    for (a, s), (a_ref, s_ref) in zip(state.factors, ref.kfac_factors(problem, "ggn"), strict=True):
        np.testing.assert_allclose(a, a_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(s, s_ref, rtol=1e-12, atol=1e-14)
    assert float(info.loss) == pytest.approx(float(ref.dense(problem).loss), rel=1e-12)


def test_adaptive_coefficients_minimize_the_quadratic_model():
    """Second step: (alpha, beta) is the stationary point of M over span{r, delta} (eq. 27)."""
    problem, network, params, batch = _setup("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    lam = 0.05
    opt = kfac(network, problem.loss, damping=lam, kind="ggn", estimator="exact")
    state = opt.init(params, batch, jax.random.PRNGKey(0))
    update = jax.jit(opt.update)
    updates, state, _ = update(params, state, batch)
    params = jax.tree_util.tree_map(jnp.add, params, updates)
    previous = canonical_vector(state.delta)
    updates, state, info = update(params, state, batch)
    moved = problem.replace(params=np.asarray(canonical_vector(params)))
    d = ref.dense(moved)
    c = d.ggn + lam * np.eye(problem.n_params)
    delta = np.asarray(canonical_vector(updates))
    # grad_delta M = g + C delta must be orthogonal to both directions of the subspace.
    residual = d.gradient + c @ delta
    r = (delta - float(info.beta) * np.asarray(previous)) / float(info.alpha)
    for direction in (r, np.asarray(previous)):
        assert abs(residual @ direction) <= 1e-9 * np.linalg.norm(d.gradient) * np.linalg.norm(
            direction)
    assert float(info.alpha) < 0 and float(info.beta) != 0.0


@pytest.mark.parametrize("lr, direction", [(1e-6, "down"), (1e3, "up")])
def test_levenberg_marquardt_rule(lr, direction):
    """Tiny steps: rho ~ 1 > 3/4, lambda x 2/3; huge steps: rho < 1/4, lambda x 3/2 (eq. 14)."""
    problem, network, params, batch = _setup("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    opt = kfac(network, problem.loss, learning_rate=lr, damping=1e-2, adapt_damping=True,
               damping_every=1, kind="ggn", estimator="exact")
    state = opt.init(params, batch, jax.random.PRNGKey(0))
    _, state, info = jax.jit(opt.update)(params, state, batch)
    factor = 2 / 3 if direction == "down" else 1.5
    assert float(state.damping) == pytest.approx(1e-2 * factor)
    assert (float(info.rho) > 0.75) if direction == "down" else (float(info.rho) < 0.25)


@pytest.mark.parametrize("method", ["eigen", "factored"])
def test_training_decreases_loss_and_does_not_recompile(method):
    problem, network, params, batch = _setup("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    opt = kfac(network, problem.loss, damping=1e-2, damping_method=method, stats_every=2,
               inverse_every=3, adapt_damping=True)
    state = opt.init(params, batch, jax.random.PRNGKey(1))
    traces = []

    def counted(p, s, b):
        traces.append(1)
        return opt.update(p, s, b)

    update = jax.jit(counted)
    first = None
    for _ in range(8):
        updates, state, info = update(params, state, batch)
        params = jax.tree_util.tree_map(jnp.add, params, updates)
        first = float(info.loss) if first is None else first
    assert len(traces) == 1 and int(state.step) == 8
    assert float(info.loss) < 0.5 * first


def test_sharded_statistics_match_unsharded():
    """Under shard_map with `axis_name`, every device holds the unsharded step."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    problem = zoo.make_problem((3, 4, 3), ("tanh", "identity"), "softmax_cross_entropy", 4,
                               seed=5)
    network, params = kj.problem_network(problem)
    batch = (jnp.asarray(problem.inputs), jnp.asarray(problem.targets))
    devices = [d for d in jax.devices()][: 2 if len(jax.devices()) >= 2 else 1]
    mesh = Mesh(np.array(devices), ("batch",))
    kwargs = dict(learning_rate=0.3, damping=0.1, kind="ggn", estimator="exact")
    plain, sharded = kfac(network, problem.loss, **kwargs), kfac(network, problem.loss,
                                                                  axis_name="batch", **kwargs)
    state = plain.init(params, batch, jax.random.PRNGKey(0))
    expected, _, _ = jax.jit(plain.update)(params, state, batch)
    step = jax.jit(jax.shard_map(lambda p, s, b: sharded.update(p, s, b)[0], mesh=mesh,
                                 in_specs=(P(), P(), P("batch")), out_specs=P(),
                                 check_vma=False))
    got = step(params, state, batch)
    np.testing.assert_allclose(canonical_vector(got), canonical_vector(expected), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("kwargs, message", [
    (dict(stats_every=0), "stats_every"), (dict(damping=0.0), "damping"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(momentum=0.9), "momentum"),
    (dict(learning_rate=-1.0), "learning_rate"), (dict(damping_method="cg"), "method"),
    (dict(kind="hessian"), "kind"),
], ids=["stats_every", "damping", "ema", "momentum", "lr", "method", "kind"])
def test_configuration_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kfac(kj.mlp_network(["identity"]), "mse", **kwargs)
