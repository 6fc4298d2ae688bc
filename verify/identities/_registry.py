"""The identity registry: each theorem of the seeds is one `Identity` in `IDENTITIES`.

An identity is a small function of a `Problem` that computes both sides with the dense
reference and returns `CheckResult`s. Negative controls are identities too: they state where
the mathematics says an identity must *break* (F != G for non-natural parameters, gradient
descent is not affine invariant, ...) and pass when the break is demonstrated beyond the
rounding tolerance -- so a battery that silently compared nothing could not pass them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ngd_ref import Problem
from verify._report import CheckResult, Status
from verify._tolerance import Comparison

__all__ = ["IDENTITIES", "MARGIN", "Hypothesis", "Identity", "detectable", "identity", "result",
           "separated"]

#: How many tolerances apart a negative control's two sides must be (`separated`).
MARGIN = 100.0


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """A named hypothesis shared by identities, reported when it fails (never a silent pass).

    Attributes:
        name: how reports name it, e.g. `"gradient not degenerate"`.
        violated: `problem -> None` when it holds, else one line saying why it does not.
    """

    name: str
    violated: Callable[[Problem], str | None]


@dataclasses.dataclass(frozen=True)
class Identity:
    """A theorem turned into a check.

    Attributes:
        name: snake_case name, the `check` field of results.
        source: where the theorem is stated, e.g. `"Martens s9 (seed 003)"`.
        statement: the identity in one line, e.g. `"F = G when z are natural parameters"`.
        run: `problem -> list[CheckResult]`.
        applies: whether the theorem's hypotheses hold for a problem.
        negative_control: True when the check demonstrates that something does NOT hold.
        module: the module that registered it (the `module` column of docs/identities.md).
        hypotheses: named hypotheses checked before `applies`; where one fails the battery
            reports the identity as not applicable (a `skip` result saying why).
    """

    name: str
    source: str
    statement: str
    run: Callable[[Problem], list[CheckResult]]
    applies: Callable[[Problem], bool]
    negative_control: bool = False
    module: str = ""
    hypotheses: tuple[Hypothesis, ...] = ()

    def not_applicable(self, problem: Problem) -> CheckResult | None:
        """A `skip` result naming the first failed hypothesis, or None if all hold."""
        for hypothesis in self.hypotheses:
            why = hypothesis.violated(problem)
            if why is not None:
                capability = "negative_control" if self.negative_control else "identity"
                return CheckResult(self.name, capability, problem.name, Status.SKIP, None, None,
                                   f"not applicable: hypothesis '{hypothesis.name}' fails "
                                   f"({why}) [{self.source}]")
        return None


IDENTITIES: list[Identity] = []


def identity(name: str, *, source: str, statement: str,
             applies: Callable[[Problem], bool] = lambda problem: True,
             negative_control: bool = False, hypotheses: tuple[Hypothesis, ...] = ()):
    """Register `fn(problem) -> CheckResult | list[CheckResult]` as an identity."""

    def register(fn: Callable[[Problem], CheckResult | list[CheckResult]]):
        def run(problem: Problem) -> list[CheckResult]:
            out = fn(problem)
            return out if isinstance(out, list) else [out]

        IDENTITIES.append(Identity(name, source, statement, run, applies, negative_control,
                                   fn.__module__, tuple(hypotheses)))
        return fn

    return register


def result(name: str, problem: Problem, comparison: Comparison, what: str,
           source: str) -> CheckResult:
    """A `CheckResult` for "`what` holds" from a comparison (pass iff within tolerance)."""
    status = Status.PASS if comparison.passed else Status.FAIL
    return CheckResult(name, "identity", problem.name, status, comparison.error,
                       comparison.tolerance, f"{what} [{source}]: {comparison.describe()}")


def detectable(predicted: float, tolerance: float, *, margin: float = MARGIN) -> bool:
    """Whether a negative control can demonstrate a difference the theory predicts.

    A negative control applies only where the mathematics says the identity breaks
    *detectably*: `predicted` is the size of the break computed from the problem by another
    route than the check's own comparison (e.g. K-FAC's gap as the batch covariance of its
    two factors' per-example terms), in the comparison's units. Both that computation and
    the comparison carry up to one `tolerance` of rounding, so `separated` is guaranteed to
    see more than `margin` tolerances when `predicted > (margin + 2) * tolerance`.
    """
    return bool(predicted > (margin + 2.0) * tolerance)


def separated(name: str, problem: Problem, comparison: Comparison, what: str, source: str,
              *, margin: float = MARGIN) -> CheckResult:
    """Negative control: pass iff the two sides differ by more than `margin` x tolerance.

    `what` states the non-identity, e.g. "F != G for nll_probs". The reported error is the
    measured difference and the tolerance is `margin * tolerance`: the difference must be
    unmistakably beyond rounding, not merely above it.
    """
    threshold = margin * comparison.tolerance
    held = comparison.error > threshold
    status = Status.PASS if held else Status.FAIL
    rel = ">" if held else "<="
    return CheckResult(name, "negative_control", problem.name, status, comparison.error, threshold,
                       f"{what} [{source}]: difference {comparison.error:.2e} {rel} "
                       f"{margin:g} x tol = {threshold:.2e}")
