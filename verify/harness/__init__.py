"""The port harness (PROTOCOL s5-s6): validate an adapter capability by capability.

    from verify.harness import check_adapter
    report = check_adapter("my_pkg.adapter:MyPort", source="quick")
    report.passed, report.summary

* `load_adapter(target)` -- `module:Class`, `file.py:Class`, a built-in short name
  (`verify.adapters.BUILTIN`), a class or an instance -> `LoadedAdapter` (usage errors raise
  `verify.UsageError`, exit status 2 on the command line).
* `check_adapter(target, source=..., fuzz=..., seed=...)` -> `verify.Report`.
* `run_checks(loaded, problems)` / `run_capability(adapter, capability, problem, dtype=)` --
  the engine, for the pytest plugin and the mutation run.
* `CHECKS` -- capability -> check function; `CAPABILITIES` -- the methods the harness knows.

The checks per capability, their sources and tolerances are in docs/harness.md and in the
docstrings of the private modules (`_matrices`, `_products`, `_diagonals`, `_updates`,
`_kfac`, `_cg`, `_methods`, `_method_inputs`; the inputs per port precision are `_inputs`);
fault containment is `_faults` (every port call on a worker
thread with a timeout, `_isolation`; `check_adapter(..., timeout=)`, default 60 s).
"""

from verify.harness._faults import call_port, fresh_problem, readonly
from verify.harness._inputs import TWIN_SUFFIX
from verify.harness._loading import CAPABILITIES, LoadedAdapter, capabilities_of, load_adapter
from verify.harness._run import (
    CHECKS,
    MAX_PARAMS,
    check_adapter,
    load_problems,
    run_capability,
    run_checks,
)
from verify.harness._trajectory import clear_schedules as clear_trajectory_schedules
from verify.harness._trajectory import schedule as trajectory_schedule
from verify.harness._trajectory import trajectory_batches, trajectory_reference

__all__ = [
    "CAPABILITIES",
    "CHECKS",
    "MAX_PARAMS",
    "TWIN_SUFFIX",
    "LoadedAdapter",
    "call_port",
    "capabilities_of",
    "check_adapter",
    "fresh_problem",
    "load_adapter",
    "load_problems",
    "readonly",
    "run_capability",
    "run_checks",
    "trajectory_batches",
    "trajectory_reference",
    "clear_trajectory_schedules",
    "trajectory_schedule",
]
