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
* the first call of each method per (capability, problem) is made a *second* time with
  *writable* copies, which are compared with the originals afterwards: a port that writes
  into its arguments but swallows numpy's read-only error (or checks the write flag first)
  returns correct numbers on read-only inputs yet corrupts its users' writable data; it is
  `InputModified` ("handed writable copies, ... modified argument 2 in place");
* any other exception -- every `BaseException`: `SystemExit` from `sys.exit(0)`, a
  `KeyboardInterrupt` the port raises, ... -- becomes a `PortFault` (status `error`, message
  naming the method and the exception, even when the exception's own `__str__` raises);
  `NotImplementedError` becomes `NotClaimed` (status `skip`: the port declines a variant,
  e.g. a K-FAC kind its library does not have);
* the call runs on a worker thread with a timeout (`verify.harness._isolation`): a call that
  hangs is abandoned after `timeout` seconds as `PortTimeout` (status `error`), and the run
  skips the rest of that capability (`verify.harness._run`);
* the result is turned into plain float64 numpy arrays (lists and tuples kept as such)
  *inside* the contained call: an `__array__` that raises, a deleted JAX array, a complex,
  boolean, string or object result is `BadResult` (status `fail`, naming what came back),
  never a crash of the harness's own code nor a silently dropped imaginary part;
* before the call, `verify.harness._mappings.GUARD` clears JAX's compilation caches if the
  process nears its limit on memory mappings (a port compiling a kernel per call would
  otherwise kill the process with SIGSEGV within minutes).

Wrong shapes, wrong types and NaNs in *results* are caught by `verify._tolerance.compare`
and the structural checks, which turn them into failures with a reason. In every case the
run goes on with the next (capability, problem).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import Any

import numpy as np

from ngd_ref import Problem
from verify.harness import _mappings
from verify.harness._isolation import DEFAULT_TIMEOUT, CallTimedOut, Outcome, run_isolated

__all__ = [
    "BadResult",
    "InputModified",
    "NotClaimed",
    "PortFault",
    "PortTimeout",
    "call_port",
    "describe_exception",
    "fresh_problem",
    "port_text",
    "readonly",
]

#: longest text taken from a port (messages, names) into a report line
MAX_TEXT = 300


class PortFault(Exception):
    """The port raised; the message names the method and the exception."""


class NotClaimed(Exception):
    """The port raised `NotImplementedError`: it declines this variant of a capability."""


class InputModified(Exception):
    """The port modified an input array in place."""


class PortTimeout(PortFault):
    """The port call did not return within the timeout (abandoned, see `_isolation`)."""


class BadResult(Exception):
    """The port returned something that is not a real numeric result (status `fail`)."""


def port_text(value: Any, limit: int = MAX_TEXT) -> str:
    """`str(value)` made safe for a report: one line, at most `limit` characters.

    Never raises: a `__str__` that raises gives `<unprintable TYPE>`.
    """
    try:
        text = str(value)
    except BaseException:  # noqa: BLE001 -- a port's object may raise anything
        text = f"<unprintable {type(value).__name__}>"
    text = " ".join(text.split())
    if not text.isprintable():  # control characters (ANSI escapes, NUL) break terminals and XML
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    """`TypeName: message` of a port's exception, safe (see `port_text`)."""
    message = port_text(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


#: deepest nesting of lists/tuples accepted in a result (K-FAC: a list of pairs of matrices)
_MAX_NESTING = 4


def real_result(value: Any, depth: int = 0) -> Any:
    """`value` as owned float64 numpy arrays; lists and tuples stay lists and tuples.

    Raises:
        BadResult: a complex, boolean, string or object result, or one that numpy cannot
            convert (an `__array__` that raises, a deleted JAX array, ...).
    """
    if isinstance(value, list | tuple) and depth < _MAX_NESTING:
        return type(value)(real_result(item, depth + 1) for item in value)
    try:
        array = np.array(value, copy=True)
    except BaseException as exc:  # noqa: BLE001 -- a port's object may raise anything
        raise BadResult(
            f"result is not numeric: converting {type(value).__name__} with numpy raised "
            f"{describe_exception(exc)}"
        ) from None
    kind = array.dtype.kind
    if kind == "c":
        imaginary = float(np.max(np.abs(array.imag))) if array.size else 0.0
        raise BadResult(
            f"result is complex ({array.dtype}, largest |imaginary part| {imaginary:.2e}): "
            "results must be real"
        )
    if kind not in "fiu":
        raise BadResult(
            f"result is not numeric: {type(value).__name__} of dtype {array.dtype} (results "
            "must be real numbers)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(np.float64)


def readonly(array: Any, dtype: Any = np.float64) -> np.ndarray:
    """Return an owned, read-only copy of `array` (as `dtype`)."""
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def fresh_problem(problem: Problem) -> Problem:
    """Return a new `Problem` with the same data in new read-only arrays (the port's copy).

    The fields are copied as they are, without `Problem`'s validation: `problem` is already
    a validated one, and the harness makes a copy for every port call.
    """
    fresh = object.__new__(Problem)
    for field in dataclasses.fields(Problem):
        value = getattr(problem, field.name)
        if isinstance(value, np.ndarray):
            value = value.copy()
            value.setflags(write=False)
        object.__setattr__(fresh, field.name, value)
    return fresh


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


def _invoke(
    instance: Any, method: str, args: tuple, kwargs: dict, timeout: float | None
) -> Outcome:
    """Call the port on the worker thread; its value as float64 arrays, or what it raised.

    What the *port* raised (including `BadResult` from converting its value) comes back in
    `Outcome.error`; only a real interrupt of the waiting harness (Ctrl-C) propagates.

    Raises:
        PortTimeout: the call was abandoned after `timeout` seconds.
    """
    streams = sys.stdout, sys.stderr

    def call() -> Any:
        return real_result(getattr(instance, method)(*args, **kwargs))

    _mappings.GUARD()  # a port's JIT compilations must not exhaust the process's mappings
    try:
        with warnings.catch_warnings():  # a port's warnings.simplefilter("error") stays its own
            return run_isolated(call, timeout)
    except CallTimedOut as exc:
        raise PortTimeout(f"{method} {exc} (abandoned; --timeout sets the limit)") from None
    finally:
        sys.stdout, sys.stderr = streams  # a port that replaced them does not break reports


def _read_only_write(
    instance: Any, method: str, args: tuple, kwargs: dict, error: ValueError,
    timeout: float | None,
) -> Exception:
    """Return the fault to report for a write into a read-only array (an input or not).

    The call is repeated once with *writable* copies; the inputs that come back changed are
    the ones the port writes to (`InputModified`, naming them). If none does, the read-only
    array was the port's own (e.g. `np.asarray` of a JAX array) and the error is an
    ordinary `PortFault`.
    """
    changed = _writes_with_writable_copies(instance, method, args, kwargs, timeout)
    if changed:
        return InputModified(
            f"{method} wrote to a read-only input ({port_text(error)}): handed writable "
            f"copies, it modified {', '.join(changed)} in place; ports must leave their inputs "
            "unmodified"
        )
    return PortFault(
        f"{method} raised ValueError: {port_text(error)} (not a write into its inputs: with "
        "writable copies they come back unchanged)"
    )


def _writes_with_writable_copies(
    instance: Any, method: str, args: tuple, kwargs: dict, timeout: float | None
) -> list[str]:
    """Call once more with writable copies; the labels of the inputs that came back changed."""
    retry_args, retry_kwargs, watched = _copies(args, kwargs, writable=True)
    _invoke(instance, method, retry_args, retry_kwargs, timeout)  # only its writes matter
    return _modified(watched)


def call_port(instance: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `instance.method(*args, **kwargs)` with containment (see module docstring).

    Problems among `args` are replaced by fresh read-only copies, arrays (also inside lists
    and tuples) by read-only copies; all are compared with the originals after the call. The
    default timeout (`DEFAULT_TIMEOUT`) applies and the writable second pass is made; see
    `call_port_with` to choose.

    Raises:
        PortFault, PortTimeout, NotClaimed, InputModified, BadResult: see module docstring.
    """
    return call_port_with(instance, method, args, kwargs)


def call_port_with(
    instance: Any,
    method: str,
    args: tuple,
    kwargs: dict,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    probe_writes: bool = True,
) -> Any:
    """`call_port` with the timeout and the writable second pass (`probe_writes`) chosen."""
    private_args, private_kwargs, watched = _copies(args, kwargs, writable=False)
    outcome = _invoke(instance, method, private_args, private_kwargs, timeout)
    exc = outcome.error
    if isinstance(exc, BadResult):
        raise BadResult(f"{method}: {exc}")
    if isinstance(exc, NotImplementedError):
        raise NotClaimed(f"{method} raised NotImplementedError: {port_text(exc)}")
    if isinstance(exc, ValueError) and _READ_ONLY in port_text(exc, limit=10**4):
        raise _read_only_write(instance, method, args, kwargs, exc, timeout)
    if exc is not None:  # any BaseException: SystemExit, a raised KeyboardInterrupt, ...
        raise PortFault(f"{method} raised {describe_exception(exc)}")
    out = outcome.value
    changed = _modified(watched)
    if changed:
        raise InputModified(
            f"{method} modified its input {', '.join(changed)} in place (handed read-only, "
            "it re-enabled writing); ports must leave their inputs unmodified"
        )
    if probe_writes and watched:
        changed = _writes_with_writable_copies(instance, method, args, kwargs, timeout)
        if changed:
            raise InputModified(
                f"{method} writes into its inputs: handed writable copies (as its users "
                f"pass them), it modified {', '.join(changed)} in place; with read-only ones "
                "it returned anyway (a swallowed read-only error?); ports must leave their "
                "inputs unmodified"
            )
    return out
