"""Shared test configuration.

The first lines run before anything imports JAX: the sharding tests need 8 host CPU devices,
which XLA only creates when this flag is set before JAX initializes its backends.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
