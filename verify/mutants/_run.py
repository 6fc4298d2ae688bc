"""Running the mutation corpus: each mutant must be killed, each control must pass.

A mutant is *killed* when at least one check of one of its `capabilities` fails or errors
on the quick zoo (`run_mutant` stops at the first). A control passes when every check of
every capability passes on the quick zoo. `mutants_command` prints the kill rate per bug
class and returns 0 iff everything is killed and every control passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ngd_ref import zoo
from verify._report import CheckResult, Status
from verify.harness import load_adapter, run_checks
from verify.mutants import CONTROLS, Mutant, load_corpus

__all__ = ["MutantOutcome", "run_control", "run_mutant"]


@dataclasses.dataclass(frozen=True)
class MutantOutcome:
    """Whether a mutant was killed, and by which result."""

    mutant: Mutant
    killed: bool
    evidence: CheckResult | None


def run_mutant(mutant: Mutant, *, quick: bool = True) -> MutantOutcome:
    """Run `mutant`'s capabilities on the (quick) zoo until a check fails or errors."""
    loaded = load_adapter(mutant.adapter_class)
    report = run_checks(
        loaded,
        zoo.problems(quick=quick),
        capabilities=mutant.capabilities,
        stop_at_first_failure=True,
    )
    bad = [r for r in report.results if Status(r.status) in (Status.FAIL, Status.ERROR)]
    return MutantOutcome(mutant, bool(bad), bad[0] if bad else None)


def run_control(
    adapter_class: type, *, quick: bool = True, capabilities: Iterable[str] | None = None
) -> list[CheckResult]:
    """Every check (of `capabilities`: default all) of a correct port on the (quick) zoo.

    Returns the failures (none expected).
    """
    report = run_checks(
        load_adapter(adapter_class), zoo.problems(quick=quick), capabilities=capabilities
    )
    return [r for r in report.results if Status(r.status) in (Status.FAIL, Status.ERROR)]


def mutants_command(dtype: str = "both") -> int:
    """Print the kill rate table (rich); 0 iff every mutant is killed and every control passes."""
    from rich.console import Console
    from rich.table import Table

    wanted = {"float64", "float32"} if dtype == "both" else {dtype}
    mutants = [m for m in load_corpus().values() if m.dtype in wanted]
    outcomes = [run_mutant(m) for m in mutants]
    controls = [
        (cls, run_control(cls)) for cls in CONTROLS if getattr(cls, "dtype", "float64") in wanted
    ]
    console = Console()
    table = Table(title="ngd-verify mutation run (quick zoo)")
    for column in ("mutant", "bug class", "dtype", "killed by"):
        table.add_column(column)
    for outcome in outcomes:
        ev = outcome.evidence
        by = (
            f"{ev.check} on {ev.problem} ({Status(ev.status).value})"
            if ev
            else "[bold red]SURVIVED[/]"
        )
        table.add_row(outcome.mutant.name, outcome.mutant.bug_class.value, outcome.mutant.dtype, by)
    console.print(table)
    killed = sum(o.killed for o in outcomes)
    console.print(
        f"kill rate: {killed}/{len(outcomes)} mutants killed"
        f" ({100.0 * killed / max(len(outcomes), 1):.1f}%)"
    )
    for cls, failures in controls:
        verdict = "[green]passes[/]" if not failures else f"[bold red]{len(failures)} failures[/]"
        console.print(f"control {cls.name} ({cls.dtype}): {verdict}")
        for failure in failures[:5]:
            console.print(f"  {failure.check} on {failure.problem}: {failure.message}")
    ok = killed == len(outcomes) and all(not failures for _, failures in controls)
    return 0 if ok else 1
