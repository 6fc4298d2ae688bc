"""Fault containment: calling a port so that nothing it does can stop or corrupt the run.

Every call into the port goes through `call_port`:

* the port receives a *fresh, read-only copy* of the problem (writing into it raises numpy's
  "assignment destination is read-only", recorded as an error) and a private *writable* copy
  of every vector argument, compared afterwards with the harness's original. Writable on
  purpose: a port that modifies its input only when it can (seed 004's L-BFGS reuses the
  gradient buffer; `if g.flags.writeable: ...`) would slip past read-only inputs, and a
  caller of a real port hands it ordinary writable arrays;
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
    return Problem(
        problem.name,
        problem.layers,
        problem.loss,
        problem.params.copy(),
        problem.inputs.copy(),
        problem.targets.copy(),
        problem.reduction,
    )


def _private(arg: Any, label: str, watched: list[tuple[str, np.ndarray, np.ndarray]]) -> Any:
    """The port's copy of one argument; records (label, copy, original) for arrays."""
    if isinstance(arg, Problem):
        fresh = fresh_problem(arg)
        watched += [
            (f"problem.{f}", getattr(fresh, f), getattr(arg, f))
            for f in ("params", "inputs", "targets")
        ]
        return fresh
    if isinstance(arg, np.ndarray):
        copy = np.array(arg, copy=True)
        watched.append((label, copy, arg))
        return copy
    if isinstance(arg, list | tuple) and any(isinstance(a, np.ndarray) for a in arg):
        return type(arg)(_private(a, f"{label}[{i}]", watched) for i, a in enumerate(arg))
    return arg


def call_port(instance: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `instance.method(*args, **kwargs)` with containment (see module docstring).

    Problems among `args` are replaced by fresh read-only copies, arrays (also inside lists)
    by writable copies; both are compared with the originals after the call.

    Raises:
        PortFault, NotClaimed, InputModified: as described in the module docstring.
    """
    watched: list[tuple[str, np.ndarray, np.ndarray]] = []
    args = tuple(_private(a, f"argument {i + 1}", watched) for i, a in enumerate(args))
    kwargs = {k: _private(v, k, watched) for k, v in kwargs.items()}
    try:
        out = getattr(instance, method)(*args, **kwargs)
    except NotImplementedError as exc:
        raise NotClaimed(f"{method} raised NotImplementedError: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 -- containment is the point
        raise PortFault(f"{method} raised {type(exc).__name__}: {exc}") from exc
    for label, array, before in watched:
        if array.shape != before.shape or not np.array_equal(array, before, equal_nan=True):
            raise InputModified(f"{method} modified its input {label} in place")
    return out
