"""Shared test configuration.

The first lines run before anything imports JAX: the sharding tests need 8 host CPU devices,
which XLA only creates when this flag is set before JAX initializes its backends.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402 -- after XLA_FLAGS on purpose
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Enable float64 in JAX for one test, restoring the previous setting afterwards.

    Modules that compare JAX with the float64 dense reference opt in with
    `pytestmark = pytest.mark.usefixtures("x64")`.
    """
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
