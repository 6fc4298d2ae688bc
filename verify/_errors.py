"""Usage errors: bad input that the command line reports in one line with exit status 2."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """Bad input from the user (unloadable adapter, malformed problem file, ...).

    The CLI prints `ngd-verify: error: <message>` on stderr and exits with status 2; the
    traceback is shown only with `--debug`.
    """
