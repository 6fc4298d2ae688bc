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
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ngd_ref import Problem
from verify._report import CheckResult
from verify._worker import Worker, serve, worthwhile
from verify.harness import load_adapter, run_checks

__all__ = [
    "Beside",
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


def _runs(devices: int, dtypes: Sequence[str]) -> list[tuple[Any, tuple[str, ...], str, int]]:
    """`(adapter class, capabilities, suffix, devices)` of each harness run, in report order."""
    from verify.adapters.ngd_ref_jax import NgdRefJax, NgdRefJaxFloat32

    classes = [cls for cls in (NgdRefJax, NgdRefJaxFloat32) if cls.dtype in dtypes]
    runs: list[tuple[Any, tuple[str, ...], str, int]] = [
        (cls, CAPABILITIES, "", 1) for cls in classes]
    if devices > 1:
        runs += [(cls, SHARDED_CAPABILITIES, f"_sharded{devices}", devices) for cls in classes]
    return runs


def prepare(problems: Sequence[Problem], *, devices: int = 1,
            dtypes: Sequence[str] = DTYPES) -> Prepared:
    """Build the adapters (frames planned over `problems`) and start compiling their kernels.

    Two threads, one adapter each at a time, in the order of `problems`: XLA compiles without
    the GIL, so compilation overlaps whatever the caller does meanwhile (`ngd-verify run`:
    the cross-validation of the problems already compiled) and the tracing of the other
    thread. The results do not depend on it.

    Args:
        problems: the problems, in the order they will be checked.
        devices: with N > 1, also the adapters with the batch sharded over N devices.
        dtypes: the precisions whose adapters are built (default: both).
    """
    _enable_compilation_cache()
    runs = [(cls(problems, devices=count), capabilities, cls.dtype, suffix)
            for cls, capabilities, suffix, count in _runs(devices, dtypes)]
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


def _check_problem(prepared: Prepared, loaded: list[tuple[Any, tuple[str, ...], str, str]],
                   index: int, problem: Problem, seed: int,
                   advance: Callable[[str], None]) -> dict[str, list[CheckResult]]:
    """Every run's results on problem `index`, once its kernels are compiled.

    Keyed by check suffix (`_<dtype>[_sharded<N>]`), checks renamed `jax_<check><suffix>`.
    """
    prepared.wait(index)
    out = {}
    for adapter, capabilities, dtype, suffix in loaded:
        report = run_checks(adapter, [problem], seed=seed, capabilities=capabilities,
                            advance=advance)
        out[f"_{dtype}{suffix}"] = [dataclasses.replace(r, check=f"jax_{r.check}_{dtype}{suffix}")
                                    for r in report.results if r.capability in capabilities]
    return out


def _loaded(prepared: Prepared) -> list[tuple[Any, tuple[str, ...], str, str]]:
    return [(load_adapter(adapter), capabilities, dtype, suffix)
            for adapter, capabilities, dtype, suffix in prepared.runs]


class Beside:
    """The float32 runs of a cross-validation, checked by a second process (`verify._worker`).

    `ngd-verify run` is CPU-bound: with the battery in one worker process, the float64 runs
    here and the float32 runs in another, the three share two cores without waiting for each
    other's GIL (the full zoo, cold: 67 s in two processes, 61 s in three, measured on the
    2-core machine of docs/bench.md). The worker builds and compiles its own adapters and runs
    the same harness on pickled copies of the problems, so its results are those this
    process would compute; a problem it did not finish (it died or could not start) is checked
    here, on adapters prepared on first need.

    Args:
        problems: the problems, in the order they will be checked.
        devices: as for `crossvalidate`.
        seed: as for `crossvalidate`.
    """

    DTYPES = ("float32",)

    def __init__(self, problems: Sequence[Problem], *, devices: int = 1, seed: int = 0) -> None:
        self._problems = list(problems)
        self._devices, self._seed = devices, seed
        self._fallback: tuple[Prepared, list] | None = None
        self._worker = Worker("verify.crossval", (self._problems, devices, seed),
                              name="ngd-verify float32 cross-validation")

    @staticmethod
    def worthwhile(problems: Sequence[Problem]) -> bool:
        """Whether a worker would run beside the caller (`verify._worker.worthwhile`)."""
        return worthwhile(len(problems))

    def get(self, index: int, advance: Callable[[str], None]) -> dict[str, list[CheckResult]]:
        """Problem `index`'s float32 results (as `_check_problem`), waiting for them."""
        got = self._worker.get(index)
        if got is None:
            if self._fallback is None:
                prepared = prepare(self._problems, devices=self._devices, dtypes=self.DTYPES)
                self._fallback = prepared, _loaded(prepared)
            prepared, loaded = self._fallback
            return _check_problem(prepared, loaded, index, self._problems[index], self._seed,
                                  advance)
        for _, capabilities, _, _ in _runs(self._devices, self.DTYPES):
            for capability in capabilities:
                advance(f"{capability} {self._problems[index].name}")
        return got

    def close(self) -> None:
        """Stop the worker (and any fallback compilation)."""
        self._worker.close()
        if self._fallback is not None:
            self._fallback[0].cancel()


def crossvalidate(problems: Sequence[Problem], *, devices: int = 1, seed: int = 0,
                  progress: Callable[[str], None] | None = None,
                  prepared: Prepared | None = None, beside: Beside | None = None,
                  results: list[CheckResult] | None = None) -> list[CheckResult]:
    """Check `ngd_ref.jax` (through its adapters) against the dense reference on `problems`.

    Args:
        problems: the problems (e.g. the zoo).
        devices: with N > 1, also check the adapters with the batch sharded over N devices.
        seed: seed of the probe vectors.
        progress: called once per finished (capability, problem) of each adapter.
        prepared: from `prepare(problems, devices=devices)` with the same problems in the
            same order (it waits for problem i's kernels by index; default: prepared here).
            With `beside`, it holds the other precisions' adapters (`dtypes=("float64",)`).
        beside: the float32 runs in a second process (`Beside(problems, devices=devices,
            seed=seed)`); default: every run in this process.
        results: the list to append to as each problem finishes (default: a new one); what
            it holds survives an interrupt (Ctrl-C), for a partial report.

    Returns:
        `results`: the harness's results, checks renamed `jax_<check>_<dtype>[_sharded<N>]`,
        problem by problem, each problem's runs in `_runs` order (the same with or without
        `beside`).
    """
    dtypes = [d for d in DTYPES if beside is None or d not in Beside.DTYPES]
    prepared = prepared or prepare(problems, devices=devices, dtypes=dtypes)
    advance = progress or (lambda label: None)
    loaded = _loaded(prepared)
    order = [f"_{cls.dtype}{suffix}" for cls, _, suffix, _ in _runs(devices, DTYPES)]
    results = [] if results is None else results
    for index, problem in enumerate(problems):  # problem-major: one reference per problem
        runs = _check_problem(prepared, loaded, index, problem, seed, advance)
        if beside is not None:
            runs.update(beside.get(index, advance))
        results += [r for key in order for r in runs[key]]
    return results


def _serve(job: tuple[list[Problem], int, int]) -> Iterator[tuple[int, dict]]:
    """The worker's side of `Beside`: each problem's float32 results as they are computed."""
    problems, devices, seed = job
    prepared = prepare(problems, devices=devices, dtypes=Beside.DTYPES)
    loaded = _loaded(prepared)
    for index, problem in enumerate(problems):
        yield index, _check_problem(prepared, loaded, index, problem, seed, lambda label: None)


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


if __name__ == "__main__":
    serve(sys.argv, _serve)
