"""The `ngd-verify` command line (PROTOCOL section 6).

    ngd-verify run [--quick] [--fuzz N] [--devices N] [--json F] [--junit F]
    ngd-verify check --adapter TARGET [--problems zoo|quick|fixtures|FILE.json] ...
    ngd-verify bench [--json F]
    ngd-verify fixtures verify|regenerate
    ngd-verify mutants

Exit status: 0 every claimed capability passed; 1 a check failed; 2 usage error or bad input,
with one line on stderr (`ngd-verify: error: ...`) and no traceback unless `--debug`.
Heavy modules (JAX above all) are imported inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from verify._errors import UsageError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `run` and `check`."""
    options = [
        click.option("--json", "json_path", type=click.Path(dir_okay=False),
                     help="Write the JSON report here."),
        click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
                     help="Write a JUnit XML report here."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for generated problems and probes."),
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


def _finish(report: Any, json_path: str | None, junit_path: str | None, group: str,
            verbose: bool) -> int:
    from verify._console import print_report

    print_report(report, group=group, verbose=verbose)
    if json_path:
        report.write_json(json_path)
    if junit_path:
        report.write_junit(junit_path)
    return EXIT_OK if report.passed else EXIT_FAILED


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
    if devices > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = (
                f"{flags} --xla_force_host_platform_device_count={devices}".strip()
            )
    from verify._main_job import run_main_job

    report = run_main_job(quick=quick, fuzz=fuzz, seed=seed, devices=devices,
                          show_progress=not no_progress)
    return _finish(report, json_path, junit_path, "check", verbose)


@cli.command()
@_common
@click.option("--adapter", "target", metavar="TARGET",
              help="module.path:Class, path/to/file.py:Class, "
                   "or ngd-ref-jax, kfac-jax, curvlinops, optax.")
@click.option("--problems", "source", default=None,
              help="zoo (default), quick, fixtures, or a JSON file of problems.")
def check(json_path, junit_path, seed, fuzz, quick, verbose, no_progress, target, source) -> int:
    """Validate a port (an adapter class) against the dense reference."""
    if not target:
        raise UsageError(
            "--adapter is required (module.path:Class, file.py:Class or a built-in name)"
        )
    from verify.harness import check_adapter

    report = check_adapter(target, source=source or ("quick" if quick else "zoo"), fuzz=fuzz,
                           seed=seed, show_progress=not no_progress)
    return _finish(report, json_path, junit_path, "capability", verbose)


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
        click.echo(f"ngd-verify: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.Abort:
        click.echo("ngd-verify: aborted", err=True)
        return EXIT_FAILED
    except (UsageError, OSError) as exc:
        if debug:
            raise
        click.echo(f"ngd-verify: error: {exc}", err=True)
        return EXIT_USAGE
    if code is None:  # --help, --version
        return EXIT_OK
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
