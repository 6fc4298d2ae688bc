"""`ngd-ref-jax`'s `optimizer_trajectory` (PROTOCOL s10): `ngd_ref.jax.trajectory_jax`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ngd_ref import Problem
from ngd_ref import jax as nj

__all__ = ["TrajectoryJax"]


class TrajectoryJax:
    """Mixin of `NgdRefJax`: the five methods of section 10 with the JAX twin's numerics."""

    dtype: str  # `NgdRefJax.dtype`

    def optimizer_trajectory(self, problem: Problem, batches: Any, method: str,
                             hyper: dict) -> list[np.ndarray]:
        """`theta_1 .. theta_K` from `ngd_ref.jax.trajectory_jax` in the adapter's dtype."""
        run = nj.trajectory_jax(problem, list(batches), method, hyper, dtype=self.dtype)
        return list(run.float64())
