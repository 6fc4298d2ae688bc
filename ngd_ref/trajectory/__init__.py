"""Optimizer trajectories (PROTOCOL s10): the five stateful methods, step by step.

* `trajectory(problem, batches, method, hyper, backend=FLOAT64)` -- the dense exact reference
  (numpy float64, or mpmath through the same code), built on `ngd_ref.dense`; returns a
  `Trajectory`: `theta_1 .. theta_K` and one `StepLog` of `Event`s per step.
* `restartable_trajectory(...)` -- the float64 reference and its `Restarts`: reruns from each
  `theta_k` shifted, the state kept (how far an error in `theta_k` alone travels: the
  harness's tolerances).
* `ngd_ref.jax.trajectory_jax` -- the JAX twin (same recurrences, every numerical piece in
  JAX; module `_jax`, not imported here so that this package never imports JAX).

Example:
    >>> from ngd_ref import zoo
    >>> from ngd_ref.trajectory import trajectory
    >>> p = zoo.get("mlp-3x4x3-tanh-mse-b1")
    >>> hyper = {"lr": 0.5, "memory": 2, "gamma": 1.0}
    >>> run = trajectory(p, [(p.inputs, p.targets)] * 3, "lbfgs", hyper)
    >>> len(run.params), run.steps[0].events[0].value
    (3, 'pair stored')
"""

from ngd_ref.trajectory._dense import (
    HYPER_KEYS,
    Event,
    Method,
    Restarts,
    StepLog,
    StepRule,
    Trajectory,
    restartable_trajectory,
    trajectory,
)

__all__ = ["HYPER_KEYS", "Event", "Method", "StepLog", "StepRule", "Restarts", "Trajectory",
           "restartable_trajectory", "trajectory"]
