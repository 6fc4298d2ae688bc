"""Terminal output (rich): the results table and progress. The only module that prints."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from verify._report import CheckResult, Report, Status, group_by

__all__ = ["print_report", "progress"]

_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.ERROR: "bold magenta",
          Status.SKIP: "dim"}


def _smallest_problem(results: Sequence[CheckResult]) -> CheckResult:
    from ngd_ref import zoo

    def size(result: CheckResult) -> tuple[int, str]:
        try:
            return zoo.get(result.problem).n_params, result.problem
        except KeyError:
            return 10**9, result.problem

    return min(results, key=size)


def print_report(report: Report, *, group: str = "check", console: Console | None = None,
                 verbose: bool = False) -> None:
    """Print one row per group (identity or capability) and a line per failure.

    A failing row names the smallest failing problem, its error and tolerance and the
    message; `verbose` lists every failing problem.
    """
    # Off a terminal (CI logs, pipes) rich would wrap at 80 columns; the check names need more.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"ngd-verify: {report.adapter} ({report.dtype}, {report.devices} device"
                        f"{'s' if report.devices != 1 else ''})", show_lines=False)
    table.add_column(group)
    for status in Status:
        table.add_column(status.value, justify="right", style=_STYLE[status])
    table.add_column("worst error / tol", justify="right")
    table.add_column("first failure (smallest problem)")
    for name, results in group_by(report.results, group).items():
        counts = {s: sum(Status(r.status) is s for r in results) for s in Status}
        ratios = [r.error / r.tolerance for r in results
                  if r.error is not None and r.tolerance and Status(r.status) is not Status.SKIP]
        worst = f"{max(ratios):.2g}" if ratios else ""
        bad = [r for r in results if Status(r.status) in (Status.FAIL, Status.ERROR)]
        note = ""
        if bad:
            first = _smallest_problem(bad)
            note = f"{first.problem}: {first.message}"
        elif counts[Status.SKIP] == len(results):
            note = results[0].message
        table.add_row(name, *(str(counts[s] or "") for s in Status), worst, note)
    console.print(table)
    if verbose:
        for r in report.results:
            if Status(r.status) in (Status.FAIL, Status.ERROR):
                console.print(f"[{_STYLE[Status(r.status)]}]{r.status.upper()}[/] {r.check} "
                              f"[{r.capability}] {r.problem}: {r.message}")
    s = report.summary
    verdict = "[green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    console.print(f"{verdict}  {s['pass']} passed, {s['fail']} failed, {s['error']} errors, "
                  f"{s['skip']} skipped")


@contextlib.contextmanager
def progress(total: int, description: str, *, enabled: bool = True) -> Iterator[callable]:
    """A progress bar on stderr; yields `advance(label)` to call once per finished item."""
    if not enabled:
        yield lambda label="": None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[label]}"),
                   console=Console(stderr=True), transient=True)
    with bar:
        task = bar.add_task(description, total=total, label="")
        yield lambda label="": bar.update(task, advance=1, label=label)
