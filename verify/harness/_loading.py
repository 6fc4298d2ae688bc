"""Loading an adapter (PROTOCOL s5-s6) and discovering the capabilities it claims.

`TARGET` is `module.path:ClassName`, `path/to/file.py:ClassName` or the short name of a
built-in adapter (`verify.adapters.BUILTIN`). The class is built with no arguments. Every
failure here is a usage error (`verify.UsageError`, exit status 2): an unloadable target, a
constructor that raises, a `dtype` other than float64/float32, or an adapter that claims no
capability at all -- validating nothing must never look like passing. "Raises" includes
every `BaseException` of the adapter's own code: a module or constructor that calls
`sys.exit(0)` (which would otherwise end the run with status 0 and nothing printed, a false
pass in CI), or a `dtype`, `name` or capability that is a property which raises.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from verify._errors import UsageError
from verify.harness._faults import describe_exception, port_text
from verify.harness._isolation import DEFAULT_TIMEOUT, CallTimedOut, run_isolated

__all__ = ["CAPABILITIES", "LoadedAdapter", "capabilities_of", "load_adapter"]

#: Every adapter method the harness knows, in report order (PROTOCOL s5, s9, extensions).
CAPABILITIES: tuple[str, ...] = (
    "loss",
    "gradient",
    "hessian",
    "ggn",
    "fisher",
    "empirical_fisher",
    "hvp",
    "ggn_vp",
    "fisher_vp",
    "empirical_fisher_vp",
    "hessian_diag",
    "ggn_diag",
    "fisher_diag",  # PROTOCOL s13
    "empirical_fisher_diag",
    "damped_update",
    "kfac_factors",
    "kfac_solve",
    "cg",
    "trust_region_update",
    "bfgs_update",
    "lbfgs_direction",
    "hutchinson_diag",
    "inverse_root",
    "shampoo_direction",
    "lowrank_ggn_update",
    "lbfgs_step",  # protocol extension (docs/protocol.md "Extensions")
    "optimizer_trajectory",  # PROTOCOL s10
    "mc_fisher",  # PROTOCOL s11 (verify.harness._sampled)
    "mc_fisher_vp",
    "mc_fisher_diag",
    "mc_kfac_factors",
    "hutchinson_trace",
    # PROTOCOL s13 (verify.harness._s13, _diagonals: fisher_diag)
    "per_example_gradients",
    "kfac_factors_separate",
    "top_eigenpairs",
    "trace",
)


@dataclasses.dataclass(frozen=True)
class LoadedAdapter:
    """A built adapter and what it declares.

    Attributes:
        instance: the adapter object.
        name: its `name` attribute, else the target string.
        dtype: `"float64"` or `"float32"` (its `dtype` attribute; default float64).
        capabilities: the methods of `CAPABILITIES` it defines, in that order.
    """

    instance: Any
    name: str
    dtype: str
    capabilities: tuple[str, ...]


def capabilities_of(adapter: Any) -> tuple[str, ...]:
    """The protocol methods `adapter` (a class or an instance) defines as callables.

    Raises:
        UsageError: looking up one of them raised (a property that raises).
    """
    return tuple(c for c in CAPABILITIES if callable(_attribute(adapter, c, None)))


def _attribute(adapter: Any, name: str, default: Any) -> Any:
    """`getattr(adapter, name, default)`; anything the lookup raises is a usage error."""
    try:
        return getattr(adapter, name, default)
    except BaseException as exc:  # noqa: BLE001 -- the adapter's code may raise anything
        raise UsageError(
            f"adapter attribute {name!r} raised {_describe(exc)} when looked up"
        ) from None


def _describe(exc: BaseException) -> str:
    return describe_exception(exc)


def _import_class(target: str) -> type:
    from verify.adapters import BUILTIN, UNAVAILABLE

    if target in UNAVAILABLE:
        raise UsageError(f"--adapter {target!r}: {UNAVAILABLE[target]}")
    spec = BUILTIN.get(target, target)
    module_part, sep, class_name = spec.rpartition(":")
    if not sep or not module_part or not class_name:
        raise UsageError(
            f"--adapter {target!r}: expected module.path:ClassName, path/to/file.py:ClassName "
            f"or one of {', '.join(sorted(BUILTIN))}"
        )
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise UsageError(f"--adapter {target!r}: no such file {str(path)!r}")
        module_name = f"_ngd_verify_adapter_{abs(hash(str(path.resolve())))}"
        spec_obj = importlib.util.spec_from_file_location(module_name, path)
        if spec_obj is None or spec_obj.loader is None:
            raise UsageError(f"--adapter {target!r}: {str(path)!r} cannot be imported as a module")
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        try:
            spec_obj.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 -- sys.exit at import is not a pass
            sys.modules.pop(module_name, None)
            raise UsageError(
                f"--adapter {target!r}: importing {str(path)!r} failed: {_describe(exc)}"
            ) from None
    else:
        try:
            module = importlib.import_module(module_part)
        except BaseException as exc:  # noqa: BLE001 -- sys.exit at import is not a pass
            hint = ""
            if target in BUILTIN:
                hint = f" (install the extra: pip install 'ngd-verify[{target}]')"
            raise UsageError(
                f"--adapter {target!r}: cannot import {module_part!r}: {_describe(exc)}{hint}"
            ) from None
    cls = _attribute(module, class_name, None)
    if cls is None:
        raise UsageError(
            f"--adapter {target!r}: module {module_part!r} has no attribute {class_name!r}"
        )
    if not isinstance(cls, type):
        raise UsageError(
            f"--adapter {target!r}: {class_name!r} is a {type(cls).__name__}, not a class"
        )
    return cls


def load_adapter(target: str | type | Any, *, timeout: float | None = DEFAULT_TIMEOUT
                 ) -> LoadedAdapter:
    """Build the adapter named by `target` and discover its capabilities.

    The constructor runs on the worker thread that will make the port calls (so thread-local
    state it sets up is seen by them), within `timeout` seconds.

    Args:
        target: a TARGET string (see module docstring), an adapter class, or an instance.
        timeout: seconds the constructor may take (None: no limit).

    Raises:
        UsageError: unloadable target, failing constructor, bad `dtype`, or no capability.
    """
    if isinstance(target, str):
        cls = _import_class(target)
        label = target
    elif isinstance(target, type):
        cls, label = target, f"{target.__module__}:{target.__qualname__}"
    else:
        cls, label = None, type(target).__qualname__
    if cls is not None:
        try:
            outcome = run_isolated(cls, timeout)
        except CallTimedOut as exc:
            raise UsageError(f"--adapter {label!r}: constructing {cls.__name__}() {exc}") from None
        if outcome.error is not None:  # sys.exit in __init__ is not a pass
            raise UsageError(
                f"--adapter {label!r}: constructing {cls.__name__}() failed: "
                f"{_describe(outcome.error)}"
            )
        instance = outcome.value
    else:
        instance = target
    try:
        dtype = port_text(_attribute(instance, "dtype", "float64"), 60)
        if dtype not in ("float64", "float32"):
            raise UsageError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        capabilities = capabilities_of(instance)
        name = _attribute(instance, "name", None)
    except UsageError as exc:
        raise UsageError(f"--adapter {label!r}: {exc}") from None
    if not capabilities:
        raise UsageError(
            f"--adapter {label!r}: claims no capability (define at least one of "
            f"{', '.join(CAPABILITIES[:6])}, ...): validating nothing must never look like passing"
        )
    return LoadedAdapter(
        instance, port_text(name, 80) if isinstance(name, str) and name else label, dtype,
        capabilities,
    )
