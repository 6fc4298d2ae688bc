"""Data parallelism for the JAX products and solvers: the batch sharded over a device mesh.

Every batch quantity in ngd-verify is a weighted sum over examples,
`Q = sum_b w_b q_b` with `w_b = c` (PROTOCOL section 1). So a computation is written once as
a *local* function that sums over the examples it holds and then all-reduces with
`jax.lax.psum` over the mesh axis `"batch"` (a no-op without a mesh). Run under
`jax.shard_map` with the batch split and the parameters replicated, each device computes its
partial sum and the psum makes every device hold the full, identical result -- so a CG loop
built on such products runs replicated, in lockstep, with one all-reduce per product.

A batch whose size does not divide the number of devices is padded by repeating its first
example with weight 0, so results equal the unsharded ones up to the order of summation.

Host CPU devices: XLA exposes one CPU device unless told otherwise; set
`XLA_FLAGS=--xla_force_host_platform_device_count=N` *before* JAX is imported (the
`ngd-verify run --devices N` command and `tests/conftest.py` do this).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, PartitionSpec

__all__ = ["AXIS", "allsum", "batch_mesh", "pad_batch", "run_sharded"]

AXIS = "batch"


def batch_mesh(devices: int | None = None) -> Mesh:
    """Build a one-axis mesh named `"batch"` over the first `devices` devices (default: all).

    Raises:
        ValueError: when fewer devices exist than requested, saying how to get more.
    """
    available = jax.devices()
    count = len(available) if devices is None else devices
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"devices: expected a positive int or None, got {devices!r}")
    if count > len(available):
        raise ValueError(
            f"devices: asked for {count} but JAX sees {len(available)} "
            f"({available[0].platform}); on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before importing jax"
        )
    return jax.make_mesh((count,), (AXIS,), axis_types=(AxisType.Auto,), devices=available[:count])


def allsum(tree: Any, axis: str | None) -> Any:
    """`psum` of every leaf over `axis` (identity when `axis` is None: one device)."""
    if axis is None:
        return tree
    return jax.tree.map(lambda leaf: jax.lax.psum(leaf, axis), tree)


def pad_batch(arrays: tuple[jax.Array, ...], weights: jax.Array, multiple: int):
    """Pad per-example `arrays` and `weights` to a multiple of `multiple` examples.

    Padding repeats the first example (so every value stays finite) with weight 0.
    """
    size = weights.shape[0]
    extra = -size % multiple
    if not extra:
        return arrays, weights

    def pad(a):
        return jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)], axis=0)

    padded_weights = jnp.concatenate([weights, jnp.zeros(extra, weights.dtype)])
    return tuple(pad(a) for a in arrays), padded_weights


def run_sharded(local: Callable[..., Any], mesh: Mesh | None, replicated: tuple[Any, ...],
                per_example: tuple[jax.Array, ...], weights: jax.Array) -> Any:
    """Call `local(axis, *replicated, *per_example, weights)` on one device or over `mesh`.

    `local` sums over the examples it is given and reduces with `allsum(., axis)`; its
    outputs must therefore be replicated. With `mesh=None` it runs as is (`axis=None`).
    """
    if mesh is None:
        return local(None, *replicated, *per_example, weights)
    per_example, weights = pad_batch(per_example, weights, mesh.size)
    specs = (PartitionSpec(),) * len(replicated) + (PartitionSpec(AXIS),) * (len(per_example) + 1)
    body = jax.shard_map(functools.partial(local, AXIS), mesh=mesh, in_specs=specs,
                         out_specs=PartitionSpec(), check_vma=False)
    return body(*replicated, *per_example, weights)
