"""Fault containment: calling a port so that nothing it does can stop or corrupt the run.

Every call into the port goes through `call_port`:

* the port receives a *fresh, read-only copy* of the problem and read-only copies of every
  vector, so it can neither corrupt the shared zoo nor the harness's probes; a port that
  writes into them gets numpy's "assignment destination is read-only" error, recorded;
* an exception becomes a `PortFault` (status `error`, message naming the method and the
  exception); `NotImplementedError` becomes `NotClaimed` (status `skip`: the port declines a
  variant, e.g. a K-FAC kind its library does not have);
* after the call the inputs are compared with snapshots; a port that modified one anyway
  (e.g. by re-enabling the write flag) raises `InputModified` (status `fail`).

Wrong shapes, wrong types and NaNs in *results* are caught by `verify._tolerance.compare`
and the structural checks, which turn them into failures with a reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ngd_ref import Problem

__all__ = ["InputModified", "NotClaimed", "PortFault", "call_port", "fresh_problem", "readonly"]


class PortFault(Exception):
    """The port raised; the message names the method and the exception."""


class NotClaimed(Exception):
    """The port raised `NotImplementedError`: it declines this variant of a capability."""


class InputModified(Exception):
    """The port modified an input array in place."""


def readonly(array: Any, dtype: type = np.float64) -> np.ndarray:
    """An owned, read-only copy of `array`."""
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def fresh_problem(problem: Problem) -> Problem:
    """A new `Problem` with the same data in new read-only arrays (the port's private copy)."""
    return Problem(problem.name, problem.layers, problem.loss, problem.params.copy(),
                   problem.inputs.copy(), problem.targets.copy(), problem.reduction)


def _arrays(args: tuple[Any, ...]) -> list[tuple[str, np.ndarray]]:
    out = []
    for index, arg in enumerate(args):
        if isinstance(arg, Problem):
            out += [(f"problem.{f}", getattr(arg, f)) for f in ("params", "inputs", "targets")]
        elif isinstance(arg, np.ndarray):
            out.append((f"argument {index + 1}", arg))
        elif isinstance(arg, list | tuple):
            out += [(f"argument {index + 1}[{i}]", a) for i, a in enumerate(arg) if isinstance(a, np.ndarray)]
    return out


def call_port(instance: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `instance.method(*args, **kwargs)` with containment (see module docstring).

    Problems among `args` are replaced by fresh read-only copies; arrays must already be
    read-only (use `readonly`).

    Raises:
        PortFault, NotClaimed, InputModified: as described in the module docstring.
    """
    args = tuple(fresh_problem(a) if isinstance(a, Problem) else a for a in args)
    watched = _arrays(args) + _arrays(tuple(kwargs.values()))
    snapshots = [(label, array, array.copy()) for label, array in watched]
    try:
        out = getattr(instance, method)(*args, **kwargs)
    except NotImplementedError as exc:
        raise NotClaimed(f"{method} raised NotImplementedError: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 -- containment is the point
        raise PortFault(f"{method} raised {type(exc).__name__}: {exc}") from exc
    for label, array, before in snapshots:
        if not np.array_equal(array, before, equal_nan=True):
            raise InputModified(f"{method} modified its input {label} in place")
    return out
