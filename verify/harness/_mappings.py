"""Keeping a port's JIT compilations from exhausting the process's memory mappings.

Every XLA CPU executable maps its generated code into the process (about 6 mappings per
small kernel with jax 0.10, measured), and JAX keeps every executable it compiled in its
caches for the life of the process. A port that compiles new kernels per problem shape and
capability -- the project's own `ngd-ref-jax` under `check --quick` does, about 4,000
mappings a minute -- reaches Linux's `vm.max_map_count` (65,530 by default) within minutes;
then LLVM fails ("Cannot allocate memory") and the process dies with SIGSEGV, with no
report. Threads cannot contain that, so the harness looks at the count before every port
call (`GUARD`, a `MappingGuard`; at most once per `interval` seconds, since reading
`/proc/self/maps` costs a few milliseconds) and, once it passes `fraction` of the limit,
clears JAX's compilation caches (`jax.clear_caches()`). That is a cache, not a setting: no
result and no configuration changes, and a port recompiles what it calls next. Off Linux (no
`/proc`), and in a process that has not imported JAX, the guard does nothing.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

__all__ = ["GUARD", "MappingGuard", "mapping_count", "mapping_limit"]

_MAPS = Path("/proc/self/maps")
_LIMIT = Path("/proc/sys/vm/max_map_count")


def mapping_count() -> int | None:
    """The number of memory mappings of this process (None where `/proc` has no maps)."""
    try:
        return _MAPS.read_bytes().count(b"\n")
    except OSError:
        return None


def mapping_limit() -> int | None:
    """The kernel's limit on a process's memory mappings (`vm.max_map_count`), or None."""
    try:
        return int(_LIMIT.read_text())
    except (OSError, ValueError):
        return None


class MappingGuard:
    """Clears JAX's compilation caches when the process nears its mapping limit.

    Args:
        limit: the mapping limit (default `vm.max_map_count`; None: the guard is off).
        fraction: clear once the count exceeds `fraction * limit`.
        interval: least seconds between two looks at the count.

    Attributes:
        clears: how many times the caches were cleared.
    """

    def __init__(self, limit: int | None = None, fraction: float = 0.5,
                 interval: float = 1.0) -> None:
        self._limit = mapping_limit() if limit is None else limit
        self._threshold = None if self._limit is None else fraction * self._limit
        self._interval = interval
        self._next = 0.0
        self.clears = 0

    def __call__(self) -> None:
        """Look at the count (if `interval` has passed) and clear the caches past the threshold.

        If clearing frees too little (the executables are held elsewhere), the threshold moves
        halfway to the limit, so the guard does not clear again at every look.
        """
        jax = sys.modules.get("jax")
        now = time.monotonic()
        if self._threshold is None or jax is None or now < self._next:
            return
        self._next = now + self._interval
        count = mapping_count()
        if count is None or count <= self._threshold:
            return
        jax.clear_caches()
        gc.collect()
        self.clears += 1
        after = mapping_count()
        if after is not None and self._limit is not None and after > self._threshold:
            self._threshold = (after + self._limit) / 2


#: the harness's guard, called before every port call (`verify.harness._faults`)
GUARD = MappingGuard()
