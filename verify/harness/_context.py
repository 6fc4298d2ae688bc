"""The context one capability check runs in: the port, the problem, the policy, the results.

A check function receives a `CheckContext` and calls `ctx.port(...)` (contained, see
`_faults`), `ctx.compare(...)` (a reference comparison) and the structural helpers
(`symmetric`, `deterministic`, `linear`). Each helper appends one `CheckResult`. A fault in
the port aborts the rest of that capability's checks on that problem and is recorded once,
under the check that was running (see `verify.harness._run`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ngd_ref import Problem
from verify._diagnosis import diagnose
from verify._policy import TolerancePolicy, tolerance_policy
from verify._report import CheckResult, Status
from verify._tolerance import Comparison, compare
from verify.harness._faults import call_port_with, readonly
from verify.harness._inputs import probe_vectors
from verify.harness._isolation import DEFAULT_TIMEOUT

__all__ = ["CheckContext"]


@dataclasses.dataclass
class CheckContext:
    """State of one (capability, problem) check.

    Attributes:
        adapter: the port instance.
        capability: the adapter method under test (the `capability` of every result).
        problem: the problem (the port always receives a fresh read-only copy).
        dtype: the port's declared precision.
        seed: seed of the probe vectors.
        results: results appended so far.
        current: name of the check in progress (for fault attribution).
        timeout: seconds one port call may take (None: no limit).
        probed: methods already given the writable second pass in this context.
    """

    adapter: Any
    capability: str
    problem: Problem
    dtype: str
    seed: int = 0
    results: list[CheckResult] = dataclasses.field(default_factory=list)
    current: str = ""
    timeout: float | None = DEFAULT_TIMEOUT
    probed: set[str] = dataclasses.field(default_factory=set)

    @property
    def policy(self) -> TolerancePolicy:
        """Reference values and tolerances for this problem at the port's precision."""
        return tolerance_policy(self.problem, self.dtype)

    @property
    def rng(self) -> np.random.Generator:
        """A generator seeded by (seed, problem, capability): reproducible probes."""
        key = [self.seed, sum(map(ord, self.problem.name)), sum(map(ord, self.capability))]
        return np.random.default_rng(key)

    def probe(self, n: int, count: int = 1) -> list[np.ndarray]:
        """`count` random probe vectors of length n for the port's precision, read-only.

        Dyadic entries `k/64` for a float32 port (exact in float32, so it receives exactly the
        vector the reference multiplies), full-precision entries for a float64 port (so a
        port that rounds its vectors to float32 fails): `verify.harness._inputs.probe_vectors`.
        """
        return [readonly(v) for v in probe_vectors(self.rng, n, count, self.dtype)]

    def begin(self, check: str) -> None:
        """Name the check that the next port calls belong to."""
        self.current = check

    def port(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the port (contained; the first call of each method also with writable copies)."""
        probe = method not in self.probed
        self.probed.add(method)
        return call_port_with(
            self.adapter, method, args, kwargs, timeout=self.timeout, probe_writes=probe
        )

    # -- recording -------------------------------------------------------------------------
    def record(
        self,
        check: str,
        status: Status,
        message: str,
        error: float | None = None,
        tolerance: float | None = None,
        **details: Any,
    ) -> None:
        """Append a result (`details`: `CheckResult`'s optional fields, e.g. `where`)."""
        self.results.append(
            CheckResult(
                check, self.capability, self.problem.name, Status(status), error, tolerance,
                message, **details,
            )
        )

    def compare(
        self,
        check: str,
        actual: Any,
        desired: Any,
        *,
        tolerance: float,
        magnitude: float = 0.0,
        what: str,
    ) -> Comparison:
        """Record `actual ~ desired` within `tolerance`, relative to max(||desired||, MAG)."""
        comparison = compare(actual, desired, tolerance=tolerance, magnitude=magnitude)
        if comparison.passed or comparison.reason:
            self.record(
                check,
                Status.PASS if comparison.passed else Status.FAIL,
                f"{what}: {comparison.describe()}",
                comparison.error,
                comparison.tolerance,
            )
            return comparison
        found = diagnose(actual, desired, comparison, self.problem)  # what the failure means
        self.record(
            check,
            Status.FAIL,
            f"{what}: {found.describe(comparison.error, comparison.tolerance, comparison.max_abs)}",
            comparison.error,
            comparison.tolerance,
            measure=found.measure,
            scale=found.scale,
            where=found.where,
            factor=found.factor,
        )
        return comparison

    def symmetric(self, check: str, matrix: Any, *, tolerance: float, magnitude: float) -> None:
        """Record `M = M^T` (relative to `magnitude`)."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            self.record(check, Status.FAIL, f"not a square matrix: shape {m.shape}")
            return
        self.compare(check, m, m.T, tolerance=tolerance, magnitude=magnitude, what="M = M^T")

    def deterministic(self, check: str, first: Any, call: Callable[[], Any]) -> None:
        """Record that a repeated call returns bit-identical results (no state between calls)."""
        self.begin(check)
        second = call()
        a, b = _as_float(first), _as_float(second)
        if a is None or b is None or a.shape != b.shape:
            self.record(check, Status.FAIL, "repeated call returned a different type or shape")
            return
        same = np.array_equal(a, b, equal_nan=True)
        diff = 0.0 if same else float(np.max(np.abs(a - b)))
        self.record(
            check,
            Status.PASS if same else Status.FAIL,
            "a repeated call gives identical results"
            if same
            else f"a repeated call gives different results (max |diff| {diff:.2e}): "
            "state leaks between calls",
            diff,
            0.0,
        )

    def require_shape(self, check: str, value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
        """The result as a float64 array of `shape`, or None after recording a failure."""
        array = _as_float(value)
        if array is None:
            self.record(check, Status.FAIL, f"result is not numeric: {type(value).__name__}")
            return None
        if array.shape != shape:
            self.record(check, Status.FAIL, f"wrong shape: got {array.shape}, expected {shape}")
            return None
        return array


def _as_float(value: Any) -> np.ndarray | None:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
