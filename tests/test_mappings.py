"""The harness keeps a JIT-compiling port from exhausting the process's memory mappings.

Regression: `ngd-verify check --adapter ngd-ref-jax --quick` died with SIGSEGV after about
11 minutes ("LLVM compilation error: Cannot allocate memory"), with no report: every compiled
kernel keeps its code mapped, and the count reached `vm.max_map_count`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from ngd_ref import zoo
from verify._report import Status
from verify.harness import _mappings, load_adapter, run_checks
from verify.harness._mappings import MappingGuard, mapping_count

pytestmark = pytest.mark.skipif(mapping_count() is None, reason="no /proc/self/maps here")


def _compile_distinct(count: int, guard: MappingGuard) -> int:
    """Compile `count` kernels of distinct shapes, calling `guard` after each; the peak count."""
    kernel = jax.jit(lambda x: jnp.sin(x) * 2 + jnp.cos(x) ** 2)
    peak = 0
    for size in range(count):
        kernel(jnp.ones(size + 1)).block_until_ready()
        guard()
        peak = max(peak, mapping_count() or 0)
    return peak


def test_compilations_without_the_guard_keep_their_mappings():
    """The control: without clearing, 25 compilations leave over 75 mappings behind."""
    jax.clear_caches()
    start = mapping_count()
    assert _compile_distinct(25, MappingGuard(limit=None)) > start + 75


def test_the_guard_clears_jax_caches_past_its_threshold():
    jax.clear_caches()
    start = mapping_count()
    guard = MappingGuard(limit=2 * (start + 75), fraction=0.5, interval=0.0)
    peak = _compile_distinct(25, guard)
    assert guard.clears >= 1
    assert peak < start + 75 + 30  # one look per compilation: at most one kernel over


def test_checks_pass_across_clears_of_the_adapters_compilations(monkeypatch):
    """`ngd-ref-jax` recompiles what it needs after a clear: the checks still pass."""
    jax.clear_caches()
    start = mapping_count()
    guard = MappingGuard(limit=2 * (start + 10), interval=0.0)  # any compilation crosses it
    monkeypatch.setattr(_mappings, "GUARD", guard)
    problems = zoo.problems(quick=True)[:1]
    report = run_checks(load_adapter("ngd-ref-jax"), problems, capabilities=["loss"])
    statuses = {r.status for r in report.results if r.problem != "*"}
    assert statuses == {Status.PASS}, [r for r in report.results if r.status != Status.PASS]
    assert guard.clears >= 1



def test_ngd_ref_jax_hutchinson_compiles_once_per_shape():
    """Regression: a closure per call made `hutchinson_diag` compile (~50 mappings) per call."""
    from verify.adapters.ngd_ref_jax import NgdRefJax

    port, matrix = NgdRefJax(), jnp.diag(jnp.arange(1.0, 6.0))
    port.hutchinson_diag(lambda v: matrix @ v, 5, 16, 0)
    before = mapping_count()
    for seed in range(1, 21):
        port.hutchinson_diag(lambda v, seed=seed: matrix @ v, 5, 16, seed)
    assert mapping_count() - before < 20
