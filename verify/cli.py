"""The `ngd-verify` command line (PROTOCOL section 6).

    ngd-verify run [--quick] [--fuzz N] [--devices N] [--json F] [--junit F]
    ngd-verify check --adapter TARGET [--problems zoo|quick|fixtures|FILE.json] ...
    ngd-verify bench [--json F]
    ngd-verify fixtures verify|regenerate
    ngd-verify mutants
    ngd-verify problems export FILE [--quick] [--fuzz N --seed S] [--no-zoo]
    ngd-verify campaign [--seeds 30] [--fuzz 25] [--time-limit S] [--adapter TARGET ...]

Exit status: 0 every claimed capability passed; 1 a check failed (or the run was interrupted:
the report is then written and marked partial); 2 usage error or bad input, with one line on
stderr (`ngd-verify: error: ...`) and no traceback unless `--debug` (which adds the
traceback and keeps status 2). Report files are validated and opened before any work
(`verify._outputs`) and written before the table is printed, so a broken stdout (`| head`)
or Ctrl-C never loses them.
Heavy modules (JAX above all) are imported inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from verify._errors import UsageError
from verify._outputs import ReportFiles, resolve_input

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: most host CPU devices `run --devices` forces: XLA creates each one up front (10000 took
#: over a minute before any work on a 2-core machine) and pads every batch to the device count
MAX_HOST_DEVICES = 256


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `run` and `check`."""
    options = [
        click.option("--json", "json_path", type=click.Path(dir_okay=False),
                     help="Write the JSON report here."),
        click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
                     help="Write a JUnit XML report here."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed for generated problems and probes (>= 0)."),
        click.option("--fuzz", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Add N hypothesis-generated problems."),
        click.option("--quick", is_flag=True,
                     help="The small zoo (every loss, reduction and capability path)."),
        click.option("--verbose", "-v", is_flag=True, help="List every failing check."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _finish(report: Any, files: ReportFiles, group: str, verbose: bool) -> int:
    """Write the report files, then print the table; the exit status."""
    from verify._console import print_report

    files.write(report)
    files.close()
    try:
        print_report(report, group=group, verbose=verbose)
        sys.stdout.flush()
    except (OSError, ValueError):  # `| head`, or a closed stdout: the reports are written
        _silence_stdout()
    return EXIT_OK if report.passed else EXIT_FAILED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _interrupted(report: Any, files: ReportFiles, group: str, verbose: bool) -> int:
    """Ctrl-C: mark the report partial, write it, and say so."""
    report.partial = True
    click.echo("ngd-verify: interrupted; writing the partial report", err=True)
    _finish(report, files, group, verbose)
    return EXIT_FAILED


def _prepare_devices(devices: int) -> None:
    """Force host CPU devices if needed and check that `devices` exist, before any work.

    Raises:
        UsageError: more devices than JAX can provide (or than `MAX_HOST_DEVICES` forced).
    """
    if devices <= 1:
        return
    if devices <= MAX_HOST_DEVICES:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = (
                f"{flags} --xla_force_host_platform_device_count={devices}".strip()
            )
    from ngd_ref.jax import batch_mesh

    try:
        batch_mesh(devices)
    except ValueError as exc:
        limit = (f"; host CPU devices are forced up to {MAX_HOST_DEVICES}"
                 if devices > MAX_HOST_DEVICES else "")
        raise UsageError(f"--devices {devices}: {exc}{limit}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for usage errors.")
@click.version_option(package_name="ngd-verify")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """ngd-verify: a correctness oracle for second-order optimization of neural networks."""
    ctx.obj = {"debug": debug}


@cli.command()
@_common
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="Shard the JAX cross-validation batch over N devices "
                   "(host CPUs forced if needed).")
def run(json_path, junit_path, seed, fuzz, quick, verbose, no_progress, devices) -> int:
    """The identity battery on the dense reference plus cross-validation of the JAX code."""
    files = ReportFiles.open(json_path, junit_path)
    _prepare_devices(devices)
    from verify._main_job import run_main_job
    from verify._report import Report

    report = Report(adapter="ngd-ref", dtype="float64", devices=devices)
    try:
        run_main_job(quick=quick, fuzz=fuzz, seed=seed, devices=devices,
                     show_progress=not no_progress, report=report)
    except KeyboardInterrupt:  # the report holds every result so far
        return _interrupted(report, files, "check", verbose)
    return _finish(report, files, "check", verbose)


@cli.command()
@_common
@click.option("--adapter", "target", metavar="TARGET",
              help="module.path:Class, path/to/file.py:Class, "
                   "or ngd-ref-jax, kfac-jax, curvlinops, optax.")
@click.option("--problems", "source", default=None,
              help="zoo (default), quick, fixtures, or a JSON file of problems.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True,
              help="Seconds one port call may take; a capability that hangs is abandoned "
                   "after one timeout.")
def check(json_path, junit_path, seed, fuzz, quick, verbose, no_progress, target, source,
          timeout) -> int:
    """Validate a port (an adapter class) against the dense reference."""
    if timeout != timeout:  # NaN passes FloatRange's comparisons
        raise UsageError("--timeout: expected a positive number of seconds (inf: no limit)")
    adapter_file = target.rpartition(":")[0] if target and ":" in target else None
    files = ReportFiles.open(json_path, junit_path,
                             inputs=(resolve_input(source), resolve_input(adapter_file)))
    if not target:
        raise UsageError(
            "--adapter is required (module.path:Class, file.py:Class or a built-in name)"
        )
    from verify._report import Report
    from verify.harness import check_adapter

    report = Report(adapter=target)
    try:
        check_adapter(target, source=source or ("quick" if quick else "zoo"), fuzz=fuzz,
                      seed=seed, show_progress=not no_progress, timeout=timeout, report=report)
    except KeyboardInterrupt:
        return _interrupted(report, files, "capability", verbose)
    return _finish(report, files, "capability", verbose)


@cli.command()
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the ratios here.")
@click.option("--quick", is_flag=True, help="Fewer repetitions (a smoke run, not for reporting).")
@click.option("--dense", "dense_only", is_flag=True,
              help="Only time the dense reference's scaling.")
def bench(json_path, quick, dense_only) -> int:
    """Cost ratios measured side by side in one run (PROTOCOL section 7)."""
    from verify.bench import run_bench

    return run_bench(json_path=json_path, quick=quick, dense_only=dense_only)


@cli.command()
@click.argument("action", type=click.Choice(["verify", "regenerate"]))
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Fixture directory (default: the fixtures/ shipped with ngd-verify).")
def fixtures(action, directory) -> int:
    """Check or rewrite the golden conformance fixtures (PROTOCOL section 8)."""
    from verify.fixtures import fixtures_command

    return fixtures_command(action, directory)


@cli.command()
@click.option("--dtype", type=click.Choice(["float64", "float32", "both"]), default="both",
              show_default=True)
def mutants(dtype) -> int:
    """Run the corpus of buggy ports and print the oracle's kill rate."""
    from verify.mutants import mutants_command

    return mutants_command(dtype)


@cli.group()
def problems() -> None:
    """Problems files (the `--problems FILE` format, PROTOCOL s8's `problem` objects)."""


@problems.command("export")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--quick", is_flag=True, help="The quick zoo instead of the full one.")
@click.option("--fuzz", type=click.IntRange(min=0), default=0, show_default=True,
              help="Add the N generated problems of `check --fuzz N --seed S`.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the generated problems.")
@click.option("--no-zoo", is_flag=True, help="Only the generated problems.")
def export(output, quick, fuzz, seed, no_zoo) -> int:
    """Write the zoo, the quick zoo and/or a fuzz draw as a problems file (OUTPUT, or -)."""
    from ngd_ref import zoo
    from ngd_ref._problem_io import problems_json
    from verify.strategies import generate

    if no_zoo and not fuzz:
        raise UsageError("--no-zoo needs --fuzz N (else there is nothing to export)")
    chosen = ([] if no_zoo else list(zoo.problems(quick=quick))) + list(
        generate(fuzz, seed, quick=quick))
    text = problems_json(chosen)
    if output == "-":
        click.echo(text, nl=False)
    else:
        files = ReportFiles.open(output, None)
        path, handle = files.handles["--json"]
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        files.close()
        click.echo(f"wrote {len(chosen)} problems to {path}", err=True)
    return EXIT_OK


@cli.command()
@click.option("--seeds", type=click.IntRange(min=1), default=30, show_default=True,
              help="How many seeds.")
@click.option("--first-seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--fuzz", type=click.IntRange(min=1), default=25, show_default=True,
              help="Generated problems per seed.")
@click.option("--adapter", "ports", multiple=True, metavar="TARGET",
              help="A correct port to check (repeatable; default: numpy-port and "
                   "numpy-port-float32).")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (between problems).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds one port call may take.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the summary here.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def campaign(seeds, first_seed, fuzz, ports, time_limit, timeout, json_path, no_progress) -> int:
    """Fuzz the oracle against correct ports: count crashes and false alarms (issue 13)."""
    import json

    from verify._campaign import DEFAULT_PORTS, run_campaign
    from verify._console import progress

    files = ReportFiles.open(json_path, None)
    ports = ports or DEFAULT_PORTS
    with progress(seeds * fuzz * len(ports), "campaign", enabled=not no_progress) as advance:
        try:
            result = run_campaign(seeds=seeds, first_seed=first_seed, fuzz=fuzz, ports=ports,
                                  time_limit=time_limit, timeout=timeout, advance=advance)
        except KeyboardInterrupt:
            click.echo("ngd-verify: campaign interrupted", err=True)
            return EXIT_FAILED
    if json_path:
        _, handle = files.handles["--json"]
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(result.to_json(), indent=1) + "\n")
    files.close()
    click.echo(result.summary())
    return EXIT_OK if result.clean else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ngd-verify` console script."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        code = cli.main(args=argv, prog_name="ngd-verify", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        return EXIT_USAGE
    except click.UsageError as exc:
        return _usage_error(exc.format_message(), debug)
    except click.Abort:
        click.echo("ngd-verify: aborted", err=True)
        return EXIT_FAILED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    except (UsageError, OSError) as exc:
        return _usage_error(str(exc), debug)
    if code is None:  # --help, --version
        return EXIT_OK
    return int(code)


def _usage_error(message: str, debug: bool) -> int:
    """One line on stderr (the traceback before it with `--debug`); status 2 either way."""
    if debug:
        traceback.print_exc()
    click.echo(f"ngd-verify: error: {' '.join(message.split())}", err=True)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
