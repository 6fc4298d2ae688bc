"""Golden conformance fixtures (PROTOCOL section 8): load, verify, regenerate.

Each file under `fixtures/` holds a tiny problem, the stored arguments (a vector, a damping,
an SPD system for CG) and the exact answers -- loss, gradient, H, G, F, EF, their diagonals
and products with the vector, damped updates, K-FAC factors and damped solves of every kind,
CG iterates -- computed by the dense reference in mpmath at 50 digits and certified by a
recomputation at 70 (`verify._fixture_gen`). Ports in any language test against the files
without running Python (`docs/fixtures.md`); the format is in `verify._fixture_format`.

    ngd-verify fixtures verify            # recompute in float64 and in mpmath, and check
    ngd-verify fixtures regenerate        # rewrite the shipped files (byte-identical when rerun)
    ngd-verify check --adapter X --problems fixtures   # run a port on the fixture problems

Example:
    >>> from verify.fixtures import load_fixture, FIXTURE_DIR
    >>> fixture = load_fixture(FIXTURE_DIR / "linear-2x2-mse-b2.json")
    >>> fixture.problem.n_params, fixture.expected[("hessian",)].shape
    (6, (6, 6))
"""

from __future__ import annotations

import math
from pathlib import Path

import mpmath

from ngd_ref import Problem
from ngd_ref.dense import FLOAT64, agreement_digits, mp_backend
from verify._errors import UsageError
from verify._fixture_format import (
    SCHEMA,
    Arguments,
    CGSystem,
    Fixture,
    FixtureError,
    ToleranceRecord,
    dumps,
    leaf_name,
    load_fixture,
    parse_fixture,
    tolerance_key,
)
from verify._fixture_gen import (
    CONDITION_DIGITS,
    DPS,
    FIXTURE_SPECS,
    FixtureSpec,
    compute_expected,
    generate_fixture,
    policy_tolerance,
    tolerance_records,
)
from verify._report import CheckResult, Report, Status
from verify._tolerance import compare

__all__ = [
    "FIXTURE_DIR",
    "FIXTURE_SPECS",
    "SCHEMA",
    "Arguments",
    "CGSystem",
    "Fixture",
    "FixtureError",
    "FixtureSpec",
    "ToleranceRecord",
    "fixtures_command",
    "generate_fixture",
    "load_fixture",
    "load_fixture_problems",
    "load_fixtures",
    "parse_fixture",
    "regenerate_fixtures",
    "verify_fixture",
    "verify_fixtures",
]

#: The shipped fixtures: `fixtures/` at the root of the source tree, reached through the
#: package-data link `verify/_golden` (a wheel carries the files themselves there).
FIXTURE_DIR = Path(__file__).parent / "_golden"

#: Stored condition numbers and magnitudes are rounded to `CONDITION_DIGITS` significant
#: digits, so a recomputation may differ by one unit in the last of them.
RECORD_RTOL = 10.0 ** -(CONDITION_DIGITS - 1)


def _directory(directory: str | Path | None) -> Path:
    return FIXTURE_DIR if directory is None else Path(directory)


def load_fixtures(directory: str | Path | None = None) -> list[Fixture]:
    """Load every `*.json` of `directory` (default `FIXTURE_DIR`), sorted by file name.

    Raises:
        FixtureError: if the directory does not exist or holds no fixture, or for the first
            malformed file (naming it and the field).
    """
    folder = _directory(directory)
    if not folder.is_dir():
        raise FixtureError(f"{folder}: fixture directory not found (run `ngd-verify fixtures "
                           "regenerate`, or pass --dir)")
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise FixtureError(f"{folder}: no fixture files (*.json) in the directory")
    return [load_fixture(path) for path in paths]


def load_fixture_problems(directory: str | Path | None = None) -> list[Problem]:
    """Load the fixtures' problems (the `--problems fixtures` source of `ngd-verify check`)."""
    return [fixture.problem for fixture in load_fixtures(directory)]


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------
def _float64_checks(fixture: Fixture) -> list[CheckResult]:
    """One result per tolerance key: the float64 reference against the stored values."""
    computed = compute_expected(fixture.problem, fixture.arguments, FLOAT64)
    by_key: dict[str, list[tuple[float, str, bool]]] = {}
    for path, stored, record in fixture.items():
        cmp = compare(computed[path], stored, tolerance=record.float64, magnitude=record.magnitude)
        by_key.setdefault(tolerance_key(path), []).append(
            (cmp.error, f"{leaf_name(path)}: {cmp.describe()}", cmp.passed))
    results = []
    for key, leaves in by_key.items():
        error, message, _ = max(leaves, key=lambda leaf: leaf[0])
        passed = all(leaf[2] for leaf in leaves)
        results.append(CheckResult(
            "float64_recomputation", key, fixture.name, Status.PASS if passed else Status.FAIL,
            error, fixture.tolerance[key].float64,
            f"dense float64 reference vs stored value, worst leaf {message}"))
    return results


