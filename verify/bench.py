"""`ngd-verify bench`: cost ratios measured side by side in one run (PROTOCOL section 7).

Model and data: the MLP 784-512-512-10 (tanh, tanh, identity), softmax cross-entropy,
float32, batch 256, random data and parameters; every function jit-compiled, timed as the
median of repeated calls after a warm-up, blocked on the result, all functions in interleaved
rounds (`verify._timing.interleaved_seconds`). Each ratio divides by one
loss gradient (`ngd_ref.jax.gradient`) measured in the same process:

    ggn_vp_over_grad      ggn_vp at fresh parameters (linearization included)
    fisher_vp_over_grad   fisher_vp (exact Fisher) likewise
    hvp_over_grad         hvp (forward-over-reverse)
    cg_iter_over_grad     one iteration of cg_solve on G + lambda I with the linearization
                          reused: (T(m2 iterations) - T(m1 iterations)) / (m2 - m1)

and, beyond the protocol, `ggn_vp_over_plain_jax_ggn_vp`: our GGN-vp against the textbook
JAX composition (`jax.jvp` of the network, the loss Hessian by forward-over-reverse,
`jax.vjp`) in the same run.

Flop predictions count the dense layers' multiply-adds (`L_l = B n_in n_out`; the input
layer needs no input cotangent): gradient `fwd + bwd = sum L + (sum L + sum_{l>1} L)`;
GGN/Fisher-vp `fwd + JVP + VJP`, the JVP costing like the backward pass; one CG iteration
`JVP + VJP`; HVP (forward-over-reverse) the gradient plus the tangents of every product
(`4 L_1 + 9 sum_{l>1} L_l`). The K-FAC rows come from `verify._bench_kfac.kfac_section` and
the dense-reference scaling from `verify._bench_dense.dense_section`.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from verify._timing import interleaved_seconds

__all__ = ["run_bench"]

SIZES = (784, 512, 512, 10)
ACTIVATIONS = ("tanh", "tanh", "identity")
BATCH = 256
CG_ITERATIONS = (5, 25)


def machine() -> dict[str, Any]:
    """Platform, CPU model, core count, JAX version and device kind."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__,
            "device_kind": device.device_kind, "device_platform": device.platform,
            "device_count": jax.device_count()}


def flop_predictions(sizes: tuple[int, ...] = SIZES) -> dict[str, float]:
    """Predicted ratios from the dense layers' multiply-adds (see module docstring)."""
    cost = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
    first, rest = cost[0], sum(cost[1:])
    forward = first + rest
    backward = first + 2 * rest  # weight cotangents everywhere, input cotangents after layer 1
    grad = forward + backward
    return {"ggn_vp_over_grad": (forward + 2 * backward) / grad,
            "fisher_vp_over_grad": (forward + 2 * backward) / grad,
            "hvp_over_grad": (4 * first + 9 * rest) / grad,
            "cg_iter_over_grad": 2 * backward / grad}


def _ignoring_argument(call: Callable[[], Any]) -> Callable[[Any], Any]:
    """`call` as an `interleaved_seconds` contestant (which passes one argument)."""
    return lambda _: call()


