"""`ngd-verify bench`'s trajectory rows: what the `optimizer_trajectory` checks cost.

PROTOCOL s10's checks run whole optimizer trajectories per problem, so their cost is the one
figure of the harness that can grow past the core suite's budget. This section times them on
the quick zoo, all five methods (the seven families of `verify.strategies.TRAJECTORY_FAMILIES`):

    trajectory_reference_seconds   the schedule search of every family (each candidate run
                                   twice by the dense float64 reference), per family and in
                                   total, for a float64 port, from an empty cache
    trajectory_port_seconds        `run_checks(..., capabilities=["optimizer_trajectory"])` per
                                   adapter once the schedules are cached: the port's runs and
                                   the comparisons
    trajectory_quick_zoo_seconds   reference + the float64 numpy port: what
                                   `ngd-verify check --quick` spends on the capability
    trajectory_goal_seconds        60 (issue 15's goal on the 2-core machine)

One run each (the trajectory checks are deterministic; their wall time is dominated by the
reference's dense curvature, not by noise). Timings taken while other processes run are not
meaningful (docs/bench.md).
"""

from __future__ import annotations

import time
from typing import Any

from ngd_ref import zoo

__all__ = ["GOAL_SECONDS", "trajectory_section"]

#: issue 15: the trajectory checks of the quick zoo, all methods, on the 2-core machine
GOAL_SECONDS = 60.0


def trajectory_section(quick: bool) -> dict[str, Any]:
    """Time the reference's schedules and the ports' trajectories on the quick zoo.

    Args:
        quick: time the float64 numpy port only (otherwise also its float32 twin and
            `ngd-ref-jax`, whose runs include JAX compilation).
    """
    from verify.harness import clear_trajectory_schedules, load_adapter, run_checks
    from verify.harness import trajectory_schedule as schedule
    from verify.strategies import TRAJECTORY_FAMILIES as FAMILIES

    problems = zoo.problems(quick=True)
    clear_trajectory_schedules()
    per_family: dict[str, float] = {}
    for family in FAMILIES:
        start = time.perf_counter()
        for problem in problems:
            schedule(problem, family, "float64")
        per_family[family] = time.perf_counter() - start
    adapters = ["numpy-port"] if quick else ["numpy-port", "numpy-port-float32", "ngd-ref-jax"]
    ports: dict[str, float] = {}
    for name in adapters:
        loaded = load_adapter(name)
        start = time.perf_counter()  # float32's schedules are searched here (not cached)
        run_checks(loaded, problems, capabilities=["optimizer_trajectory"], timeout=None)
        ports[name] = time.perf_counter() - start
    reference = sum(per_family.values())
    total = reference + ports["numpy-port"]
    return {"trajectory": {
        "problems": len(problems), "families": list(FAMILIES),
        "trajectory_reference_seconds": {"total": reference, **per_family},
        "trajectory_port_seconds": ports,
        "trajectory_quick_zoo_seconds": total,
        "trajectory_goal_seconds": GOAL_SECONDS,
        "within_goal": total <= GOAL_SECONDS,
    }}
