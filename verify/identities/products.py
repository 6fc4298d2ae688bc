"""Jacobian-vector and vector-Jacobian products: which is which (seed 000; PROTOCOL s3).

Forward accumulation propagates a *parameter-space* tangent `v` (`(n,)`) to `J v` (output
space, `(C,)` per example); reverse accumulation pulls an *output-space* cotangent `u` back to
`u^T J` (`(n,)`). Seed 000 describes them the other way round ("jax.jvp: ... using
reverse/backward-accumulation (v.shape = output size)", "jax.vjp: ... forward-accumulation
(v.shape = input size)").

* `jvp_vjp_adjoint` -- the reference's forward tangents (`J_b` of `trace_example`) applied to
  a seeded `v` and the reverse pass of `verify.identities.hessian.reverse_mode_vjp` applied to
  seeded `u_b` satisfy `sum_b u_b^T (J_b v) = (sum_b J_b^T u_b)^T v`, with `J v` of output
  size and `J^T u` of parameter size.
* negative control `seed000_swapped_product_shapes` (where `n != C`): with the seed's shapes,
  the forward product is handed an output-sized vector and the reverse product a
  parameter-sized one; neither matches the Jacobian's shape `(C, n)` (numpy would even
  broadcast them silently where `C = 1`, so the shapes are compared explicitly).

Tolerance: `exact_rtol` relative to `sum_b |u_b|^T |J_b| |v|` (the products' magnitude).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Problem
from ngd_ref.dense import FLOAT64
from verify._tolerance import compare
from verify.identities._common import at_most, exact_rtol, problem_rng, reference
from verify.identities._registry import identity, result
from verify.identities.hessian import reverse_mode_vjp

__all__ = ["jvp_vjp_adjoint", "seed000_swapped_product_shapes"]

SOURCE = "seed 000 (jax.jvp / jax.vjp); PROTOCOL s3"


def _vectors(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    rng = problem_rng(problem, "jvp-vjp")
    return (rng.standard_normal(problem.n_params),
            rng.standard_normal((problem.batch_size, problem.output_dim)))


@identity("jvp_vjp_adjoint", source=SOURCE,
          statement="u^T (J v) = (J^T u)^T v: forward mode takes a parameter-sized v, reverse "
                    "mode an output-sized u",
          applies=lambda p: p.dense_only)  # reverse_mode_vjp: dense layers only
def jvp_vjp_adjoint(problem: Problem):
    """Forward tangents against an independent reverse pass (module docstring)."""
    jac = np.asarray(reference(problem).jacobians, dtype=np.float64)
    v, u = _vectors(problem)
    jv = np.einsum("bcn,n->bc", jac, v)
    with FLOAT64.precision():
        ju = np.asarray(reverse_mode_vjp(problem, problem.params, FLOAT64, u), dtype=np.float64)
    mag = float(np.einsum("bc,bcn,n->", np.abs(u), np.abs(jac), np.abs(v)))
    return [
        result("jvp_vjp_adjoint", problem,
               compare(float(np.sum(u * jv)), float(ju @ v), tolerance=exact_rtol(problem),
                       magnitude=mag), "sum_b u_b^T (J_b v) = (sum_b J_b^T u_b)^T v", SOURCE),
        at_most("jvp_vjp_adjoint", problem,
                float(jv.shape != u.shape or ju.shape != v.shape), 0.0,
                "shapes: J v is output-sized, J^T u parameter-sized (0 = as stated)", SOURCE),
    ]


@identity("seed000_swapped_product_shapes", source=SOURCE, negative_control=True,
          statement="with seed 000's shapes (jvp given an output-sized v, vjp a parameter-sized "
                    "one) neither product is defined", applies=lambda p: p.n_params != p.output_dim)
def seed000_swapped_product_shapes(problem: Problem):
    """Negative control: the swapped descriptions cannot be executed (hypothesis: `n != C`)."""
    jac = np.asarray(reference(problem).jacobians, dtype=np.float64)
    v, u = _vectors(problem)
    # J_b is (C, n): a forward tangent must have n entries, a reverse cotangent C.
    forward_defined = u[0].shape[0] == jac.shape[2]
    reverse_defined = v.shape[0] == jac.shape[1]
    forward, reverse = not forward_defined, not reverse_defined
    return at_most("seed000_swapped_product_shapes", problem, -float(forward and reverse), -1.0,
                   "-(neither swapped product matches J's shape (C, n))", SOURCE,
                   negative_control=True)
