"""Running every applicable check of an adapter on a set of problems, faults contained.

`run_checks` is the engine (used by `check_adapter`, the pytest plugin and the mutation
run); `check_adapter` adds loading, the problem sources and progress. For each claimed
capability and each problem the capability's check function (one module per family) runs in
a `CheckContext`; a fault in the port (exception, modified input) is recorded as that
check's `error`/`fail` and the run goes on with the next (capability, problem). Capabilities
the adapter does not claim are reported once each as `skip`, never as passed. With a
schedule prefetch (`verify.harness._prefetch`: two or more CPUs, three or more problems),
`optimizer_trajectory` runs after the other capabilities, so that the worker computing its
schedules has their time.

A call that exceeds the timeout (`--timeout`, default `DEFAULT_TIMEOUT`) is abandoned and
recorded as `error`; the capability's remaining problems are then recorded as `error` ("not
run: ... timed out") without calling the port again, so a hanging capability costs at most
one timeout. An exception of the oracle's own code (the reference, the tolerance policy) is
contained the same way, as an `error` whose message names ngd-verify, not the port, as its
source: an internal failure never crashes a run, and never passes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ngd_ref import Problem, ProblemError, zoo
from verify._errors import UsageError
from verify._report import CheckResult, Report, Status
from verify.harness._cg import check_cg
from verify.harness._context import CheckContext
from verify.harness._diagonals import DIAGONALS, check_diagonal
from verify.harness._faults import (
    BadResult,
    InputModified,
    NotClaimed,
    PortFault,
    PortTimeout,
    describe_exception,
)
from verify.harness._inputs import with_twin
from verify.harness._isolation import DEFAULT_TIMEOUT
from verify.harness._kfac import check_kfac_factors, check_kfac_solve
from verify.harness._layer_kinds import PROBLEM_FREE, declared_layer_kinds, unsupported_kinds
from verify.harness._loading import CAPABILITIES, LoadedAdapter, load_adapter
from verify.harness._matrices import check_gradient, check_loss, check_matrix
from verify.harness._method_inputs import INPUT_CHECKS
from verify.harness._methods import METHOD_CHECKS
from verify.harness._prefetch import prefetch_worthwhile, prefetching
from verify.harness._products import PRODUCTS, check_product
from verify.harness._s13 import S13_CHECKS
from verify.harness._sampled import SAMPLED_CHECKS
from verify.harness._trajectory import FAMILIES, check_optimizer_trajectory, scheduled
from verify.harness._updates import check_damped_update

__all__ = [
    "CHECKS",
    "MAX_PARAMS",
    "check_adapter",
    "check_problem_size",
    "load_problems",
    "run_capability",
    "run_checks",
]

CheckFn = Callable[[CheckContext], None]

#: capability -> the function checking it on one problem
_CHECKS: dict[str, CheckFn] = {
    "loss": check_loss,
    "gradient": check_gradient,
    **{name: check_matrix for name in ("hessian", "ggn", "fisher", "empirical_fisher")},
    **{name: check_product for name in PRODUCTS},
    **{name: check_diagonal for name in DIAGONALS},
    "damped_update": check_damped_update,
    "kfac_factors": check_kfac_factors,
    "kfac_solve": check_kfac_solve,
    "cg": check_cg,
    **METHOD_CHECKS,
    "optimizer_trajectory": check_optimizer_trajectory,
    **SAMPLED_CHECKS,
    **S13_CHECKS,
    **INPUT_CHECKS,
}
#: problem capabilities run a second time on the reused-name twin (`_inputs`, issue 14)
CHECKS: dict[str, CheckFn] = {name: with_twin(fn, name) for name, fn in _CHECKS.items()}
assert set(CHECKS) == set(CAPABILITIES), "every capability needs a check function"


def run_capability(
    adapter: Any,
    capability: str,
    problem: Problem,
    *,
    dtype: str,
    seed: int = 0,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> list[CheckResult]:
    """All checks of one capability on one problem, with fault containment."""
    return _run_one(adapter, capability, problem, dtype, seed, timeout)[0]


def _run_one(
    adapter: Any, capability: str, problem: Problem, dtype: str, seed: int,
    timeout: float | None,
) -> tuple[list[CheckResult], bool]:
    """`run_capability`'s results, and whether a port call timed out.

    A problem with a layer kind the adapter does not declare (`layer_kinds`,
    `verify.harness._layer_kinds`) is one `skip` result, the port not called.
    """
    missing = _undeclared(adapter, capability, problem)
    if missing:
        kinds = declared_layer_kinds(getattr(adapter, "layer_kinds", None))
        return [CheckResult(capability, capability, problem.name, Status.SKIP,
                            message=f"not checked: the problem has {', '.join(missing)} layers "
                            f"and the adapter's layer_kinds {list(kinds)} does not declare "
                            f"them (PROTOCOL s12)")], False
    ctx = CheckContext(adapter, capability, problem, dtype, seed, timeout=timeout)
    timed_out = False
    # The oracle's own arithmetic runs with numpy's errors ignored (non-finite values are
    # caught explicitly by the comparisons) and warnings as warnings: a port's global
    # `np.seterr(all="raise")` or `warnings.simplefilter("error")` cannot turn them into
    # exceptions of the harness.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            CHECKS[capability](ctx)
        except NotClaimed as exc:
            ctx.record(ctx.current or capability, Status.SKIP, f"port declines: {exc}")
        except (InputModified, BadResult) as exc:
            ctx.record(ctx.current or capability, Status.FAIL, str(exc))
        except PortTimeout as exc:
            timed_out = True
            ctx.record(ctx.current or capability, Status.ERROR, str(exc))
        except PortFault as exc:
            ctx.record(ctx.current or capability, Status.ERROR, str(exc))
        except Exception as exc:  # noqa: BLE001 -- an oracle bug must not end the run
            ctx.record(
                ctx.current or capability,
                Status.ERROR,
                f"internal error of ngd-verify (the oracle's reference or tolerance code, not "
                f"the port): {describe_exception(exc)}; please report it",
            )
    return ctx.results, timed_out


def _undeclared(adapter: Any, capability: str, problem: Problem) -> list[str]:
    """The layer kinds of `problem` the adapter does not declare, for this capability."""
    if capability in PROBLEM_FREE:
        return []
    return unsupported_kinds(problem, declared_layer_kinds(getattr(adapter, "layer_kinds", None)))


def run_checks(
    loaded: LoadedAdapter,
    problems: Sequence[Problem],
    *,
    seed: int = 0,
    capabilities: Iterable[str] | None = None,
    advance: Callable[[str], None] = lambda label: None,
    stop_at_first_failure: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
    report: Report | None = None,
) -> Report:
    """Check `loaded` on `problems`.

    Args:
        loaded: from `load_adapter`.
        problems: the problems.
        seed: seed of the probe vectors.
        capabilities: restrict to these claimed capabilities (default: all claimed).
        advance: called once per finished (capability, problem) with a label.
        stop_at_first_failure: return as soon as a check fails or errors (mutation runs).
        timeout: seconds one port call may take (None: no limit); after a timeout the
            capability's remaining problems are recorded as `error` without calling it.
        report: append to this report (so a caller holds the partial results if the run is
            interrupted); default a new one.
    """
    if report is None:
        report = Report(adapter=loaded.name, dtype=loaded.dtype)
    wanted = (
        loaded.capabilities
        if capabilities is None
        else tuple(c for c in loaded.capabilities if c in set(capabilities))
    )
    for capability in CAPABILITIES:
        if capability not in loaded.capabilities:
            report.results.append(
                CheckResult(
                    capability,
                    capability,
                    "*",
                    Status.SKIP,
                    message="capability not claimed by the adapter",
                )
            )
    ahead = [p for p in problems if not scheduled(p, loaded.dtype)]
    trajectories = "optimizer_trajectory" in wanted and prefetch_worthwhile(ahead)
    if trajectories:  # last, so that the prefetch has the other capabilities' time
        wanted = (*(c for c in wanted if c != "optimizer_trajectory"), "optimizer_trajectory")
    with prefetching(ahead if trajectories else (), FAMILIES, loaded.dtype):
        return _run_capabilities(loaded, problems, wanted, seed=seed, advance=advance,
                                 stop_at_first_failure=stop_at_first_failure,
                                 timeout=timeout, report=report)


def _run_capabilities(loaded: LoadedAdapter, problems: Sequence[Problem],
                      wanted: tuple[str, ...], *, seed: int, advance: Callable[[str], None],
                      stop_at_first_failure: bool, timeout: float | None,
                      report: Report) -> Report:
    for capability in wanted:
        hung: str | None = None
        for problem in problems:
            if hung is not None:
                results = [
                    CheckResult(capability, capability, problem.name, Status.ERROR,
                                message=f"not run: {capability} timed out on {hung}")
                ]
            else:
                results, timed_out = _run_one(
                    loaded.instance, capability, problem, loaded.dtype, seed, timeout
                )
                hung = problem.name if timed_out else None
            report.extend(results)
            advance(f"{capability} {problem.name}")
            if stop_at_first_failure and any(
                r.status in (Status.FAIL, Status.ERROR) for r in results
            ):
                return report
    return report


#: largest `--problems` file read (a problem within `MAX_PARAMS` is far smaller)
MAX_FILE_BYTES = 64 * 2**20
#: most parameters of a problem: the dense reference forms several n x n float64 matrices
#: (and 40-digit CG iterates); n = 1024 keeps each matrix at 8 MiB
MAX_PARAMS = 1024
#: most entries of the per-example Jacobians `(B, C, n)` the reference holds (128 MiB)
MAX_JACOBIAN = 2**24
_GZIP_MAGIC = b"\x1f\x8b"


def check_problem_size(layers: Any, batch: int, where: str) -> None:
    """Refuse a problem too large for the dense reference, before anything is allocated.

    Args:
        layers: the problem's layers as `(n_in, n_out, activation)` items (as in the JSON).
        batch: its batch size.
        where: the problem's label for the message.

    Raises:
        UsageError: `n > MAX_PARAMS` or `B C n > MAX_JACOBIAN`, naming the limit.
    """
    try:
        sizes = [(int(layer[0]), int(layer[1])) for layer in layers]
    except (TypeError, ValueError, IndexError, KeyError):
        return  # malformed or a convolution: checked once built (`_check_counts`)
    if not sizes:
        return
    _check_counts(sum((n_in + 1) * n_out for n_in, n_out in sizes), sizes[-1][1], batch, where)


def _check_counts(n: int, outputs: int, batch: int, where: str) -> None:
    """`check_problem_size` on the counts: `n` parameters, C `outputs`, `batch` examples."""
    if n > MAX_PARAMS:
        raise UsageError(
            f"{where}: {n} parameters; the dense reference is limited to n <= {MAX_PARAMS} "
            "(it forms n x n matrices)"
        )
    if batch * outputs * n > MAX_JACOBIAN:
        raise UsageError(
            f"{where}: batch {batch} x {outputs} outputs x {n} parameters exceeds the "
            f"reference's limit of {MAX_JACOBIAN} Jacobian entries"
        )


def _problems_from_file(path: Path) -> list[Problem]:
    label = f"--problems {str(path)!r}"
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UsageError(f"{label}: {size} bytes; the limit is {MAX_FILE_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if raw.startswith(_GZIP_MAGIC):
        raise UsageError(f"{label}: is gzip-compressed; decompress it first (gunzip)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{label}: not UTF-8 text (a binary file?)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{label}: cannot read JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"{label}: JSON nested too deeply") from None
    if isinstance(data, dict) and "problem" in data:
        data = [data["problem"]]  # a single fixture file
    if not isinstance(data, list) or not data:
        raise UsageError(
            f"{label}: expected a non-empty JSON list of problem objects"
        )
    problems = []
    for index, item in enumerate(data):
        if isinstance(item, dict):
            inputs = item.get("inputs")
            check_problem_size(
                item.get("layers", ()), len(inputs) if isinstance(inputs, list) else 1,
                f"{label}: problem {index}",
            )
        try:
            problems.append(Problem.from_dict(item))
            if not problems[-1].dense_only:  # a convolution's counts need its geometry
                _check_counts(problems[-1].n_params, problems[-1].output_dim,
                              problems[-1].batch_size, f"{label}: problem {index}")
        except UsageError:
            raise
        except ProblemError as exc:
            raise UsageError(f"{label}: problem {index}: {exc}") from None
        except (RecursionError, MemoryError):
            raise UsageError(f"{label}: problem {index}: nested too deeply or too large") from None
        except Exception as exc:  # noqa: BLE001 -- any malformed value is the user's input
            raise UsageError(
                f"{label}: problem {index}: malformed ({describe_exception(exc)})"
            ) from None
    names = [problem.name for problem in problems]
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise UsageError(f"{label}: duplicate problem names {duplicated[:5]}")
    return problems


def load_problems(source: str = "zoo", *, fuzz: int = 0, seed: int = 0) -> list[Problem]:
    """The problems of a source (`zoo`, `quick`, `fixtures` or a JSON file) plus `fuzz` generated.

    Raises:
        UsageError: unknown source, malformed file, or missing optional machinery.
    """
    if source in ("zoo", "quick"):
        problems = list(zoo.problems(quick=source == "quick"))
    elif source == "fixtures":
        try:
            from verify.fixtures import load_fixture_problems
        except ImportError as exc:
            raise UsageError(f"--problems fixtures: fixtures are unavailable ({exc})") from None
        problems = list(load_fixture_problems())
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(
                f"--problems {source!r}: expected zoo, quick, fixtures or an existing JSON file"
            )
        problems = _problems_from_file(path)
    if fuzz:
        try:
            from verify.strategies import generate
        except ImportError as exc:
            raise UsageError(f"--fuzz: the problem generator is unavailable ({exc})") from None
        problems += list(generate(fuzz, seed, quick=source == "quick"))
    return problems


def check_adapter(
    target: str | type | Any,
    *,
    source: str = "zoo",
    fuzz: int = 0,
    seed: int = 0,
    show_progress: bool = True,
    capabilities: Iterable[str] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    report: Report | None = None,
) -> Report:
    """Validate a port: load it, check every claimed capability on every problem.

    Args:
        target: `module:Class`, `file.py:Class`, a built-in short name, a class or an instance.
        source: `"zoo"`, `"quick"`, `"fixtures"` or a path to a JSON list of problems
            (the fixture `problem` format, PROTOCOL s8).
        fuzz: number of generated problems to add (`verify.strategies.generate`).
        seed: seed for generated problems and probe vectors.
        show_progress: show a progress bar on stderr.
        capabilities: restrict to these (default: every claimed capability).
        timeout: seconds one port call may take (see `run_checks`).
        report: fill this report (its `adapter` and `dtype` are set from the adapter), so
            that a caller interrupted mid-run still holds the results so far.

    Raises:
        UsageError: see `load_adapter` and `load_problems`.
    """
    from verify._console import progress

    problems = load_problems(source, fuzz=fuzz, seed=seed)  # before a port's import can chdir
    loaded = load_adapter(target, timeout=timeout)
    if report is not None:
        report.adapter, report.dtype = loaded.name, loaded.dtype
    wanted = (
        loaded.capabilities
        if capabilities is None
        else [c for c in loaded.capabilities if c in set(capabilities)]
    )
    with progress(
        len(wanted) * len(problems), f"checking {loaded.name}", enabled=show_progress
    ) as advance:
        return run_checks(loaded, problems, seed=seed, capabilities=wanted, advance=advance,
                          timeout=timeout, report=report)
