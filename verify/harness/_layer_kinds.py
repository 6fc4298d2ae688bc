"""Which layer kinds a port supports, and the problems it is therefore not checked on.

PROTOCOL s12 adds convolutions to the problems but leaves unsaid how a port that handles
dense layers only is told apart from one that mishandles convolutions. Here (a protocol
extension, docs/protocol.md "Extensions"): an adapter may declare the optional class
attribute

    layer_kinds = ("dense", "conv2d")

naming the layer kinds it supports (`ngd_ref.Layer.kind`, `ngd_ref.Conv2d.kind`); the
default is `("dense",)`, so every adapter written against protocol v1 stays valid. On a
problem with a layer of an undeclared kind, every capability that takes the problem is
recorded once as `skip` with the reason ("not checked": the port is never called with it,
so it can neither pass silently nor fail falsely); the capabilities whose inputs the harness
builds itself (`PROBLEM_FREE`: CG, BFGS, Shampoo, ... on matrices from the reference) run as
usual. A declaration that is not a collection of known kind names is a usage error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ngd_ref import Conv2d, Layer, Problem
from verify._errors import UsageError

__all__ = ["DEFAULT_LAYER_KINDS", "KNOWN_LAYER_KINDS", "PROBLEM_FREE", "declared_layer_kinds",
           "unsupported_kinds"]

#: every layer kind of the protocol (s1 dense layers, s12 convolutions)
KNOWN_LAYER_KINDS: tuple[str, ...] = (Layer.kind, Conv2d.kind)
#: what an adapter without a `layer_kinds` attribute supports (protocol v1)
DEFAULT_LAYER_KINDS: tuple[str, ...] = (Layer.kind,)
#: capabilities whose port calls take no problem (the harness builds matrices and vectors
#: from the reference and hands over those): they run on every problem
PROBLEM_FREE = frozenset(
    {"cg", "bfgs_update", "lbfgs_direction", "hutchinson_diag", "hutchinson_trace",
     "inverse_root", "shampoo_direction"}
)


def declared_layer_kinds(value: Any) -> tuple[str, ...]:
    """The layer kinds an adapter's `layer_kinds` attribute declares (None: the default).

    Raises:
        UsageError: not a collection of names among `KNOWN_LAYER_KINDS`.
    """
    if value is None:
        return DEFAULT_LAYER_KINDS
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise UsageError(f"layer_kinds must be a tuple of layer kind names "
                         f"({', '.join(KNOWN_LAYER_KINDS)}), got {value!r}")
    kinds = tuple(value)
    unknown = [kind for kind in kinds if kind not in KNOWN_LAYER_KINDS]
    if unknown:
        raise UsageError(f"layer_kinds: unknown kinds {unknown!r}; expected some of "
                         f"{', '.join(KNOWN_LAYER_KINDS)}")
    return kinds


def unsupported_kinds(problem: Problem, supported: tuple[str, ...]) -> list[str]:
    """The layer kinds of `problem` missing from `supported`, in order of first appearance."""
    return list(dict.fromkeys(layer.kind for layer in problem.layers
                              if layer.kind not in supported))
