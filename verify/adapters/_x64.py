"""Float64 in JAX without touching its global state: adapters run their methods in a context.

The developers' guide: adapters never change global framework state (the `jax_enable_x64`
flag above all: flipping it at import time changes the dtypes of every other JAX user in the
process, and defeats the test suite's `x64` fixture). `in_x64` wraps every public method of
an adapter class in `jax.enable_x64(True)`, a thread-local context (`jax.experimental.
enable_x64()` on older JAX), so float64 arrays stay float64 inside and nothing changes
outside.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, TypeVar

__all__ = ["in_x64", "x64"]

T = TypeVar("T", bound=type)


def x64() -> contextlib.AbstractContextManager[Any]:
    """A context in which JAX computes in 64 bits (thread-local)."""
    import jax

    enable = getattr(jax, "enable_x64", None)
    if callable(enable):
        return enable(True)
    import importlib

    return importlib.import_module("jax.experimental").enable_x64()  # JAX before jax.enable_x64


def in_x64(cls: T) -> T:
    """Run every public method of `cls` (inherited ones too) inside `x64()` (a decorator)."""
    for name in dir(cls):
        method = getattr(cls, name)
        if callable(method) and not name.startswith("_") and not isinstance(method, type):
            @functools.wraps(method)
            def wrapped(self: Any, *args: Any, _method: Any = method, **kwargs: Any) -> Any:
                with x64():
                    return _method(self, *args, **kwargs)

            setattr(cls, name, wrapped)
    return cls
