"""K-FAC rows of `ngd-verify bench` (PROTOCOL s7): our K-FAC step against SGD and kfac-jax.

Model and data per PROTOCOL s7: MLP 784-512-512-10, tanh, softmax cross-entropy, float32,
jit-compiled, the same fixed batch every step (timing, not training). Two settings:

    kfac_step_over_sgd_step           B = 1024, statistics every 20, decompositions every 100
    kfac_frequent_step_over_sgd_step  B = 256,  statistics every step, decompositions every 20

Both use fixed learning rate, momentum and damping and factored damping (eq. 24). A step is
amortized: the wall time of `steps` consecutive jitted updates (>= 200, a multiple of the
decomposition interval, so every periodic cost is included in its exact proportion), divided by
`steps`, blocked on the result; the median over `repeats` such runs is reported, after a
warm-up that compiles and runs every branch. SGD is `params - lr * grad` at the same batch.

The flop-predicted ratio counts multiply-adds of the dense layers only (2 flops each):
gradient (forward, weight and input cotangents), statistics (the sampled pseudo-gradient's
backward pass without weight cotangents, `A_l`, `S_l`), preconditioning
(`S_d^{-1} V A_d^{-1}`: two matrix products per layer) and decompositions (Cholesky + inverse,
`~(7/3) m^3` per factor), amortized by their intervals.

kfac-jax (`kfac_step_over_kfac_jax_step`) is timed with its own optimizer at the same settings
when `import kfac_jax` works (its tox env pins jax 0.9.0); otherwise the key is absent and the
reason is recorded under `kfac_jax_note`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SETTINGS", "kfac_section"]

SIZES = (784, 512, 512, 10)
ACTIVATIONS = ("tanh", "tanh", "identity")
LEARNING_RATE, MOMENTUM, DAMPING = 1e-2, 0.9, 1e-2
# name -> (batch, stats_every, inverse_every)
SETTINGS = {
    "kfac_step_over_sgd_step": (1024, 20, 100),
    "kfac_frequent_step_over_sgd_step": (256, 1, 20),
}


def _problem(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = [(jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), jnp.float32),
               jnp.zeros((n_out,), jnp.float32)) for n_in, n_out in zip(SIZES[:-1], SIZES[1:],
                                                                         strict=True)]
    x = jnp.asarray(rng.normal(size=(batch, SIZES[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, SIZES[-1], batch), jnp.int32)
    return params, x, y


def _timed(step: Callable[[Any], Any], carry: Any, steps: int, repeats: int) -> tuple[float, Any]:
    """Median over `repeats` of (wall time of `steps` chained calls) / steps."""
    carry = jax.block_until_ready(step(carry))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            carry = step(carry)
        jax.block_until_ready(carry)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times), carry


def _sgd_seconds(batch: int, steps: int, repeats: int) -> float:
    from ngd_ref.kfac._jax import mlp_network

    params, x, y = _problem(batch)
    network = mlp_network(ACTIVATIONS)

    def loss(p):
        z = network.apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))

    @jax.jit
    def step(p):
        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda w, d: w - LEARNING_RATE * d, p, g)

    return _timed(step, params, steps, repeats)[0]


def _kfac_seconds(batch: int, stats_every: int, inverse_every: int, steps: int,
                  repeats: int) -> float:
    from ngd_ref.kfac._jax import mlp_network
    from ngd_ref.kfac._optimizer import kfac

    params, x, y = _problem(batch)
    opt = kfac(mlp_network(ACTIVATIONS), "softmax_cross_entropy", learning_rate=LEARNING_RATE,
               momentum=MOMENTUM, damping=DAMPING, damping_method="factored",
               stats_every=stats_every, inverse_every=inverse_every, estimator="sampled")
    state = opt.init(params, (x, y), jax.random.PRNGKey(0))
    update = jax.jit(opt.update)

    def step(carry):
        p, s = carry
        updates, s, _ = update(p, s, (x, y))
        return jax.tree_util.tree_map(jnp.add, p, updates), s

    return _timed(step, (params, state), steps, repeats)[0]


def _kfac_jax_seconds(batch: int, stats_every: int, inverse_every: int, steps: int,
                      repeats: int) -> float:
    """kfac-jax's own optimizer at the same settings (raises ImportError when unavailable).

    Same model (dense layers found by kfac-jax's automatic registration, the loss registered
    with `register_softmax_cross_entropy_loss`), fixed learning rate, momentum and damping,
    `curvature_update_period=stats_every`, `inverse_update_period=inverse_every`, its default
    factored (pi-damped) inverses, sampled Fisher statistics (`fisher_gradients`).
    """
    import kfac_jax

    layers, x, y = _problem(batch)
    params = {f"dense{i}": {"w": w.T, "b": b} for i, (w, b) in enumerate(layers)}

    def loss_fn(p, data):
        a, labels = data
        for i, act in enumerate(ACTIVATIONS):
            a = a @ p[f"dense{i}"]["w"] + p[f"dense{i}"]["b"]
            a = jnp.tanh(a) if act == "tanh" else a
        kfac_jax.register_softmax_cross_entropy_loss(a, labels)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(a), labels[:, None], axis=1))

    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss_fn), l2_reg=0.0,
        use_adaptive_learning_rate=False, use_adaptive_momentum=False,
        use_adaptive_damping=False, initial_damping=DAMPING, estimation_mode="fisher_gradients",
        curvature_ema=0.95, curvature_update_period=stats_every,
        inverse_update_period=inverse_every, num_burnin_steps=0, multi_device=False)
    rng = jax.random.PRNGKey(0)
    state = opt.init(params, rng, (x, y))
    lr, mom, damp = (jnp.asarray(v, jnp.float32) for v in (LEARNING_RATE, MOMENTUM, DAMPING))

    def step(carry):
        p, s = carry
        p, s, _ = opt.step(p, s, rng, batch=(x, y), learning_rate=lr, momentum=mom, damping=damp)
        return p, s

    return _timed(step, (params, state), steps, repeats)[0]


def kfac_section(quick: bool = False) -> dict[str, Any]:
    """Measure the K-FAC rows of PROTOCOL s7.

    Args:
        quick: fewer repeats (1 instead of 3) and 200 amortization steps (the minimum).

    Returns:
        The ratio keys, `<key>_seconds` (`{"kfac": s, "sgd": s}`), `<key>_flop_predicted`,
        and, where kfac-jax is importable, `kfac_step_over_kfac_jax_step` per setting;
        otherwise `kfac_jax_note`.
    """
    repeats = 1 if quick else 3
    out: dict[str, Any] = {}
    for key, (batch, stats_every, inverse_every) in SETTINGS.items():
        steps = max(200, inverse_every)
        sgd = _sgd_seconds(batch, steps, repeats)
        ours = _kfac_seconds(batch, stats_every, inverse_every, steps, repeats)
        out[key] = ours / sgd
        out[f"{key}_seconds"] = {"kfac": ours, "sgd": sgd}
        out[f"{key}_flop_predicted"] = flop_predicted_ratio(batch, stats_every, inverse_every)
    jax_ratios, notes = {}, []
    for key, (batch, stats_every, inverse_every) in SETTINGS.items():
        try:
            theirs = _kfac_jax_seconds(batch, stats_every, inverse_every,
                                       max(200, inverse_every), repeats)
        except ImportError as exc:
            notes.append(f"kfac-jax not importable here ({exc}); run the tox env 'kfac-jax'")
            break
        except Exception as exc:  # a failing third-party library is a finding, not a crash
            notes.append(f"kfac-jax failed for {key}: {type(exc).__name__}: {exc}")
            continue
        jax_ratios[key] = out[f"{key}_seconds"]["kfac"] / theirs
        out[f"{key}_seconds"]["kfac_jax"] = theirs
    if jax_ratios:
        out["kfac_step_over_kfac_jax_step"] = jax_ratios
    if notes:
        out["kfac_jax_note"] = "; ".join(notes)
    return out


def flop_predicted_ratio(batch: int, stats_every: int, inverse_every: int) -> float:
    """K-FAC step flops / SGD step flops for the bench model (module docstring)."""
    pairs = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    forward = sum(2 * batch * n_in * n_out for n_in, n_out in pairs)
    weight_cotangents = forward
    input_cotangents = sum(2 * batch * n_in * n_out for n_in, n_out in pairs[1:])
    grad = forward + weight_cotangents + input_cotangents
    stats = input_cotangents + sum(2 * batch * ((n_in + 1) ** 2 + n_out ** 2)
                                   for n_in, n_out in pairs)
    precondition = sum(2 * n_out * (n_in + 1) * (n_out + n_in + 1) for n_in, n_out in pairs)
    decompose = sum(7 / 3 * ((n_in + 1) ** 3 + n_out ** 3) for n_in, n_out in pairs)
    kfac_flops = grad + stats / stats_every + precondition + decompose / inverse_every
    return kfac_flops / grad
