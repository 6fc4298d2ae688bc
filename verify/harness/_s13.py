"""Checks of PROTOCOL s13's deterministic capabilities (`fisher_diag` is in `_diagonals`).

* `per_example_gradients(problem)`: `(B, n)`, row b `g_b = J_b^T dL/dz(y_b)` unreduced, against
  the dense reference, tolerance `TolerancePolicy.rtol` relative to `||(|J_b|^T |dL/dz_b|)_b||`.
* `kfac_factors_separate(problem, kind)`: per layer the weight block `A_w (x) S_w` and the bias
  block `A_b (x) S_b` against `A_l` without / with only its homogeneous row and column (times
  `S_l`, PROTOCOL s4), as products (each block may split a scalar between its factors; the
  split found is reported).
* `top_eigenpairs(problem, curvature, k)`: for k with a gap after the k-th absolute value, the
  values (Weyl: a perturbation `dC` of a symmetric matrix moves each eigenvalue by at most
  `||dC||_2 <= e = rtol ||MAG(C)||_F`) in the protocol's order, and for each cluster of equal
  values the spanned subspace: by Davis-Kahan `||P - P_ref||_F <= sqrt(2) e / gap`, `gap` the
  distance from the cluster to the rest of the spectrum. The order is checked where rounding
  determines it: two `|lambda|` closer than `2 e` (each moves by up to `e`) can come out in
  either order from a correct port -- an indefinite curvature's `+a, -a` pairs are tied
  exactly, and a port's rounding (even LAPACK's, run twice on one matrix) breaks the tie
  either way -- so within each such run (`tie_groups`) the port's pairs are put in the
  reference's order (decreasing value, the protocol's tie rule) before they are compared,
  and the message says the order inside the run is not checked. Across runs, a wrong order
  still fails.
* `trace(problem, curvature)`: `tr C` within `rtol sum_i MAG(C)_ii`.
"""

from __future__ import annotations

import numpy as np

from ngd_ref.dense import kfac_factors
from verify._report import Status
from verify.harness._context import CheckContext
from verify.harness._kfac import KINDS, factor_split

__all__ = ["S13_CHECKS", "eigen_order", "gapped_ks", "tie_groups"]

CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")


def check_per_example_gradients(ctx: CheckContext) -> None:
    """`per_example_gradients(problem)` against `g_b = J_b^T dL/dz(y_b)` (PROTOCOL s13)."""
    b = ctx.policy
    ctx.begin("per_example_gradients_matches_reference")
    value = ctx.port("per_example_gradients", ctx.problem)
    ctx.compare("per_example_gradients_matches_reference", value, b.ref.per_example_gradients,
                tolerance=b.rtol, magnitude=float(np.linalg.norm(b._abs_pieces[1])),
                what="rows g_b = J_b^T dL/dz(y_b), unreduced (PROTOCOL s13; grad h = c sum_b "
                     "g_b)")
    ctx.deterministic("per_example_gradients_deterministic", value,
                      lambda: ctx.port("per_example_gradients", ctx.problem))


def check_kfac_factors_separate(ctx: CheckContext) -> None:
    """Separate weight and bias blocks, as products, for every kind (PROTOCOL s13)."""
    b = ctx.policy
    for kind in KINDS:
        check = f"kfac_factors_separate_{kind}"
        expected = kfac_factors(ctx.problem, kind)
        magnitudes = ctx.policy.kfac_magnitudes(kind)
        ctx.begin(check)
        value = ctx.port("kfac_factors_separate", ctx.problem, kind)
        try:
            layers = [tuple(tuple(block) for block in item) for item in value]
        except TypeError:
            layers = []
        if len(layers) != len(expected) or any(len(x) != 2 or any(len(p) != 2 for p in x)
                                               for x in layers):
            ctx.record(check, Status.FAIL,
                       f"expected {len(expected)} ((A_w, S_w), (A_b, S_b)) items, one per layer")
            continue
        for index, (blocks, (a, s), (a_mag, s_mag)) in enumerate(
                zip(layers, expected, magnitudes, strict=True)):
            for label, (pa, ps), ra, ma in (
                    ("weight", blocks[0], a[:-1, :-1], a_mag[:-1, :-1]),
                    ("bias", blocks[1], a[-1:, -1:], a_mag[-1:, -1:])):
                try:
                    product = np.kron(np.asarray(pa, dtype=float), np.asarray(ps, dtype=float))
                except (TypeError, ValueError):
                    product = None
                split = factor_split(pa, ra)
                ctx.compare(f"{check}_{label}", product, np.kron(ra, s), tolerance=b.rtol,
                            magnitude=float(np.linalg.norm(ma) * np.linalg.norm(s_mag)),
                            what=f"layer {index}: {label} block A (x) S, kind {kind} (PROTOCOL "
                                 f"s13; the port's split of A: {split})")


def tie_groups(sorted_abs: np.ndarray, tie: float) -> list[tuple[int, int]]:
    """`(start, stop)` runs of a decreasing `|lambda|` sequence whose neighbours are within `tie`.

    The runs are chained (each entry within `tie` of the one before), so entries of
    different runs differ by more than `tie`: with `tie = 2 e` and every eigenvalue known to
    within `e` (Weyl), the order between runs is determined and the order inside one is not.
    """
    groups, start = [], 0
    while start < len(sorted_abs):
        stop = start + 1
        while stop < len(sorted_abs) and sorted_abs[stop - 1] - sorted_abs[stop] <= tie:
            stop += 1
        groups.append((start, stop))
        start = stop
    return groups


