"""The cost of the sampled estimators' statistical checks (PROTOCOL s11) for `ngd-verify bench`.

Each s11 capability (and s9's `hutchinson_diag`, tested the same way) is checked on the
quick zoo (`quick`: its first problem) against the float64 numpy port
(`verify.mutants.NumpyPort`); a row records the wall-clock seconds of the whole check (all
`K m` calls, the repeat and the seed calls, the exact moments), the draws per call `S`, the
calls, the total draws, and the mean test's power (the relative bias detected with
probability 0.99; PROTOCOL s11). Seconds are those of this machine under its current load:
on a shared machine they are not a benchmark (say so when you quote them).
"""

from __future__ import annotations

import time
from typing import Any

from verify._report import Status

__all__ = ["SAMPLED_CAPABILITIES", "sampled_section"]

#: the capabilities timed, in report order
SAMPLED_CAPABILITIES = ("mc_fisher", "mc_fisher_vp", "mc_fisher_diag", "mc_kfac_factors",
                        "hutchinson_trace", "hutchinson_diag")


def _rows(capability: str, problem, seconds: float, results) -> list[dict[str, Any]]:
    """One row per mean test of the check (two for `mc_kfac_factors`: targets, sketch)."""
    rows = []
    for r in results:
        if not r.check.endswith("_mean") or r.statistics is None:
            continue
        stats = r.statistics
        rows.append({
            "capability": capability,
            "check": r.check,
            "problem": problem.name,
            "status": Status(r.status).value,
            "seconds": seconds,
            "draws_per_call": stats.get("draws_per_call"),
            "calls": stats.get("calls"),
            "draws": stats.get("draws_per_call", 0) * stats.get("calls", 0),
            "power": r.power,
        })
    return rows


def sampled_section(quick: bool) -> dict[str, Any]:
    """`{"sampled": [rows], "sampled_note": ...}`: seconds per estimator check (module doc)."""
    from ngd_ref import zoo
    from verify.harness import run_capability
    from verify.mutants import NumpyPort

    port = NumpyPort()
    problems = list(zoo.problems(quick=True))[: 1 if quick else None]
    rows: list[dict[str, Any]] = []
    for problem in problems:
        for capability in SAMPLED_CAPABILITIES:
            start = time.perf_counter()
            results = run_capability(port, capability, problem, dtype=port.dtype, seed=0)
            rows += _rows(capability, problem, time.perf_counter() - start, results)
    return {"sampled": rows,
            "sampled_note": "seconds per statistical check (numpy port, float64, all calls); "
                            "wall clock under this machine's load, not a benchmark on a "
                            "shared machine"}
