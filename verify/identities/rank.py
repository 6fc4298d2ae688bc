"""Rank bounds of the curvature matrices (Martens s3, s7, seed 003; against seed 004).

`EF = c sum_b g_b g_b^T` is a sum of B rank-one terms, so `rank EF <= B`; `G = c sum_b
J_b^T H_L,b J_b` is a sum of B terms of rank at most C, so `rank G <= B C`, and for softmax
logits (`LossSpec.probabilities` is `SOFTMAX`: `H_L,b = diag(p) - p p^T` annihilates the ones
vector) `rank G <= B (C - 1)`. Seed 004 ("Generalized Gauss-Newton") states that G "over a
batch of size b has a rank of at most b": false for `C > 1` (`C > 2` for softmax), the
negative control.

Numerical rank: eigenvalue `k + 1` (in decreasing modulus) of a matrix of rank `<= k` is
rounding, at most `exact_rtol MAG(C)` (the policy's magnitude). The negative control predicts
the break by another route: the singular values of the stacked output-space factor
`K = [H_L,b^{1/2} J_b]` (`G = c K^T K`, convex losses), so `c sigma_{B+1}(K)^2` must be
`detectable` against the tolerance.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Loss, Probabilities, Problem
from verify.identities._common import (
    at_most,
    exact_rtol,
    gauss_newton_magnitude,
    magnitude,
    reference,
)
from verify.identities._registry import detectable, identity

__all__ = [
    "ggn_rank_bound",
    "ggn_rank_exceeds_batch_size",
    "empirical_fisher_rank_bound",
    "rank_bound",
]

SOURCE = "Martens s3, s7 (seed 003)"
SEED = "seed 004 'Generalized Gauss-Newton' ('rank of at most b')"


def rank_bound(problem: Problem) -> int:
    """`B (C - 1)` for softmax logits, else `B C`: the bound on `rank G`."""
    per_example = problem.output_dim
    if Loss(problem.loss).spec.probabilities is Probabilities.SOFTMAX:
        per_example -= 1
    return problem.batch_size * per_example


def _tail(matrix: np.ndarray, rank: int) -> float:
    """Eigenvalue `rank + 1` of a symmetric matrix in decreasing modulus (0 if none)."""
    values = np.sort(np.abs(np.linalg.eigvalsh(matrix)))[::-1]
    return float(values[rank]) if rank < values.size else 0.0


@identity("empirical_fisher_rank_bound", source="Martens s7 (seed 003)",
          statement="rank EF <= B (a sum of B outer products)",
          applies=lambda p: p.n_params > p.batch_size)
def empirical_fisher_rank_bound(problem: Problem):
    """`|nu_{B+1}(EF)| <= exact_rtol MAG(EF)` (hypothesis: `n > B`)."""
    ref = reference(problem)
    mag = max(magnitude(ref.empirical_fisher), np.finfo(float).tiny)
    return at_most("empirical_fisher_rank_bound", problem,
                   _tail(ref.empirical_fisher, problem.batch_size) / mag, exact_rtol(problem),
                   f"|nu_(B+1)(EF)| / MAG (B = {problem.batch_size})", "Martens s7 (seed 003)")


@identity("ggn_rank_bound", source=SOURCE,
          statement="rank G <= B C, and <= B (C - 1) for softmax logits",
          applies=lambda p: p.n_params > rank_bound(p))
def ggn_rank_bound(problem: Problem):
    """`|nu_{k+1}(G)| <= exact_rtol MAG(G)`, `k = rank_bound(problem)` (hypothesis: `n > k`)."""
    ref = reference(problem)
    k = rank_bound(problem)
    mag = max(gauss_newton_magnitude(ref, ref.loss_hessians), np.finfo(float).tiny)
    return at_most("ggn_rank_bound", problem, _tail(ref.ggn, k) / mag, exact_rtol(problem),
                   f"|nu_(k+1)(G)| / MAG (k = {k})", SOURCE)


def _predicted_tail(problem: Problem) -> float:
    """`c sigma_{B+1}(K)^2 / MAG(G)` with `K = [H_L,b^{1/2} J_b]` stacked (convex losses)."""
    ref = reference(problem)
    rows = []
    for h, jac in zip(ref.loss_hessians, ref.jacobians, strict=True):
        values, vectors = np.linalg.eigh(h)
        rows.append((vectors * np.sqrt(np.maximum(values, 0.0))).T @ jac)
    sigma = np.linalg.svd(np.concatenate(rows), compute_uv=False)
    b = problem.batch_size
    tail = problem.scale * float(sigma[b]) ** 2 if sigma.size > b else 0.0
    return tail / max(gauss_newton_magnitude(ref, ref.loss_hessians), np.finfo(float).tiny)


def _seed_rank_refutable(problem: Problem) -> bool:
    """A convex loss with more than B output directions, and `nu_{B+1}(G)` detectable."""
    return (Loss(problem.loss).spec.hessian_psd and rank_bound(problem) > problem.batch_size
            and problem.n_params > problem.batch_size
            and detectable(_predicted_tail(problem), exact_rtol(problem)))


@identity("ggn_rank_exceeds_batch_size", source=SEED, negative_control=True,
          statement="seed 004's 'rank G <= b' is false: nu_(B+1)(G) is detectably nonzero "
                    "when C > 1 (C > 2 for softmax)", applies=_seed_rank_refutable)
def ggn_rank_exceeds_batch_size(problem: Problem):
    """Negative control: G has more than B resolved eigenvalues (hypothesis: predicted tail)."""
    ref = reference(problem)
    mag = max(gauss_newton_magnitude(ref, ref.loss_hessians), np.finfo(float).tiny)
    return at_most("ggn_rank_exceeds_batch_size", problem,
                   -_tail(ref.ggn, problem.batch_size) / mag, -100 * exact_rtol(problem),
                   f"-|nu_(B+1)(G)| / MAG (B = {problem.batch_size}: rank G > B)", SEED,
                   negative_control=True)
