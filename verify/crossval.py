"""Cross-validation of the JAX implementation (`ngd_ref.jax`): the harness on its adapters.

Part of `ngd-verify run` (PROTOCOL s6). There is no second checking engine: the port harness
(`verify.harness.run_checks`) checks the built-in adapters `NgdRefJax` (float64) and
`NgdRefJaxFloat32` against the dense reference on the run's problems, exactly as it checks
anyone's port (`ngd-verify check --adapter ngd-ref-jax`), restricted to `CAPABILITIES`:

* `loss`, `gradient`; the four products `hvp`, `ggn_vp`, `fisher_vp`, `empirical_fisher_vp`
  on two probe vectors and their linear combination; the exact diagonals of G, F and EF
  (`diag(H)` is n HVPs in `ngd_ref.jax`, covered by the `hvp` checks and by `ngd-verify
  check --adapter ngd-ref-jax`);
* `damped_update`: `-(C + lambda I)^{-1} grad h` for C in H, G, F, EF and two dampings, which
  the adapter computes by `ngd_ref.jax.cg_solve` on `C` materialized from n products;
* `cg`: iterate by iterate (plain, Jacobi-preconditioned, from a nonzero `x0`) against the
  A-norm-optimal points of the Krylov spaces, `maxiter=0`, convergence;
* repeated calls identical, for every capability.

With `devices = N > 1` the same harness checks, for each precision, the adapter with the
batch sharded over N devices (`NgdRefJax(problems, devices=N)`, `SHARDED_CAPABILITIES`: every
capability above that involves the batch) against the same reference and tolerances: the
sharded computation equals the unsharded one within the tolerance both are held to.

Checks are named `jax_<harness check>_<dtype>[_sharded<N>]`, e.g.
`jax_ggn_vp_matches_reference_float32`; the capability is the adapter method. The adapters
are built with the problem list, so they share compilations across problems (frames,
`verify.adapters._jax_frames`). Compiled kernels are also kept in JAX's persistent
compilation cache (`$NGD_VERIFY_CACHE`, default `~/.cache/ngd-verify/jax`;
`NGD_VERIFY_CACHE=off` disables it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ngd_ref import Problem
from verify._report import CheckResult
from verify.harness import load_adapter, run_checks

__all__ = [
    "CAPABILITIES",
    "DTYPES",
    "SHARDED_CAPABILITIES",
    "Prepared",
    "count",
    "crossvalidate",
    "prepare",
]

DTYPES = ("float64", "float32")

#: the capabilities the cross-validation checks (harness order)
CAPABILITIES = ("loss", "gradient", "hvp", "ggn_vp", "fisher_vp", "empirical_fisher_vp",
                "ggn_diag", "fisher_diag", "empirical_fisher_diag",
                "damped_update", "cg")
#: those computed from the batch, hence sharded with `devices > 1` (`cg` runs on the
#: caller's operator)
SHARDED_CAPABILITIES = tuple(c for c in CAPABILITIES if c != "cg")


def count(problems: Sequence[Problem], devices: int = 1) -> int:
    """The number of (capability, problem) checks `crossvalidate` runs (for progress bars)."""
    per_dtype = len(CAPABILITIES) + (len(SHARDED_CAPABILITIES) if devices > 1 else 0)
    return len(DTYPES) * per_dtype * len(problems)


class Prepared:
    """The adapters of a cross-validation, compiling in background threads (`prepare`).

    Attributes:
        runs: `(adapter, capabilities, dtype, suffix)` per harness run.
        compiling: one future per adapter (`NgdRefJax.precompile`).
    """

    def __init__(self, runs: list[tuple[Any, tuple[str, ...], str, str]]) -> None:
        self.runs = runs
        self.compiling: list[concurrent.futures.Future] = []
        self.stop = threading.Event()
        self._ready = [-1] * len(runs)  # per run: the last problem whose kernels are compiled
        self._changed = threading.Condition()

    def advance(self, run: int, index: int) -> None:
        """Run `run`'s adapter has compiled every kernel problem `index` needs."""
        with self._changed:
            self._ready[run] = index
            self._changed.notify_all()

    def _ended(self, _: concurrent.futures.Future) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait(self, index: int | None = None) -> None:
        """Wait until every adapter has compiled problem `index`'s kernels (None: all).

        A compilation that failed or was cancelled counts as done: it is no result, and the
        harness makes the same calls and reports their outcome, contained.
        """
        def ready() -> bool:
            return all(future.done() or (index is not None and done >= index)
                       for future, done in zip(self.compiling, self._ready, strict=True))

        with self._changed:
            self._changed.wait_for(ready)

    def cancel(self) -> None:
        """Stop compiling after the kernel in progress (an interrupt: the process can exit).

        The compile threads are joined when the interpreter exits; without this a Ctrl-C
        during the battery waited for every planned kernel to compile (minutes).
        """
        self.stop.set()
        for future in self.compiling:
            future.cancel()


