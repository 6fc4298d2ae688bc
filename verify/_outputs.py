"""Report files (`--json`, `--junit`): validated and opened before any work, written last.

A report lost after a long run is the worst outcome of a CI job, so the command line settles
every output path *before* it loads the adapter or the problems:

* each path is resolved against the invocation directory (a port that calls `os.chdir`
  cannot redirect it: the file is held open from the start);
* its directory must exist and the file must be writable (it is opened -- in append mode, so
  an existing file keeps its content until the report replaces it);
* it must not be an input (`--problems FILE`, the adapter's `.py` file) nor the other report.

Any violation is a `UsageError` (exit status 2, one line). `ReportFiles.write` then replaces
each file's content with the report; it is called on every way out of a run -- normal end,
Ctrl-C (a `partial` report), or a broken stdout -- so the report is always written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from verify._errors import UsageError

__all__ = ["ReportFiles", "resolve_input"]


def resolve_input(value: str | None) -> Path | None:
    """An input path (e.g. `--problems FILE`) resolved now, or None if it names no file."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path.resolve() if path.exists() else None


def _same(path: Path, other: Path) -> bool:
    if path == other:
        return True
    with contextlib.suppress(OSError):
        return path.exists() and other.exists() and os.path.samefile(path, other)
    return False


@dataclasses.dataclass
class ReportFiles:
    """The opened report files of one command (empty when none was asked for)."""

    handles: dict[str, tuple[Path, IO[Any]]] = dataclasses.field(default_factory=dict)

    @classmethod
    def open(
        cls, json_path: str | None, junit_path: str | None, inputs: Iterable[Path | None] = ()
    ) -> ReportFiles:
        """Validate and open the outputs (see module docstring).

        Raises:
            UsageError: a missing directory, an unwritable file, a directory given as the
                file, or an output equal to an input or to the other output.
        """
        files = cls()
        known = [p for p in inputs if p is not None]
        try:
            for option, value, mode in (("--json", json_path, "a"), ("--junit", junit_path, "ab")):
                if not value:
                    continue
                path = Path(os.path.abspath(Path(value).expanduser()))
                if path.is_dir():
                    raise UsageError(f"{option} {value!r}: is a directory, expected a file path")
                if not path.parent.is_dir():
                    raise UsageError(
                        f"{option} {value!r}: directory {str(path.parent)!r} does not exist"
                    )
                clash = next((p for p in known if _same(path, p)), None)
                if clash is not None:
                    raise UsageError(
                        f"{option} {value!r}: is also an input or output ({str(clash)!r}); "
                        "refusing to overwrite it"
                    )
                try:
                    handle = open(path, mode, encoding=None if "b" in mode else "utf-8")  # noqa: SIM115
                except OSError as exc:
                    raise UsageError(
                        f"{option} {value!r}: cannot write: {exc.strerror or exc}"
                    ) from None
                files.handles[option] = (path, handle)
                known.append(path)
        except UsageError:
            files.close()
            raise
        return files

    def write(self, report: Any) -> None:
        """Replace each opened file's content with `report` (JSON / JUnit XML)."""
        for option, (_, handle) in self.handles.items():
            buffer = io.StringIO() if option == "--json" else io.BytesIO()
            if option == "--json":
                report.write_json(buffer)
            else:
                report.write_junit(buffer)
            handle.seek(0)
            handle.truncate()
            handle.write(buffer.getvalue())
            handle.flush()

    def close(self) -> None:
        """Close the files."""
        for _, handle in self.handles.values():
            with contextlib.suppress(OSError):
                handle.close()
        self.handles.clear()
