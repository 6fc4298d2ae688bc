"""Shared test configuration.

The first lines run before anything imports JAX: the sharding tests need 8 host CPU devices,
which XLA only creates when this flag is set before JAX initializes its backends.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402, F401 -- after XLA_FLAGS on purpose
import pytest  # noqa: E402

from verify.adapters._x64 import x64 as x64_context  # noqa: E402


@pytest.fixture
def x64():
    """Enable float64 in JAX for one test (a thread-local context; nothing global changes).

    Modules that compare JAX with the float64 dense reference opt in with
    `pytestmark = pytest.mark.usefixtures("x64")`. No library module flips the global flag
    (the adapters run their methods in `verify.adapters._x64`'s context), so a test without
    this fixture really computes in JAX's default 32 bits.
    """
    with x64_context():
        yield


class Battery:
    """Identity results memoized per (identity, problem) for the whole test session.

    `run(problems, identities)` computes the missing results problem-major, so each problem's
    dense reference (`ngd_ref.dense.dense` keeps the last 16) is built once rather than once
    per identity, and a result several test files need (the quick zoo's battery) is computed
    once per session (per worker under xdist).
    """

    def __init__(self):
        self._memo = {}

    def run(self, problems, identities):
        """`{(identity name, problem name): results}` (`run_identity`'s, [] if not applicable)."""
        from threadpoolctl import threadpool_limits

        from verify.battery import run_identity

        with threadpool_limits(limits=1, user_api="blas"):  # as `run_battery` does
            for problem in problems:
                for ident in identities:
                    key = (ident.name, problem.name)
                    if key not in self._memo:
                        self._memo[key] = run_identity(ident, problem)
        return {(i.name, p.name): self._memo[(i.name, p.name)]
                for p in problems for i in identities}


@pytest.fixture(scope="session")
def battery():
    """The session's `Battery`."""
    return Battery()