def prepare(problems: Sequence[Problem], *, devices: int = 1) -> Prepared:
    """Build the adapters (frames planned over `problems`) and start compiling their kernels.

    Two threads, one adapter each at a time, in the order of `problems`: XLA compiles without
    the GIL, so compilation overlaps whatever the caller does meanwhile (`ngd-verify run`:
    the cross-validation of the problems already compiled) and the tracing of the other
    thread. The results do not depend on it.
    """
    from verify.adapters.ngd_ref_jax import NgdRefJax, NgdRefJaxFloat32

    _enable_compilation_cache()
    runs: list[tuple[Any, tuple[str, ...], str, str]] = []
    for cls in (NgdRefJax, NgdRefJaxFloat32):
        runs.append((cls(problems), CAPABILITIES, cls.dtype, ""))
    if devices > 1:
        for cls in (NgdRefJax, NgdRefJaxFloat32):
            runs.append((cls(problems, devices=devices), SHARDED_CAPABILITIES, cls.dtype,
                         f"_sharded{devices}"))
    prepared = Prepared(runs)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                 thread_name_prefix="ngd-verify-compile")
    for run, (adapter, capabilities, _, _) in enumerate(runs):
        future = pool.submit(adapter.precompile, capabilities, stop=prepared.stop,
                             progress=functools.partial(prepared.advance, run))
        future.add_done_callback(prepared._ended)
        prepared.compiling.append(future)
    pool.shutdown(wait=False)
    return prepared


def crossvalidate(problems: Sequence[Problem], *, devices: int = 1, seed: int = 0,
                  progress: Callable[[str], None] | None = None,
                  prepared: Prepared | None = None,
                  results: list[CheckResult] | None = None) -> list[CheckResult]:
    """Check `ngd_ref.jax` (through its adapters) against the dense reference on `problems`.

    Args:
        problems: the problems (e.g. the zoo).
        devices: with N > 1, also check the adapters with the batch sharded over N devices.
        seed: seed of the probe vectors.
        progress: called once per finished (capability, problem) of each adapter.
        prepared: from `prepare(problems, devices=devices)` with the same problems in the
            same order (it waits for problem i's kernels by index; default: prepared here).
        results: the list to append to as each (problem, adapter) finishes (default: a new
            one); what it holds survives an interrupt (Ctrl-C), for a partial report.

    Returns:
        `results`: the harness's results, checks renamed `jax_<check>_<dtype>[_sharded<N>]`.
    """
    prepared = prepared or prepare(problems, devices=devices)
    advance = progress or (lambda label: None)
    loaded = [(load_adapter(adapter), capabilities, dtype, suffix)
              for adapter, capabilities, dtype, suffix in prepared.runs]
    results = [] if results is None else results
    for index, problem in enumerate(problems):  # problem-major: one reference per problem
        prepared.wait(index)
        for adapter, capabilities, dtype, suffix in loaded:
            report = run_checks(adapter, [problem], seed=seed, capabilities=capabilities,
                                advance=advance)
            results += [dataclasses.replace(r, check=f"jax_{r.check}_{dtype}{suffix}")
                        for r in report.results if r.capability in capabilities]
    return results


def _enable_compilation_cache() -> None:
    """Persist compiled kernels across runs (JAX's compilation cache), unless already set.

    `NGD_VERIFY_CACHE=off` leaves the cache disabled (cold-start timing, CI).
    """
    import jax

    path = os.environ.get("NGD_VERIFY_CACHE", os.path.expanduser("~/.cache/ngd-verify/jax"))
    configured = getattr(jax.config, "jax_compilation_cache_dir")  # noqa: B009 (dynamic for mypy)
    if configured or path == "off":
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