def _record_check(fixture: Fixture) -> CheckResult:
    """Check that the stored tolerances are the policy's, for the problem's own conditioning."""
    computed = compute_expected(fixture.problem, fixture.arguments, FLOAT64)
    fresh = tolerance_records(fixture.problem, fixture.arguments, computed)
    problems = []
    for key, stored in fixture.tolerance.items():
        new = fresh[key]
        if (stored.length, stored.depth) != (new.length, new.depth):
            problems.append(f"{key}: length/depth {stored.length}/{stored.depth}, "
                            f"policy says {new.length}/{new.depth}")
        for field in ("condition", "magnitude"):
            old_value, new_value = getattr(stored, field), getattr(new, field)
            if abs(old_value - new_value) > RECORD_RTOL * abs(new_value):
                problems.append(f"{key}: {field} {old_value:.3g}, recomputed {new_value:.3g}")
        for dtype in ("float64", "float32"):
            policy = policy_tolerance(dtype, length=stored.length, depth=stored.depth,
                                      condition=stored.condition)
            if stored.for_dtype(dtype) != policy:
                problems.append(f"{key}: {dtype} tolerance {stored.for_dtype(dtype):.3g}, "
                                f"policy gives {policy:.3g}")
    message = "; ".join(problems[:3]) or (
        f"{len(fixture.tolerance)} tolerance records match verify._tolerance's policy")
    return CheckResult("tolerance_record", "tolerance", fixture.name,
                       Status.FAIL if problems else Status.PASS, message=message)


def _mpmath_check(fixture: Fixture, dps: int = DPS) -> CheckResult:
    """Recompute every leaf at `dps` digits; the stored strings must carry `digits` digits."""
    exact = compute_expected(fixture.problem, fixture.arguments, mp_backend(dps))
    least, where = math.inf, ""
    with mpmath.workdps(dps):
        for path in exact:
            digits = agreement_digits(fixture.exact(path), exact[path])
            if digits < least:
                least, where = digits, leaf_name(path)
    passed = least >= fixture.digits
    return CheckResult("mpmath_recomputation", "certified_digits", fixture.name,
                       Status.PASS if passed else Status.FAIL, 10.0**-least, 10.0**-fixture.digits,
                       f"stored values agree with a {dps}-digit recomputation to {least:.1f} "
                       f"significant digits (worst: {where}); the file claims {fixture.digits}")


def verify_fixture(fixture: Fixture, *, full: bool = True) -> list[CheckResult]:
    """Recompute a fixture with the dense reference and check every stored value.

    * `float64_recomputation` (one result per tolerance key): the float64 reference, held to
      the stored float64 tolerance -- the same test a float64 port faces;
    * `tolerance_record`: the stored tolerances follow `verify._tolerance`'s policy;
    * with `full` (the default), `mpmath_recomputation`: a 50-digit recomputation agrees with
      the stored decimal strings to at least the file's `digits`.
    """
    results = _float64_checks(fixture) + [_record_check(fixture)]
    if full:
        results.append(_mpmath_check(fixture))
    return results


def verify_fixtures(directory: str | Path | None = None, *, full: bool = True) -> Report:
    """Verify every fixture of `directory`; for the shipped directory also that none is missing.

    Raises:
        FixtureError: for a missing directory or a malformed file.
    """
    fixtures = load_fixtures(directory)
    report = Report("ngd-ref dense reference (golden fixtures)", "float64")
    for fixture in fixtures:
        report.extend(verify_fixture(fixture, full=full))
    if directory is None:
        present = {fixture.path.stem for fixture in fixtures}
        missing = [spec.name for spec in FIXTURE_SPECS if spec.name not in present]
        message = (f"missing shipped fixtures: {', '.join(missing)} (run `ngd-verify fixtures "
                   "regenerate`)" if missing
                   else f"all {len(FIXTURE_SPECS)} shipped fixtures present")
        report.extend([CheckResult("fixture_set", "fixture_set", str(FIXTURE_DIR),
                                   Status.FAIL if missing else Status.PASS, message=message)])
    return report


# ---------------------------------------------------------------------------------------------
# Regeneration
# ---------------------------------------------------------------------------------------------
def regenerate_fixtures(directory: str | Path | None = None,
                        specs: tuple[FixtureSpec, ...] = FIXTURE_SPECS) -> list[Path]:
    """Write `<name>.json` for every spec into `directory` (default `FIXTURE_DIR`).

    Deterministic: the same specs always give byte-identical files. Other files in the
    directory are left alone.
    """
    folder = _directory(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in specs:
        path = folder / f"{spec.name}.json"
        path.write_text(dumps(spec.generate()), encoding="utf-8")
        written.append(path)
    return written


def fixtures_command(action: str, directory: str | None, full: bool = True) -> int:
    """Run `ngd-verify fixtures verify|regenerate`; return the exit status (0 ok, 1 failed).

    `verify` recomputes every value in float64 and (with `full`, the default; about 7 s for
    the shipped files) in mpmath at 50 digits. `regenerate` rewrites the shipped fixtures.

    Raises:
        UsageError: for an unknown action; `FixtureError` (a `UsageError`) for bad files.
    """
    from verify._console import print_report

    if action == "verify":
        report = verify_fixtures(directory, full=full)
        print_report(report, group="capability")
        return 0 if report.passed else 1
    if action == "regenerate":
        report = Report("ngd-ref dense reference (golden fixtures)", "mpmath")
        for path in regenerate_fixtures(directory):
            fixture = load_fixture(path)
            report.extend([CheckResult("regenerate", "regenerate", fixture.name, Status.PASS,
                                       message=f"wrote {path} ({fixture.digits} digits)")])
        print_report(report, group="capability")
        return 0
    raise UsageError(f"action: expected 'verify' or 'regenerate', got {action!r}")

