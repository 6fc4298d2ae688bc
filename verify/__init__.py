"""verify: the identity battery, strategies, port harness and the `ngd-verify` command.

The identities (`verify.identities`) read as a table of theorems: each one is a function of
a problem that computes both sides with the dense reference and returns a `CheckResult`.
"""

from verify._errors import UsageError
from verify._report import CheckResult, Report, Status
from verify._tolerance import Comparison, compare, rounding_rtol, solve_rtol, unit_roundoff

__all__ = [
    "CheckResult",
    "Comparison",
    "Report",
    "Status",
    "UsageError",
    "compare",
    "rounding_rtol",
    "solve_rtol",
    "unit_roundoff",
]
