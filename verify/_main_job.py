"""`ngd-verify run`: the identity battery on the zoo, then the JAX cross-validation.

Problems: the zoo (`--quick`: its small subset) plus `--fuzz N` problems from
`verify.strategies.generate(N, seed)`. The battery runs on the dense reference
(`verify.battery`); the cross-validation (`verify.crossval.crossvalidate`) is the port
harness checking the project's JAX adapters against it on the same problems, and with
`devices > 1` the same adapters with the batch sharded over `devices` devices. With two or
more CPUs the battery runs in a second process (`verify.battery.BatteryWorker`) during the
cross-validation; its results still come first in the report.
"""

from __future__ import annotations

from verify._console import progress
from verify._report import Report
from verify.battery import BatteryWorker, run_battery
from verify.strategies import generate

__all__ = ["run_main_job"]


def run_main_job(*, quick: bool, fuzz: int, seed: int, devices: int, show_progress: bool,
                 report: Report | None = None) -> Report:
    """Run the battery and the cross-validation; return the report (the CLI prints it).

    Args:
        quick: the quick zoo instead of the full one.
        fuzz: number of extra generated problems (0 for none).
        seed: seed of the generated problems and of the cross-validation's probes.
        devices: devices to shard the JAX batch over.
        show_progress: draw progress bars on stderr.
        report: the report to fill as results come (default: a new one); on an interrupt
            (Ctrl-C) it holds every result so far, as `check_adapter`'s does.
    """
    from ngd_ref import zoo
    from verify.crossval import count, crossvalidate, prepare

    problems = list(zoo.problems(quick)) + generate(fuzz, seed, quick=quick)
    if report is None:
        report = Report(adapter="ngd-ref", dtype="float64", devices=devices)
    beside = BatteryWorker(problems) if BatteryWorker.worthwhile(problems) else None
    prepared = prepare(problems, devices=devices)  # JAX compiles while the battery runs
    try:
        if beside is None:
            with progress(len(problems), "identities", enabled=show_progress) as advance:
                run_battery(problems, progress=advance, results=report.results)
        with progress(count(problems, devices), "JAX cross-validation",
                      enabled=show_progress) as advance:
            crossvalidate(problems, devices=devices, seed=seed, progress=advance,
                          prepared=prepared, results=report.results)
        if beside is not None:  # the battery's results come first, as without a worker
            with progress(len(problems), "identities", enabled=show_progress) as advance:
                report.results[:0] = beside.collect(advance)
    except KeyboardInterrupt:  # the compile threads stop so that the process can exit
        prepared.cancel()
        if beside is not None:
            report.results[:0] = beside.arrived()
        raise
    finally:
        if beside is not None:
            beside.close()
    return report
