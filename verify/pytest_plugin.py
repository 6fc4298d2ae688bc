"""Run the conformance checks inside a port's own pytest suite: one test per capability x problem.

    # tests/test_conformance.py of your port
    from verify.pytest_plugin import conformance_tests
    from my_port.adapter import MyPort

    test_conformance = conformance_tests(MyPort, source="quick")

Collection builds the adapter once (a usage error -- no capability claimed, a failing
constructor -- fails collection with the one-line reason) and parametrizes the returned
test function with ids such as `ggn[mlp-3x4x3-tanh-mse-b1]`. Each test runs every check of
that capability on that problem (`verify.harness.run_capability`): it fails with the failing
checks' messages (identity, error, tolerance), and is skipped when the port declines every
variant (raises `NotImplementedError`). Unclaimed capabilities produce no tests.

This is an explicit helper rather than an auto-loaded `pytest11` plugin on purpose: importing
it costs nothing in suites that do not call it (this repository's own included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from verify._report import Status
from verify.harness import load_adapter, load_problems, run_capability

__all__ = ["conformance_tests"]


def conformance_tests(
    adapter: str | type | Any,
    *,
    source: str = "quick",
    capabilities: Iterable[str] | None = None,
    fuzz: int = 0,
    seed: int = 0,
) -> Callable[..., None]:
    """A parametrized pytest test function checking `adapter` capability by capability.

    Args:
        adapter: a TARGET string, an adapter class or an instance (see `load_adapter`).
        source: problems: `"quick"` (default), `"zoo"`, `"fixtures"` or a JSON file.
        capabilities: restrict to these claimed capabilities (default: all claimed).
        fuzz: add generated problems.
        seed: seed of generated problems and probe vectors.

    Returns:
        A test function; assign it to a module-level name starting with `test_`.
    """
    loaded = load_adapter(adapter)
    problems = load_problems(source, fuzz=fuzz, seed=seed)
    wanted = (
        loaded.capabilities
        if capabilities is None
        else [c for c in loaded.capabilities if c in set(capabilities)]
    )
    cases = [pytest.param(c, p, id=f"{c}[{p.name}]") for c in wanted for p in problems]

    @pytest.mark.parametrize(("capability", "problem"), cases)
    def test_conformance(capability: str, problem) -> None:
        results = run_capability(
            loaded.instance, capability, problem, dtype=loaded.dtype, seed=seed
        )
        bad = [r for r in results if Status(r.status) in (Status.FAIL, Status.ERROR)]
        if bad:
            pytest.fail(
                "\n".join(f"{Status(r.status).value.upper()} {r.check}: {r.message}" for r in bad),
                pytrace=False,
            )
        if results and all(Status(r.status) is Status.SKIP for r in results):
            pytest.skip(results[0].message)

    test_conformance.__doc__ = f"Conformance of {loaded.name} ({loaded.dtype}) with PROTOCOL s5/s9."
    return test_conformance