def jax_section(quick: bool) -> dict[str, Any]:
    """Time the products and CG: seconds and ratios to one gradient."""
    from ngd_ref import jax as nj

    repeats = 5 if quick else 30
    key = jax.random.key(0)
    keys = jax.random.split(key, 2 * len(SIZES))
    params = [(jax.random.normal(keys[2 * i], (n_out, n_in), jnp.float32) / np.sqrt(n_in),
               jnp.zeros(n_out, jnp.float32))
              for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True))]
    batch = nj.Batch(jax.random.normal(keys[1], (BATCH, SIZES[0]), jnp.float32),
                     jax.random.randint(keys[3], (BATCH,), 0, SIZES[-1]))
    objective = nj.Objective(nj.mlp_apply(ACTIVATIONS), "softmax_cross_entropy")
    v = jax.tree.map(lambda p: jnp.ones_like(p) / 100, params)
    damping = jnp.asarray(1e-2, jnp.float32)

    @jax.jit
    def cg_run(params, maxiter):
        op = nj.curvature_operator(objective, params, batch, "ggn")
        g = nj.gradient(objective, params, batch)
        damped = lambda u: jax.tree.map(lambda a, b: a + damping * b, op(u), u)  # noqa: E731
        return nj.cg_solve(damped, g, tol=0.0, maxiter=maxiter, history=CG_ITERATIONS[1] + 1).x

    @jax.jit
    def plain_ggn_vp(params, v):
        """The textbook composition: JVP of the network, H_L by forward-over-reverse, VJP."""
        def network(p):
            return objective.apply(p, batch.inputs)

        def loss(z):
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), batch.targets[:, None], 1))

        z, jv = jax.jvp(network, (params,), (v,))
        hjv = jax.jvp(jax.grad(loss), (z,), (jv,))[1]
        return jax.vjp(network, params)[1](hjv)[0]

    calls = {
        "grad": lambda: nj.gradient(objective, params, batch),
        "plain_ggn_vp": lambda: plain_ggn_vp(params, v),
        "ggn_vp": lambda: nj.ggn_vp(objective, params, batch, v),
        "fisher_vp": lambda: nj.fisher_vp(objective, params, batch, v),
        "hvp": lambda: nj.hvp(objective, params, batch, v),
        "cg_low": lambda: cg_run(params, CG_ITERATIONS[0]),
        "cg_high": lambda: cg_run(params, CG_ITERATIONS[1]),
    }
    seconds = interleaved_seconds(
        {name: (_ignoring_argument(f), None) for name, f in calls.items()},
        calls=1, rounds=repeats)
    low, high = seconds.pop("cg_low"), seconds.pop("cg_high")
    seconds["cg_iter"] = (high - low) / (CG_ITERATIONS[1] - CG_ITERATIONS[0])
    predicted = flop_predictions()
    out: dict[str, Any] = {"model": {"sizes": list(SIZES), "activations": list(ACTIVATIONS),
                                     "loss": "softmax_cross_entropy", "dtype": "float32",
                                     "batch": BATCH}}
    for name in ("ggn_vp", "fisher_vp", "hvp", "cg_iter"):
        out[f"{name}_over_grad"] = seconds[name] / seconds["grad"]
        out[f"{name}_over_grad_flop_predicted"] = predicted[f"{name}_over_grad"]
    out["ggn_vp_over_plain_jax_ggn_vp"] = seconds["ggn_vp"] / seconds["plain_ggn_vp"]
    out["seconds"] = seconds
    return out


def _kfac(quick: bool) -> dict[str, Any]:
    try:
        from verify._bench_kfac import kfac_section
    except ImportError as exc:  # the K-FAC rows are written by another module
        return {"kfac_note": f"K-FAC rows unavailable: {exc}"}
    return kfac_section(quick)


def run_bench(json_path: str | None = None, quick: bool = False, dense_only: bool = False) -> int:
    """Measure, print a table, write the JSON; return the exit status (0)."""
    from rich.console import Console
    from rich.table import Table

    from verify._bench_dense import dense_section

    report: dict[str, Any] = {"schema": "ngd-verify/bench/v1", "machine": machine(),
                              "quick": quick}
    if not dense_only:
        report.update(jax_section(quick))
        report.update(_kfac(quick))
    report["dense"] = dense_section(quick)
    table = Table(title=f"ngd-verify bench ({report['machine']['cpu']}, "
                        f"{report['machine']['cores']} cores, jax {jax.__version__})")
    for column in ("ratio", "measured", "flop-predicted"):
        table.add_column(column, justify="right" if column != "ratio" else "left")
    for key, value in report.items():
        if key.endswith("_over_grad") or key.endswith("_step") and isinstance(value, float):
            predicted = report.get(f"{key}_flop_predicted", "")
            table.add_row(key, f"{value:.3f}",
                          f"{predicted:.3f}" if isinstance(predicted, float) else str(predicted))
    console = Console()
    console.print(table)
    if "seconds" in report:
        console.print("seconds: " + ", ".join(f"{k} {v * 1e3:.2f} ms"
                                               for k, v in report["seconds"].items()))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1, default=float) + "\n")
    return 0
