"""`ngd-verify campaign`: a long fuzz campaign of the oracle against correct ports (issue 13).

For seeds `first, first + 1, ...` and each correct reference port (by default the project's
independent numpy ports `numpy-port` and `numpy-port-float32`, `verify.mutants`), the
`--fuzz N` problems of that seed (`verify.strategies.generate(N, seed)`, the draw of
`check --fuzz N --seed S`; the zoo is left out, it does not change with the seed) are checked
with every claimed capability, probes seeded by the same seed. On a correct port every
`fail` or `error` is a **false alarm** of the oracle, and an exception escaping the harness
is a **crash**; both are listed. The campaign stops by itself after the seeds or at the time
limit (checked between problems, so it overruns by at most one problem's checks), and says
how far it got. Exit status 0 when nothing crashed and nothing false-alarmed.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from verify._report import Status
from verify.harness import load_adapter, run_checks
from verify.harness._isolation import DEFAULT_TIMEOUT
from verify.strategies import generate

__all__ = ["CampaignResult", "DEFAULT_PORTS", "run_campaign"]

DEFAULT_PORTS = ("numpy-port", "numpy-port-float32")


@dataclasses.dataclass
class CampaignResult:
    """What a campaign found.

    Attributes:
        seeds_done: seeds whose every port and problem was checked.
        problems: (port, problem) pairs checked.
        checks: results recorded.
        passed: results that passed.
        false_alarms: `"port seed problem check: message"` for each fail/error.
        crashes: `"port seed problem: exception"` for each exception escaping the harness.
        worst_ratio: the largest error/tolerance among passing results.
        worst_check: `"port seed problem check"` of that result (how close a false alarm came).
        stopped_by_time: the time limit ended the campaign early.
        seconds: wall time.
    """

    seeds_done: list[int] = dataclasses.field(default_factory=list)
    problems: int = 0
    checks: int = 0
    passed: int = 0
    false_alarms: list[str] = dataclasses.field(default_factory=list)
    crashes: list[str] = dataclasses.field(default_factory=list)
    worst_ratio: float = 0.0
    worst_check: str = ""
    stopped_by_time: bool = False
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """No crash and no false alarm (and something was checked)."""
        return not self.crashes and not self.false_alarms and self.checks > 0

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON."""
        return {**dataclasses.asdict(self), "clean": self.clean}

    def summary(self) -> str:
        """A few lines for the terminal."""
        seeds = (f"{len(self.seeds_done)} seed(s) ({self.seeds_done[0]}..{self.seeds_done[-1]})"
                 if self.seeds_done else "0 seeds")
        lines = [
            f"campaign: {seeds} complete, {self.problems} (port, problem) pairs, "
            f"{self.checks} checks, {self.passed} passed, in {self.seconds:.0f} s"
            + (" (stopped at the time limit)" if self.stopped_by_time else ""),
            f"crashes: {len(self.crashes)}; false alarms: {len(self.false_alarms)}; "
            f"worst passing error/tolerance: {self.worst_ratio:.3g}"
            + (f" ({self.worst_check})" if self.worst_check else ""),
        ]
        lines += [f"  CRASH {c}" for c in self.crashes[:10]]
        lines += [f"  FALSE ALARM {f}" for f in self.false_alarms[:10]]
        return "\n".join(lines)


def run_campaign(
    *,
    seeds: int,
    first_seed: int = 0,
    fuzz: int = 25,
    ports: Sequence[str] = DEFAULT_PORTS,
    time_limit: float | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    advance: Callable[[str], None] = lambda label: None,
) -> CampaignResult:
    """Run the campaign (see module docstring).

    Args:
        seeds: how many seeds.
        first_seed: the first one.
        fuzz: problems per seed.
        ports: adapter targets (correct ports: every failure counts as a false alarm).
        time_limit: stop after this many seconds (None: run every seed).
        timeout: per port call, as `check --timeout`.
        advance: called after each (seed, port, problem).
    """
    result = CampaignResult()
    start = time.monotonic()
    loaded = [load_adapter(port) for port in ports]
    for seed in range(first_seed, first_seed + seeds):
        problems = generate(fuzz, seed)
        for adapter in loaded:
            for problem in problems:
                if time_limit is not None and time.monotonic() - start > time_limit:
                    result.stopped_by_time = True
                    result.seconds = time.monotonic() - start
                    return result
                label = f"{adapter.name} seed {seed} {problem.name}"
                try:
                    report = run_checks(adapter, [problem], seed=seed, timeout=timeout)
                except Exception as exc:  # noqa: BLE001 -- a crash is what we count
                    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
                    result.crashes.append(f"{label}: {line}")
                    continue
                finally:
                    advance(label)
                result.problems += 1
                for r in report.results:
                    if r.problem == "*":
                        continue  # "capability not claimed" rows
                    result.checks += 1
                    if r.status is Status.PASS:
                        result.passed += 1
                        if (r.error is not None and r.tolerance
                                and r.error / r.tolerance > result.worst_ratio):
                            result.worst_ratio = r.error / r.tolerance
                            result.worst_check = f"{label} {r.check}"
                    elif r.status in (Status.FAIL, Status.ERROR):
                        result.false_alarms.append(f"{label} {r.check}: {r.message}")
        result.seeds_done.append(seed)
    result.seconds = time.monotonic() - start
    return result
