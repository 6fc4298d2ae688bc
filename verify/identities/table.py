"""docs/identities.md's table of theorems, generated from the registry.

`python -m verify.identities.table` rewrites the table in docs/identities.md (the block that
starts at the `| identity | kind | statement | source | module |` header and ends at the
first blank line); `--check` exits 1 if the file is out of date. The rows are the registered
identities (`IDENTITIES`) in registration order; a row's statement ends with its named
hypotheses (`[requires: ...]`), which the battery reports as not applicable where they fail.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from verify.identities import IDENTITIES, Identity

__all__ = ["HEADER", "markdown_table", "render", "main"]

HEADER = "| identity | kind | statement | source | module |"
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "identities.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(ident: Identity) -> str:
    kind = "negative control" if ident.negative_control else "identity"
    statement = ident.statement
    if ident.hypotheses:  # named hypotheses: reported as not applicable where they fail
        statement += " [requires: " + "; ".join(h.name for h in ident.hypotheses) + "]"
    return (f"| `{ident.name}` | {kind} | {_cell(statement)} | {_cell(ident.source)} | "
            f"`{ident.module}` |")


def markdown_table() -> str:
    """The table: header, separator, one row per registered identity."""
    return "\n".join([HEADER, "|---|---|---|---|---|", *(_row(i) for i in IDENTITIES)])


def render(document: str) -> str:
    """`document` with its table replaced by `markdown_table()`.

    Raises:
        ValueError: if the document has no table header.
    """
    lines = document.split("\n")
    if HEADER not in lines:
        raise ValueError(f"document: no table header {HEADER!r}")
    start = lines.index(HEADER)
    stop = start
    while stop < len(lines) and lines[stop].strip():
        stop += 1
    return "\n".join([*lines[:start], markdown_table(), *lines[stop:]])


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with `--check`, verify) docs/identities.md's table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    parser.add_argument("--path", type=pathlib.Path, default=DOC)
    args = parser.parse_args(argv)
    current = args.path.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{args.path}: table out of date; run python -m verify.identities.table")
            return 1
        return 0
    args.path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
