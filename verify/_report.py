"""Check results and reports: the JSON and JUnit formats of PROTOCOL section 6.

A `CheckResult` is data (the JSON report's `results[]` entry); only the CLI prints. Both the
identity battery (`ngd-verify run`) and the port harness (`ngd-verify check`) produce lists of
them and share the writers and the terminal table here.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["CheckResult", "Report", "Status"]

SCHEMA = "ngd-verify/report/v1"


class Status(str, enum.Enum):
    """Outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check on one problem (a `results[]` entry of the JSON report).

    Attributes:
        check: the identity or structural property, e.g. `fisher_equals_ggn`.
        capability: the adapter method or implementation area, e.g. `ggn_vp` or `identity`.
        problem: the problem's name.
        status: pass, fail, skip or error (the code under test raised).
        error: measured error (see `verify._tolerance`), or None.
        tolerance: the threshold it was held to, or None.
        message: one line: what was compared, the equation it comes from, why it failed.
        measure: what `error` is relative to (`"relative to ||ref||"`, `"relative to the
            computation's magnitude MAG"`), or None (JSON key `measure`, an extension).
        scale: the denominator of `error` (JSON `scale`), or None.
        where: the largest difference's location, e.g. `layer 1 W[2, 0]` (JSON `where`).
        factor: the fitted scalar when the result is a plain multiple of the reference
            (JSON `factor`), or None; see `verify._diagnosis`.
        power: for a statistical check, the smallest effect it detects with probability 0.99
            (PROTOCOL s11: the relative bias `delta` for a mean test); None otherwise.
        statistics: for a statistical check, its design (draws, calls, blocks, levels).
    """

    check: str
    capability: str
    problem: str
    status: Status
    error: float | None = None
    tolerance: float | None = None
    message: str = ""
    _: dataclasses.KW_ONLY  # the extensions by name only: positions would silently shift
    measure: str | None = None
    scale: float | None = None
    where: str | None = None
    factor: float | None = None
    power: float | None = None
    statistics: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The protocol's JSON object (non-finite errors are written as null).

        PROTOCOL s6's keys always; `measure`, `scale`, `where`, `factor` when known.
        """
        error = self.error if self.error is None or math.isfinite(self.error) else None
        tolerance = (self.tolerance if self.tolerance is None or math.isfinite(self.tolerance)
                     else None)  # JSON has no inf
        out: dict[str, Any] = {
            "check": self.check,
            "capability": self.capability,
            "problem": self.problem,
            "status": Status(self.status).value,
            "error": error,
            "tolerance": tolerance,
            "message": self.message,
        }
        for key in ("measure", "scale", "where", "factor"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, float) or math.isfinite(value)):
                out[key] = value
        if self.power is not None:  # extension keys, statistical checks only (PROTOCOL s11)
            out["power"] = self.power if math.isfinite(self.power) else None
        if self.statistics is not None:
            out["statistics"] = self.statistics
        return out


@dataclasses.dataclass
class Report:
    """A run's results plus what produced them.

    Attributes:
        adapter: what was checked.
        dtype: its precision.
        devices: devices the JAX batch was sharded over.
        results: the results so far.
        partial: the run was interrupted (Ctrl-C) and the results are incomplete; a partial
            report never passes (JSON key `partial`, an extension of PROTOCOL s6).
    """

    adapter: str
    dtype: str = "float64"
    devices: int = 1
    results: list[CheckResult] = dataclasses.field(default_factory=list)
    partial: bool = False

    def extend(self, results: Iterable[CheckResult]) -> None:
        """Append results."""
        self.results.extend(results)

    @property
    def summary(self) -> dict[str, int]:
        """Counts per status."""
        counts = {status.value: 0 for status in Status}
        for result in self.results:
            counts[Status(result.status).value] += 1
        return counts

    @property
    def passed(self) -> bool:
        """Whether nothing failed or errored, and at least one check passed."""
        summary = self.summary
        return (
            not self.partial
            and summary["fail"] == 0
            and summary["error"] == 0
            and summary["pass"] > 0
        )

    def to_json(self) -> dict[str, Any]:
        """The protocol's report object (schema `ngd-verify/report/v1`)."""
        return {
            "schema": SCHEMA,
            "adapter": self.adapter,
            "dtype": self.dtype,
            "devices": self.devices,
            "results": [r.to_json() for r in self.results],
            "summary": self.summary,
            "partial": self.partial,
        }

    def write_json(self, path: str | Path | IO[str]) -> None:
        """Write the JSON report to a path or an open text file."""
        text = json.dumps(self.to_json(), indent=1) + "\n"
        if hasattr(path, "write"):
            path.write(text)
        else:
            Path(path).write_text(text)

    def write_junit(self, path: str | Path | IO[bytes]) -> None:
        """Write a JUnit XML report: one testsuite per capability, one testcase per check.

        A partial report gets one more testsuite, `ngd-verify`, with an `error` testcase
        saying that the run was interrupted, so CI never reads it as a pass.
        """
        root = ET.Element("testsuites", name=f"ngd-verify {self.adapter}")
        by_capability: dict[str, list[CheckResult]] = {}
        for result in self.results:
            by_capability.setdefault(result.capability, []).append(result)
        for capability, results in by_capability.items():
            counts = {s: sum(Status(r.status) is s for r in results) for s in Status}
            suite = ET.SubElement(
                root, "testsuite", name=capability, tests=str(len(results)),
                failures=str(counts[Status.FAIL]), errors=str(counts[Status.ERROR]),
                skipped=str(counts[Status.SKIP]),
            )
            for r in results:
                case = ET.SubElement(suite, "testcase", classname=f"{self.adapter}.{capability}",
                                     name=f"{r.check}[{r.problem}]")
                status = Status(r.status)
                if status is Status.FAIL:
                    ET.SubElement(case, "failure", message=r.message).text = _detail(r)
                elif status is Status.ERROR:
                    ET.SubElement(case, "error", message=r.message).text = _detail(r)
                elif status is Status.SKIP:
                    ET.SubElement(case, "skipped", message=r.message)
        if self.partial:
            suite = ET.SubElement(root, "testsuite", name="ngd-verify", tests="1", failures="0",
                                  errors="1", skipped="0")
            case = ET.SubElement(suite, "testcase", classname="ngd-verify", name="complete_run")
            ET.SubElement(case, "error", message="partial report: the run was interrupted")
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _detail(result: CheckResult) -> str:
    return f"error={result.error} tolerance={result.tolerance}\n{result.message}"


def group_by(results: Sequence[CheckResult], key: str) -> dict[str, list[CheckResult]]:
    """Results grouped by an attribute (`check` or `capability`), in first-seen order."""
    groups: dict[str, list[CheckResult]] = {}
    for result in results:
        groups.setdefault(getattr(result, key), []).append(result)
    return groups
