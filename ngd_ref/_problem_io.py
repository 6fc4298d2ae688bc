"""Problems files: a JSON list of problems in the fixture `problem` format (PROTOCOL s8).

`write_problems(path, problems)` writes what `ngd-verify check --problems FILE` reads
(`verify.harness.load_problems`), so a zoo, its quick subset or a fuzz draw can be frozen,
edited and replayed (`ngd-verify problems export`). Numbers are written with Python's
shortest round-trip `repr`, so reading the file back gives bit-identical arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ngd_ref._problem import Problem

__all__ = ["problems_json", "write_problems"]


def problems_json(problems: Iterable[Problem]) -> str:
    """The problems file's text: a JSON list of `Problem.to_dict()` objects.

    Raises:
        ValueError: no problems, or two with the same name (a file must name each once).
    """
    items = [problem.to_dict() for problem in problems]
    if not items:
        raise ValueError("problems: expected at least one problem")
    names = [item["name"] for item in items]
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"problems: duplicate names {duplicated}")
    return json.dumps(items, indent=None) + "\n"


def write_problems(path: str | os.PathLike[str], problems: Iterable[Problem]) -> Path:
    """Write `problems` as a problems file at `path`; return the path.

    Raises:
        ValueError: see `problems_json`.
        OSError: the file cannot be written.
    """
    target = Path(path)
    target.write_text(problems_json(problems), encoding="utf-8")
    return target
