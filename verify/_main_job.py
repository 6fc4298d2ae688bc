"""`ngd-verify run`: the identity battery on the zoo, then the JAX cross-validation.

Problems: the zoo (`--quick`: its small subset) plus `--fuzz N` problems from
`verify.strategies.generate(N, seed)`. The battery runs on the dense reference
(`verify.battery`); the cross-validation (`verify.crossval.crossvalidate`) is the port
harness checking the project's JAX adapters against it on the same problems, and with
`devices > 1` the same adapters with the batch sharded over `devices` devices.
"""

from __future__ import annotations

from verify._console import progress
from verify._report import Report
from verify.battery import run_battery
from verify.strategies import generate

__all__ = ["run_main_job"]


def run_main_job(*, quick: bool, fuzz: int, seed: int, devices: int, show_progress: bool) -> Report:
    """Run the battery and the cross-validation; return the report (the CLI prints it).

    Args:
        quick: the quick zoo instead of the full one.
        fuzz: number of extra generated problems (0 for none).
        seed: seed of the generated problems and of the cross-validation's probes.
        devices: devices to shard the JAX batch over.
        show_progress: draw progress bars on stderr.
    """
    from ngd_ref import zoo
    from verify.crossval import count, crossvalidate, prepare

    problems = list(zoo.problems(quick)) + generate(fuzz, seed, quick=quick)
    report = Report(adapter="ngd-ref", dtype="float64", devices=devices)
    prepared = prepare(problems, devices=devices)  # JAX compiles while the battery runs
    with progress(len(problems), "identities", enabled=show_progress) as advance:
        report.extend(run_battery(problems, progress=advance))
    with progress(count(problems, devices), "JAX cross-validation",
                  enabled=show_progress) as advance:
        report.extend(crossvalidate(problems, devices=devices, seed=seed, progress=advance,
                                    prepared=prepared))
    return report
