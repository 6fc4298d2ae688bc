"""docs/identities.md's table of theorems, generated from the registry.

`python -m verify.identities.table` rewrites the table in docs/identities.md (the block that
starts at the `| identity | kind | statement | source | module |` header and ends at the
first blank line), and the controls-by-module table (header `CONTROLS_HEADER`); `--check`
exits 1 if the file is out of date. The rows are the registered
identities (`IDENTITIES`) in registration order; a row's statement ends with its named
hypotheses (`[requires: ...]`), which the battery reports as not applicable where they fail.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from verify.identities import IDENTITIES, Identity

__all__ = ["CONTROLS_HEADER", "HEADER", "controls_table", "markdown_table", "render", "main"]

HEADER = "| identity | kind | statement | source | module |"
CONTROLS_HEADER = "| module | negative controls | identities they control |"
#: a module whose controls are result rows of its identities (trajectory's `*_differs`)
NO_CONTROL = "none registered: its identities emit `negative_control` result rows"
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


def controls_table() -> str:
    """Per module, its negative controls and the identities they control (same module)."""
    rows = [CONTROLS_HEADER, "|---|---|---|"]
    modules = list(dict.fromkeys(i.module for i in IDENTITIES))
    for module in modules:
        members = [i for i in IDENTITIES if i.module == module]
        controls = [f"`{i.name}`" for i in members if i.negative_control]
        identities = [f"`{i.name}`" for i in members if not i.negative_control]
        rows.append(f"| `{module}` | {', '.join(controls) or NO_CONTROL} | "
                    f"{', '.join(identities) or '(none)'} |")
    return "\n".join(rows)


def _replace_block(document: str, header: str, block: str) -> str:
    lines = document.split("\n")
    if header not in lines:
        raise ValueError(f"document: no table header {header!r}")
    start = lines.index(header)
    stop = start
    while stop < len(lines) and lines[stop].strip():
        stop += 1
    return "\n".join([*lines[:start], block, *lines[stop:]])


def render(document: str) -> str:
    """`document` with its tables replaced by `markdown_table()` and `controls_table()`.

    Raises:
        ValueError: if the document has no identity-table header (the controls table is
            optional).
    """
    out = _replace_block(document, HEADER, markdown_table())
    if CONTROLS_HEADER in out.split("\n"):
        out = _replace_block(out, CONTROLS_HEADER, controls_table())
    return out


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
