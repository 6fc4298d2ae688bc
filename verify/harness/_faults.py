"""Fault containment: calling a port so that nothing it does can stop or corrupt the run.

Every call into the port goes through `call_port`:

* the port receives a *fresh, read-only copy* of the problem and a private *read-only* copy
  of every array argument (vectors `v`, `b`, `x0`, `g`, every item of `s_list`/`y_list`,
  matrices `B`, `M`, `G`, `L`, `R`, ...), as the developers' guide promises ("hand arrays to
  ports read-only"). A port that writes into one (`g -= ...`, `v *= 2`, `np.copyto(b, ...)`)
  gets numpy's "assignment destination is read-only" / "output array is read-only". That
  `ValueError` is not reported as an ordinary crash: the call is repeated once with
  *writable* copies to see which inputs the port writes to, and the result is
  `InputModified` (status `fail`, "wrote to a read-only input ... modified argument 1 in
  place"), because the contract it breaks is "inputs come back unmodified". When no input
  changes, the read-only array was the port's own (`np.asarray` of a JAX array is
  read-only) and the error stays an ordinary `PortFault`;
* after the call every input is compared with the harness's original (belt and braces): a
  port that modified one anyway (e.g. by re-enabling the write flag of its private copy)
  raises `InputModified` too ("modified its input ... in place", status `fail`);
* any other exception becomes a `PortFault` (status `error`, message naming the method and
  the exception); `NotImplementedError` becomes `NotClaimed` (status `skip`: the port
  declines a variant, e.g. a K-FAC kind its library does not have).

Wrong shapes, wrong types and NaNs in *results* are caught by `verify._tolerance.compare`
and the structural checks, which turn them into failures with a reason. In every case the
run goes on with the next (capability, problem).
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


def readonly(array: Any, dtype: Any = np.float64) -> np.ndarray:
    """Return an owned, read-only copy of `array` (as `dtype`)."""
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def fresh_problem(problem: Problem) -> Problem:
    """Return a new `Problem` with the same data in new read-only arrays (the port's copy)."""
    return Problem(
        problem.name,
        problem.layers,
        problem.loss,
        problem.params.copy(),
        problem.inputs.copy(),
        problem.targets.copy(),
        problem.reduction,
        input_shape=problem.input_shape,
    )


#: the phrase of every numpy error for a write into a read-only array
_READ_ONLY = "read-only"

Watched = list[tuple[str, np.ndarray, np.ndarray]]


def _private(arg: Any, label: str, watched: Watched, *, writable: bool = False) -> Any:
    """Return the port's copy of one argument; record (label, copy, original) for arrays.

    Read-only unless `writable` (used only to find out which input a port writes to).
    """
    if isinstance(arg, Problem):
        fresh = fresh_problem(arg)
        for field in ("params", "inputs", "targets"):
            array = getattr(fresh, field)
            array.setflags(write=writable)
            watched.append((f"problem.{field}", array, getattr(arg, field)))
        return fresh
    if isinstance(arg, np.ndarray):
        copy = readonly(arg, arg.dtype)
        copy.setflags(write=writable)
        watched.append((label, copy, arg))
        return copy
    if isinstance(arg, list | tuple) and any(isinstance(a, np.ndarray) for a in arg):
        return type(arg)(
            _private(a, f"{label}[{i}]", watched, writable=writable) for i, a in enumerate(arg)
        )
    return arg


def _copies(args: tuple, kwargs: dict, *, writable: bool) -> tuple[tuple, dict, Watched]:
    """Return the port's private copies of all arguments and the watched arrays."""
    watched: Watched = []
    args = tuple(
        _private(a, f"argument {i + 1}", watched, writable=writable) for i, a in enumerate(args)
    )
    kwargs = {k: _private(v, k, watched, writable=writable) for k, v in kwargs.items()}
    return args, kwargs, watched


def _modified(watched: Watched) -> list[str]:
    return [
        label
        for label, array, before in watched
        if array.shape != before.shape or not np.array_equal(array, before, equal_nan=True)
    ]


def _read_only_write(
    instance: Any, method: str, args: tuple, kwargs: dict, error: ValueError
) -> Exception:
    """Return the fault to report for a write into a read-only array (an input or not).

    The call is repeated once with *writable* copies; the inputs that come back changed are
    the ones the port writes to (`InputModified`, naming them). If none does, the read-only
    array was the port's own (e.g. `np.asarray` of a JAX array) and the error is an
    ordinary `PortFault`.
    """
    retry_args, retry_kwargs, watched = _copies(args, kwargs, writable=True)
    try:
        getattr(instance, method)(*retry_args, **retry_kwargs)
    except Exception:  # noqa: BLE001, S110 -- only the retry's writes matter
        pass
    changed = _modified(watched)
    if changed:
        return InputModified(
            f"{method} wrote to a read-only input ({error}): handed writable copies, it "
            f"modified {', '.join(changed)} in place; ports must leave their inputs unmodified"
        )
    return PortFault(
        f"{method} raised ValueError: {error} (not a write into its inputs: with writable "
        "copies they come back unchanged)"
    )


def call_port(instance: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `instance.method(*args, **kwargs)` with containment (see module docstring).

    Problems among `args` are replaced by fresh read-only copies, arrays (also inside lists
    and tuples) by read-only copies; all are compared with the originals after the call.

    Raises:
        PortFault, NotClaimed, InputModified: as described in the module docstring.
    """
    private_args, private_kwargs, watched = _copies(args, kwargs, writable=False)
    try:
        out = getattr(instance, method)(*private_args, **private_kwargs)
    except NotImplementedError as exc:
        raise NotClaimed(f"{method} raised NotImplementedError: {exc}") from exc
    except ValueError as exc:
        if _READ_ONLY in str(exc):
            raise _read_only_write(instance, method, args, kwargs, exc) from exc
        raise PortFault(f"{method} raised ValueError: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 -- containment is the point
        raise PortFault(f"{method} raised {type(exc).__name__}: {exc}") from exc
    changed = _modified(watched)
    if changed:
        raise InputModified(
            f"{method} modified its input {', '.join(changed)} in place (handed read-only, "
            "it re-enabled writing); ports must leave their inputs unmodified"
        )
    return out
