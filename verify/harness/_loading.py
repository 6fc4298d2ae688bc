"""Loading an adapter (PROTOCOL s5-s6) and discovering the capabilities it claims.

`TARGET` is `module.path:ClassName`, `path/to/file.py:ClassName` or the short name of a
built-in adapter (`verify.adapters.BUILTIN`). The class is built with no arguments. Every
failure here is a usage error (`verify.UsageError`, exit status 2): an unloadable target, a
constructor that raises, a `dtype` other than float64/float32, or an adapter that claims no
capability at all -- validating nothing must never look like passing.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from verify._errors import UsageError

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
    "mc_fisher",  # PROTOCOL s11 (verify.harness._sampled)
    "mc_fisher_vp",
    "mc_fisher_diag",
    "mc_kfac_factors",
    "hutchinson_trace",
    "fisher_diag",  # PROTOCOL s13 (verify.harness._s13, _diagonals)
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
    """The protocol methods `adapter` (a class or an instance) defines as callables."""
    return tuple(c for c in CAPABILITIES if callable(getattr(adapter, c, None)))


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
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        try:
            spec_obj.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise UsageError(
                f"--adapter {target!r}: importing {str(path)!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            hint = ""
            if target in BUILTIN:
                hint = f" (install the extra: pip install 'ngd-verify[{target}]')"
            raise UsageError(
                f"--adapter {target!r}: cannot import {module_part!r}: "
                f"{type(exc).__name__}: {exc}{hint}"
            ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(
            f"--adapter {target!r}: module {module_part!r} has no attribute {class_name!r}"
        )
    if not isinstance(cls, type):
        raise UsageError(
            f"--adapter {target!r}: {class_name!r} is a {type(cls).__name__}, not a class"
        )
    return cls


def load_adapter(target: str | type | Any) -> LoadedAdapter:
    """Build the adapter named by `target` and discover its capabilities.

    Args:
        target: a TARGET string (see module docstring), an adapter class, or an instance.

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
            instance = cls()
        except Exception as exc:
            raise UsageError(
                f"--adapter {label!r}: constructing {cls.__name__}() failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    else:
        instance = target
    dtype = str(getattr(instance, "dtype", "float64"))
    if dtype not in ("float64", "float32"):
        raise UsageError(
            f"--adapter {label!r}: dtype must be 'float64' or 'float32', got {dtype!r}"
        )
    capabilities = capabilities_of(instance)
    if not capabilities:
        raise UsageError(
            f"--adapter {label!r}: claims no capability (define at least one of "
            f"{', '.join(CAPABILITIES[:6])}, ...): validating nothing must never look like passing"
        )
    name = getattr(instance, "name", None)
    return LoadedAdapter(
        instance, name if isinstance(name, str) and name else label, dtype, capabilities
    )
