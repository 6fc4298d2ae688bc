"""Running every applicable check of an adapter on a set of problems, faults contained.

`run_checks` is the engine (used by `check_adapter`, the pytest plugin and the mutation
run); `check_adapter` adds loading, the problem sources and progress. For each claimed
capability and each problem the capability's check function (one module per family) runs in
a `CheckContext`; a fault in the port (exception, modified input) is recorded as that
check's `error`/`fail` and the run goes on with the next (capability, problem). Capabilities
the adapter does not claim are reported once each as `skip`, never as passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ngd_ref import Problem, ProblemError, zoo
from verify._errors import UsageError
from verify._report import CheckResult, Report, Status
from verify.harness._cg import check_cg
from verify.harness._context import CheckContext
from verify.harness._diagonals import DIAGONALS, check_diagonal
from verify.harness._faults import InputModified, NotClaimed, PortFault
from verify.harness._inputs import with_twin
from verify.harness._kfac import check_kfac_factors, check_kfac_solve
from verify.harness._loading import CAPABILITIES, LoadedAdapter, load_adapter
from verify.harness._matrices import check_gradient, check_loss, check_matrix
from verify.harness._method_inputs import INPUT_CHECKS
from verify.harness._methods import METHOD_CHECKS
from verify.harness._products import PRODUCTS, check_product
from verify.harness._updates import check_damped_update

__all__ = ["CHECKS", "check_adapter", "load_problems", "run_capability", "run_checks"]

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
    **INPUT_CHECKS,
}
#: problem capabilities run a second time on the reused-name twin (`_inputs`, issue 14)
CHECKS: dict[str, CheckFn] = {name: with_twin(fn, name) for name, fn in _CHECKS.items()}
assert set(CHECKS) == set(CAPABILITIES), "every capability needs a check function"


def run_capability(
    adapter: Any, capability: str, problem: Problem, *, dtype: str, seed: int = 0
) -> list[CheckResult]:
    """All checks of one capability on one problem, with fault containment."""
    ctx = CheckContext(adapter, capability, problem, dtype, seed)
    try:
        CHECKS[capability](ctx)
    except NotClaimed as exc:
        ctx.record(ctx.current or capability, Status.SKIP, f"port declines: {exc}")
    except InputModified as exc:
        ctx.record(ctx.current or capability, Status.FAIL, str(exc))
    except PortFault as exc:
        ctx.record(ctx.current or capability, Status.ERROR, str(exc))
    return ctx.results


def run_checks(
    loaded: LoadedAdapter,
    problems: Sequence[Problem],
    *,
    seed: int = 0,
    capabilities: Iterable[str] | None = None,
    advance: Callable[[str], None] = lambda label: None,
    stop_at_first_failure: bool = False,
) -> Report:
    """Check `loaded` on `problems`.

    Args:
        loaded: from `load_adapter`.
        problems: the problems.
        seed: seed of the probe vectors.
        capabilities: restrict to these claimed capabilities (default: all claimed).
        advance: called once per finished (capability, problem) with a label.
        stop_at_first_failure: return as soon as a check fails or errors (mutation runs).
    """
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
    for capability in wanted:
        for problem in problems:
            results = run_capability(
                loaded.instance, capability, problem, dtype=loaded.dtype, seed=seed
            )
            report.extend(results)
            advance(f"{capability} {problem.name}")
            if stop_at_first_failure and any(
                r.status in (Status.FAIL, Status.ERROR) for r in results
            ):
                return report
    return report


def _problems_from_file(path: Path) -> list[Problem]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--problems {str(path)!r}: cannot read JSON ({exc})") from None
    if isinstance(data, dict) and "problem" in data:
        data = [data["problem"]]  # a single fixture file
    if not isinstance(data, list) or not data:
        raise UsageError(
            f"--problems {str(path)!r}: expected a non-empty JSON list of problem objects"
        )
    problems = []
    for index, item in enumerate(data):
        try:
            problems.append(Problem.from_dict(item))
        except ProblemError as exc:
            raise UsageError(f"--problems {str(path)!r}: problem {index}: {exc}") from None
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

    Raises:
        UsageError: see `load_adapter` and `load_problems`.
    """
    from verify._console import progress

    loaded = load_adapter(target)
    problems = load_problems(source, fuzz=fuzz, seed=seed)
    wanted = (
        loaded.capabilities
        if capabilities is None
        else [c for c in loaded.capabilities if c in set(capabilities)]
    )
    with progress(
        len(wanted) * len(problems), f"checking {loaded.name}", enabled=show_progress
    ) as advance:
        return run_checks(loaded, problems, seed=seed, capabilities=wanted, advance=advance)
