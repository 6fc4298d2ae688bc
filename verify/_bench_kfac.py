"""K-FAC rows of `ngd-verify bench` (PROTOCOL s7): our K-FAC step against SGD and kfac-jax.

Model and data per PROTOCOL s7: MLP 784-512-512-10, tanh, softmax cross-entropy, float32,
jit-compiled, the same fixed batch every step (timing, not training). Two settings:

    kfac_step_over_sgd_step           B = 1024, statistics every 20, decompositions every 100
    kfac_frequent_step_over_sgd_step  B = 256,  statistics every step, decompositions every 20

Both use fixed learning rate, momentum and damping and factored damping (eq. 24). A step is
amortized: the wall time of `steps` consecutive jitted updates (>= 200, a multiple of the
decomposition interval, so every periodic cost is included in its exact proportion), divided by
`steps`, blocked on the result. SGD (`params - lr * grad` at the same batch), our K-FAC and,
where importable, kfac-jax are timed in interleaved rounds (`verify._timing`), the median over
rounds reported, after a warm-up that compiles and runs every branch.

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

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from verify._timing import interleaved_seconds

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


def _sgd_step(batch: int) -> tuple[Callable[[Any], Any], Any]:
    """`(step, params)` of SGD on the bench model: `params - lr * grad`.

    Like the K-FAC steps, one jitted call per step with the batch as an argument (a constant
    batch would let XLA specialize the program to it) and the parameters donated.
    """
    from ngd_ref.kfac._jax import mlp_network

    params, x, y = _problem(batch)
    network = mlp_network(ACTIVATIONS)

    def loss(p, x, y):
        z = network.apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))

    @functools.partial(jax.jit, donate_argnums=0)
    def sgd(p, x, y):
        g = jax.grad(loss)(p, x, y)
        return jax.tree_util.tree_map(lambda w, d: w - LEARNING_RATE * d, p, g)

    return (lambda p: sgd(p, x, y)), params


def _kfac_step(batch: int, stats_every: int, inverse_every: int) -> tuple[Callable, Any]:
    """`(step, (params, state))` of our K-FAC (`ngd_ref.kfac._optimizer.kfac`) at a setting.

    The update and its application are one jitted call with parameters and optimizer state
    donated, as kfac-jax's own step donates them.
    """
    from ngd_ref.kfac._jax import mlp_network
    from ngd_ref.kfac._optimizer import kfac

    params, x, y = _problem(batch)
    opt = kfac(mlp_network(ACTIVATIONS), "softmax_cross_entropy", learning_rate=LEARNING_RATE,
               momentum=MOMENTUM, damping=DAMPING, damping_method="factored",
               stats_every=stats_every, inverse_every=inverse_every, estimator="sampled")
    state = opt.init(params, (x, y), jax.random.PRNGKey(0))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def apply(p, s, x, y):
        updates, s, _ = opt.update(p, s, (x, y))
        return jax.tree_util.tree_map(jnp.add, p, updates), s

    return (lambda carry: apply(*carry, x, y)), (params, state)


def _kfac_jax_step(batch: int, stats_every: int, inverse_every: int) -> tuple[Callable, Any]:
    """`(step, (params, state))` of kfac-jax's own optimizer at the same settings.

    Raises ImportError when kfac-jax is unavailable. Same model (dense layers found by
    kfac-jax's automatic registration, the loss registered with
    `register_softmax_cross_entropy_loss`), fixed learning rate, momentum and damping,
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

    return step, (params, state)


def kfac_section(quick: bool = False) -> dict[str, Any]:
    """Measure the K-FAC rows of PROTOCOL s7.

    Args:
        quick: 3 rounds instead of 7 (200 amortization steps either way, the minimum).

    Returns:
        The ratio keys, `<key>_seconds` (`{"kfac": s, "sgd": s[, "kfac_jax": s]}`),
        `<key>_flop_predicted`, and, where kfac-jax is importable,
        `kfac_step_over_kfac_jax_step` per setting; otherwise `kfac_jax_note`.
    """
    rounds = 3 if quick else 7
    out: dict[str, Any] = {}
    jax_ratios: dict[str, Any] = {}
    notes: list[str] = []
    for key, (batch, stats_every, inverse_every) in SETTINGS.items():
        contestants = {"sgd": _sgd_step(batch),
                       "kfac": _kfac_step(batch, stats_every, inverse_every)}
        try:
            step, carry = _kfac_jax_step(batch, stats_every, inverse_every)
            contestants["kfac_jax"] = (step, jax.block_until_ready(step(carry)))
        except ImportError as exc:
            if not notes:
                notes.append(f"kfac-jax not importable here ({exc}); run the tox env 'kfac-jax'")
        except Exception as exc:  # a failing third-party library is a finding, not a crash
            notes.append(f"kfac-jax failed for {key}: {type(exc).__name__}: {exc}")
        seconds = interleaved_seconds(contestants, calls=max(200, inverse_every), rounds=rounds)
        out[key] = seconds["kfac"] / seconds["sgd"]
        out[f"{key}_seconds"] = seconds
        out[f"{key}_flop_predicted"] = flop_predicted_ratio(batch, stats_every, inverse_every)
        if "kfac_jax" in seconds:
            jax_ratios[key] = seconds["kfac"] / seconds["kfac_jax"]
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
