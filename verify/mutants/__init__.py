"""Mutation testing of the oracle: a corpus of realistic buggy ports that must all be caught.

**The mutant format.** A mutant is an ordinary adapter class (PROTOCOL s5) carrying exactly
one bug, registered with `register_mutant`:

    from verify.mutants import BugClass, NumpyPort, register_mutant

    @register_mutant("ggn-no-batch-mean", BugClass.SCALING,
                     "G summed over the batch instead of averaged (c = 1 for 'mean')",
                     capabilities=("ggn",))
    class GgnNoBatchMean(NumpyPort):
        def ggn(self, problem):
            return super().ggn(problem) * problem.batch_size if problem.reduction == "mean" \
                else super().ggn(problem)

* `NumpyPort` (float64) and `NumpyPort32` (float32) are complete, correct, independent numpy
  ports of every capability of PROTOCOL s5 and s9 (module `_port`); a mutant subclasses one
  and overrides one method or one private hook (`_scale`, `_loss_hessian`, `_kron_solve`,
  `_cg_beta`, ...). `register_mutant(..., dtypes=("float64", "float32"))` registers the bug
  on both bases at once (the decorated class must then be written as a mixin over
  `NumpyPort`; the float32 twin is derived automatically with the `NumpyPort32` base).
* `capabilities` names the adapter methods the bug can affect; the mutation run checks
  only those (speed), and the kill must come from a check of one of them. Methods not named
  still exist on the class -- the restriction is the harness's, not the port's.
* `CONTROLS` are the correct ports (float64 and float32), which must pass everything.

Modules of the corpus: `verify.mutants._corpus` (bugs of the bug classes real libraries have
shipped), `verify.mutants.seed_methods` (the bugs of seed 004's code, PROTOCOL s9) and
`verify.mutants._corpus_blindspots` (the inputs the v1 harness never supplied, issue 14),
imported by `load_corpus()`. A new module registers itself by being listed in
`CORPUS_MODULES`.

`mutants_command(dtype)` (the `ngd-verify mutants` command) runs every mutant and control on
the quick zoo and prints the kill rate; `run_mutant` is what the tests call.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib

from verify.mutants._port import NumpyPort, NumpyPort32

__all__ = [
    "CONTROLS",
    "CORPUS_MODULES",
    "MUTANTS",
    "BugClass",
    "Mutant",
    "NumpyPort",
    "NumpyPort32",
    "load_corpus",
    "mutants_command",
    "register_mutant",
]


class BugClass(str, enum.Enum):
    """The classes of bugs real second-order libraries have shipped."""

    SCALING = "scaling by batch or output size"
    BIAS = "bias coordinate"
    LAYOUT = "Kronecker order and vec convention"
    DAMPING = "damping formula"
    FISHER_KIND = "empirical vs true Fisher"
    STATE = "state leaking between calls"
    ALIASING = "input aliasing"
    CG = "CG recurrences and initialization"
    LOSS_HESSIAN = "loss-Hessian arithmetic"
    SEED_METHODS = "seed 004 second-order methods"
    PRECISION = "float32 rounding inside a float64 port"
    DEFAULTS = "optional-argument defaults"
    CACHING = "caching by name or shape"
    OPTIMIZER_STATE = "optimizer state and schedules"
    SAMPLING = "Monte Carlo sampling"


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One buggy port.

    Attributes:
        name: unique kebab-case name (with a `-float32` suffix for the float32 twin).
        bug_class: which `BugClass` the bug belongs to.
        description: the bug in one line, as a reviewer would describe it.
        adapter_class: the adapter class (built with no arguments).
        capabilities: adapter methods the bug can affect (checked by the mutation run).
    """

    name: str
    bug_class: BugClass
    description: str
    adapter_class: type
    capabilities: tuple[str, ...]

    @property
    def dtype(self) -> str:
        """The port's declared precision."""
        return getattr(self.adapter_class, "dtype", "float64")


MUTANTS: dict[str, Mutant] = {}

CONTROLS: tuple[type[NumpyPort], ...] = (NumpyPort, NumpyPort32)

CORPUS_MODULES: tuple[str, ...] = ("verify.mutants._corpus", "verify.mutants.seed_methods",
                                   "verify.mutants._corpus_trajectory",
                                   "verify.mutants.sampling",
                                   "verify.mutants._corpus_blindspots")


def register_mutant(
    name: str,
    bug_class: BugClass,
    description: str,
    *,
    capabilities: tuple[str, ...],
    dtypes: tuple[str, ...] = ("float64",),
):
    """Class decorator adding a mutant (and its float32 twin if asked) to `MUTANTS`.

    Args:
        name: unique name.
        bug_class: a `BugClass`.
        description: one line.
        capabilities: the adapter methods the bug affects (non-empty).
        dtypes: `("float64",)`, `("float32",)` or both; with `"float32"` and a class
            deriving from `NumpyPort`, a twin with `NumpyPort32` as base is registered too.

    Raises:
        ValueError: duplicate name, empty capabilities or unknown dtype.
    """
    if not capabilities:
        raise ValueError(f"capabilities: mutant {name!r} must name the methods its bug affects")
    unknown = set(dtypes) - {"float64", "float32"}
    if unknown:
        raise ValueError(f"dtypes: expected 'float64'/'float32', got {sorted(unknown)}")

    def decorate(cls: type[NumpyPort]) -> type[NumpyPort]:
        for dtype in dtypes:
            key = name if dtype == "float64" else f"{name}-float32"
            if key in MUTANTS:
                raise ValueError(f"name: mutant {key!r} is already registered")
            target = cls
            if dtype != getattr(cls, "dtype", "float64"):
                target = type(
                    f"{cls.__name__}32",
                    (cls, NumpyPort32),
                    {"dtype": dtype, "name": key, "__module__": cls.__module__},
                )
            else:
                target.name = key
            MUTANTS[key] = Mutant(
                key, BugClass(bug_class), description, target, tuple(capabilities)
            )
        return cls

    return decorate


def load_corpus() -> dict[str, Mutant]:
    """Import every corpus module (missing optional ones are skipped) and return `MUTANTS`."""
    for module in CORPUS_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return MUTANTS


def mutants_command(dtype: str = "both") -> int:
    """Run the corpus and the controls, print the kill rate; 0 iff all killed and controls pass."""
    from verify.mutants._run import mutants_command as run

    return run(dtype)