def eigen_order(values: np.ndarray, tie: float) -> np.ndarray:
    """Indices by decreasing `|lambda|`; within each `tie_groups` run by decreasing value."""
    order = np.argsort(-np.abs(values), kind="stable")
    out: list[int] = []
    for start, stop in tie_groups(np.abs(values[order]), tie):
        out += sorted(order[start:stop], key=lambda i: -values[i])
    return np.array(out, dtype=int)


def gapped_ks(sorted_abs: np.ndarray, gap: float) -> list[int]:
    """Up to two k: the first with `|l_k| - |l_{k+1}| > gap`, and the first such k >= 4."""
    n = sorted_abs.shape[0]
    ks = []
    for least in (1, 4):
        for k in range(least, n):
            if sorted_abs[k - 1] - sorted_abs[k] > gap and k not in ks:
                ks.append(k)
                break
    return ks


def check_top_eigenpairs(ctx: CheckContext) -> None:
    """Top-k eigenvalues (ordered) and the subspaces of each cluster (PROTOCOL s13)."""
    b = ctx.policy
    for curvature in CURVATURES:
        matrix = b.matrix(curvature)
        e = b.rtol * float(np.linalg.norm(b.matrix_magnitude(curvature)))
        lam, vec = np.linalg.eigh(matrix)
        order = eigen_order(lam, 2 * e)
        lam, vec = lam[order], vec[:, order]
        sorted_abs = -np.sort(-np.abs(lam))  # `lam` is value-ordered inside each run
        groups = tie_groups(sorted_abs, 2 * e)
        for k in gapped_ks(sorted_abs, 4 * e):  # a gap > 4 e: k ends a run of `groups`
            check = f"top_eigenpairs_{curvature}"
            ctx.begin(check)
            value = ctx.port("top_eigenpairs", ctx.problem, curvature, k)
            try:
                values, vectors = value
            except (TypeError, ValueError):
                ctx.record(check, Status.FAIL, "expected a pair (values (k,), vectors (n, k))")
                continue
            values = ctx.require_shape(f"{check}_values", values, (k,))
            vectors = ctx.require_shape(f"{check}_vectors", vectors, (matrix.shape[0], k))
            if values is None or vectors is None:
                continue
            runs = [(s, t) for s, t in groups if t - s > 1 and t <= k]
            values, vectors = _in_reference_order(values, vectors, runs)
            unchecked = (f"; order inside |lambda| runs within 2e = {2 * e:.1e} not checked "
                         f"(positions {', '.join(f'{s}..{t - 1}' for s, t in runs)})"
                         if runs else "")
            ctx.compare(f"{check}_values", values, lam[:k], tolerance=b.rtol,
                        magnitude=float(np.linalg.norm(b.matrix_magnitude(curvature))),
                        what=f"k={k} eigenvalues of {curvature} of largest |lambda|, in "
                             "decreasing |lambda| (ties by value; Weyl bound, PROTOCOL s13)"
                             + unchecked)
            start = 0
            while start < k:
                stop = start + 1  # a cluster: values chained within 2e (adjacent: see above)
                while stop < k and abs(lam[stop] - lam[stop - 1]) <= 2 * e:
                    stop += 1
                others = np.delete(lam, np.arange(start, stop))
                cluster = lam[start:stop]
                gap = float(np.min(np.abs(others[:, None] - cluster[None, :]))) \
                    if others.size else np.inf
                size = stop - start
                p_ref = vec[:, start:stop] @ vec[:, start:stop].T
                p_port = vectors[:, start:stop] @ vectors[:, start:stop].T
                ctx.compare(f"{check}_vectors", p_port, p_ref,
                            tolerance=float(np.sqrt(2) * e / gap / np.sqrt(size)),
                            magnitude=float(np.sqrt(size)),
                            what=f"k={k}: the eigenspace of eigenvalues {start}..{stop - 1} "
                                 f"(projectors; Davis-Kahan, gap {gap:.2e})")
                start = stop


def _in_reference_order(values: np.ndarray, vectors: np.ndarray,
                        runs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The port's pairs with each run of undetermined order sorted by decreasing value.

    The reference orders the same runs the same way (`eigen_order`), so a correct port's
    pairs line up with it whichever way its rounding broke the ties.
    """
    order = np.arange(values.shape[0])
    for start, stop in runs:
        order[start:stop] = start + np.argsort(-values[start:stop], kind="stable")
    return values[order], vectors[:, order]


def check_trace(ctx: CheckContext) -> None:
    """`trace(problem, curvature)` for every curvature (PROTOCOL s13)."""
    b = ctx.policy
    for curvature in CURVATURES:
        check = f"trace_{curvature}"
        ctx.begin(check)
        value = ctx.port("trace", ctx.problem, curvature)
        ctx.compare(check, value, float(np.trace(b.matrix(curvature))), tolerance=b.rtol,
                    magnitude=float(np.trace(b.matrix_magnitude(curvature))),
                    what=f"tr {curvature} (PROTOCOL s13)")


S13_CHECKS = {
    "per_example_gradients": check_per_example_gradients,
    "kfac_factors_separate": check_kfac_factors_separate,
    "top_eigenpairs": check_top_eigenpairs,
    "trace": check_trace,
}
