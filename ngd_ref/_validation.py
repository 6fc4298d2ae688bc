"""Argument checks shared by both twins: validate at the boundary, fail with the fix.

Each check names the argument, the value it got and what it expected, in one line, and
returns the normalized value so callers can trust it from then on.
"""

from __future__ import annotations

import enum
import math
from typing import Any, TypeVar

__all__ = ["as_member", "check_damping"]

E = TypeVar("E", bound=enum.Enum)


def as_member(kind: type[E], value: Any, argument: str) -> E:
    """`kind(value)`, or a `ValueError` naming `argument` and listing the members.

    Example:
        >>> as_member(KfacKind, "ggn", "kind")
        <KfacKind.GGN: 'ggn'>
    """
    try:
        return kind(value)
    except ValueError:
        options = ", ".join(str(member.value) for member in kind)
        raise ValueError(f"{argument}: expected one of {options}, got {value!r}") from None


def check_damping(damping: Any, *, positive: bool = False) -> float:
    """A damping `lambda` as a float: finite and `>= 0` (`> 0` with `positive`).

    Traced JAX values (inside `jit`) are not checked and are returned unchanged, since their
    value is unknown at trace time.

    Raises:
        ValueError: naming the damping and the bound it violates.
    """
    if isinstance(damping, bool | str | bytes):
        raise ValueError(f"damping: expected a number, got {damping!r}")
    try:
        value = float(damping)
    except Exception:  # noqa: BLE001 -- any failure to read a number is this one error
        if hasattr(damping, "aval"):
            return damping  # a JAX tracer: its value is unknown while tracing
        raise ValueError(f"damping: expected a number, got {damping!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"damping: expected a finite number {bound}, got {damping!r}")
    return value
