"""Terminal output (rich): the results table and progress. The only module that prints.

Every text that did not come from this module -- messages (which quote ports' exceptions),
problem and adapter names -- is escaped before rich sees it: `[bold]` or `[/x]` in a port's
message is shown as written, never parsed as markup (which could raise and lose the report).
The table is at most `WIDTH` columns wide; long cells are cut with an ellipsis (`-v` and the
JSON report have the full messages).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from verify._report import CheckResult, Report, Status, group_by

__all__ = ["print_report", "progress"]

#: the widest the results table gets
WIDTH = 100

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
    if console is None:
        console = Console()
        console.width = min(console.width, WIDTH) if sys.stdout.isatty() else WIDTH
    groups = group_by(report.results, group)
    width = min(console.width, WIDTH)
    name_width = min(max((len(name) for name in groups), default=8), 32)
    # 7 columns: 8 borders and 2 spaces of padding each; 4 counts of 5 and err/tol of 7
    note_width = max(width - name_width - 4 * 5 - 7 - 8 - 2 * 7, 10)
    table = Table(title=escape(f"ngd-verify: {report.adapter} ({report.dtype}, {report.devices} "
                               f"device{'s' if report.devices != 1 else ''})"
                               + (" PARTIAL: interrupted" if report.partial else "")),
                  show_lines=False, padding=(0, 1))
    table.add_column(group, overflow="fold", min_width=name_width, max_width=name_width)
    for status in Status:
        table.add_column(status.value, justify="right", style=_STYLE[status], no_wrap=True,
                         min_width=5, max_width=5)
    table.add_column("err/tol", justify="right", no_wrap=True, min_width=7, max_width=7)
    table.add_column("first failure (smallest problem)", overflow="ellipsis", no_wrap=True,
                     max_width=note_width)
    for name, results in groups.items():
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
        table.add_row(escape(name), *(str(counts[s] or "") for s in Status), worst, escape(note))
    console.print(table)
    if verbose:
        for r in report.results:
            if Status(r.status) in (Status.FAIL, Status.ERROR):
                console.print(f"[{_STYLE[Status(r.status)]}]{r.status.upper()}[/] "
                              + escape(f"{r.check} [{r.capability}] {r.problem}: {r.message}"),
                              soft_wrap=True)
    s = report.summary
    verdict = "[green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    console.print(f"{verdict}  {s['pass']} passed, {s['fail']} failed, {s['error']} errors, "
                  f"{s['skip']} skipped" + ("  (partial: the run was interrupted)"
                                            if report.partial else ""))


@contextlib.contextmanager
def progress(total: int, description: str, *,
             enabled: bool = True) -> Iterator[Callable[..., None]]:
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
