"""Input generation per port precision: what the harness hands a port beyond the zoo (issue 14).

The zoo, the quick zoo and the generated problems are dyadic (multiples of 1/64), so a
float32 port receives exactly the values the float64 reference uses. A float64 port must
also be shown values that float32 cannot hold, or a port that silently rounds its inputs to
float32 (relative error `2^-24 ~ 6e-8`, six orders above the float64 tolerance) is invisible.
So the inputs depend on the port's declared `dtype`:

* probe vectors (`probe_vectors`): float64 ports get full-precision uniform entries in
  `[-1, 1]` (53 significant bits); float32 ports keep the dyadic `k/64` entries, exact in
  float32;
* the reused-name twin (`reused_name_twin`): every capability that takes a problem is checked
  a second time on a problem with **the same name** and different data. For a float64 port
  the twin's parameters, inputs and real-valued targets carry full-precision perturbations
  (relative 1/8, non-dyadic); for a float32 port its parameters are moved by a dyadic amount
  (`3/4 theta + k/256`, exact in float32). `Problem.replace(params=...)` keeps the name, so a
  port that caches anything by `problem.name` (or by shapes) returns the first problem's
  values on the twin and fails; a float64 port that rounds problem data to float32 fails the
  twin's comparisons. The twin's results are recorded under the same problem name with the
  check name suffixed `TWIN_SUFFIX`.

Capabilities whose inputs the harness builds itself from the reference (CG, BFGS, L-BFGS
direction, Hutchinson, inverse roots, Shampoo: `MATRIX_INPUT`) are not run on the twin: their
matrices are already non-dyadic, and their probe vectors follow the rule above; nor is
`optimizer_trajectory` and the sampled estimators (cost).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import numpy as np

from ngd_ref import Loss, Problem
from ngd_ref._spec import TargetKind

__all__ = ["MATRIX_INPUT", "TWIN_SUFFIX", "probe_vectors", "reused_name_twin", "with_twin"]

#: capabilities not run on the twin: those whose arguments are matrices and vectors built by
#: the harness (not a problem), `optimizer_trajectory` (a whole run per problem: its cost
#: would double, and its schedules are chosen per problem, not per name) and the sampled
#: estimators (statistical tests whose cost would double; precision and name caching are
#: covered by the exact checks)
MATRIX_INPUT = frozenset(
    {"cg", "bfgs_update", "lbfgs_direction", "hutchinson_diag", "hutchinson_trace",
     "inverse_root", "shampoo_direction", "optimizer_trajectory", "mc_fisher", "mc_fisher_vp",
     "mc_fisher_diag", "mc_kfac_factors"}
)
#: appended to the check names of the results on the reused-name twin
TWIN_SUFFIX = "_reused_name"
#: relative size of the twin's perturbation (float64 ports)
_SPREAD = 0.125


def probe_vectors(rng: np.random.Generator, n: int, count: int, dtype: str) -> list[np.ndarray]:
    """`count` probe vectors of length n for a port of precision `dtype` (see module docstring).

    float32: entries in `{-1, -63/64, ..., 1}`, exact in float32; float64: uniform in
    `[-1, 1]` at full precision (a float32 rounding of them is off by ~6e-8 relative).
    """
    if dtype == "float32":
        return [rng.integers(-64, 65, size=n) / 64.0 for _ in range(count)]
    return [rng.uniform(-1.0, 1.0, size=n) for _ in range(count)]


def reused_name_twin(problem: Problem, dtype: str) -> Problem:
    """A problem with `problem`'s name, structure and shapes but different data (see module doc).

    Deterministic: the perturbation is seeded by the problem's name.
    """
    rng = np.random.default_rng([zlib.crc32(problem.name.encode()), 14])
    params = np.asarray(problem.params, dtype=np.float64)
    if dtype == "float32":
        moved = 0.75 * params + rng.integers(-4, 5, size=params.shape) / 256.0
        return problem.replace(params=moved)

    def spread(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return values * (1.0 + rng.uniform(-_SPREAD, _SPREAD, values.shape)) + rng.uniform(
            -_SPREAD / 8, _SPREAD / 8, values.shape
        )

    changes = {"params": spread(params), "inputs": spread(problem.inputs)}
    if Loss(problem.loss).spec.targets is TargetKind.REAL:
        changes["targets"] = spread(problem.targets)
    return problem.replace(**changes)


def with_twin(check: Callable, capability: str) -> Callable:
    """`check`, followed by the same check on the reused-name twin (problem capabilities only).

    The twin's results go into the same context's results, their check names suffixed with
    `TWIN_SUFFIX`. A port fault on the twin propagates (after its results are kept) so that
    the engine records it under the twin check that was running.
    """
    if capability in MATRIX_INPUT:
        return check

    def run(ctx) -> None:
        check(ctx)
        twin_problem = reused_name_twin(ctx.problem, ctx.dtype)
        twin = dataclasses.replace(ctx, problem=twin_problem, results=[], current="")
        try:
            check(twin)
        finally:
            ctx.results.extend(
                dataclasses.replace(r, check=r.check + TWIN_SUFFIX) for r in twin.results
            )
            if twin.current:
                ctx.current = twin.current + TWIN_SUFFIX

    return run
