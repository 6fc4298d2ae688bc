"""Sampled (Monte Carlo) curvature estimators (PROTOCOL s11): their exact moments.

* `ngd_ref.sampled._dense` -- exact mean, variance and fourth cumulant of every s11 estimator
  from the dense reference (never imports JAX); the statistical tests of the harness
  (`verify._statistics`) are built on them.
"""

from ngd_ref.sampled._dense import (
    Estimator,
    EstimatorMoments,
    estimator_entries,
    estimator_moments,
    hutchinson_moments,
    rademacher_chaos_moments,
    rule_nodes,
)

__all__ = [
    "Estimator",
    "EstimatorMoments",
    "estimator_entries",
    "estimator_moments",
    "hutchinson_moments",
    "rademacher_chaos_moments",
    "rule_nodes",
]
