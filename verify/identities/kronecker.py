"""Kronecker-product algebra in the canonical layout (Grosse ch. 4 s5.1, eqs. (16)-(21), seed 002).

The factors are drawn from the problem: `X = Wbar_1` (the first layer's homogeneous weights,
`n_out x (n_in + 1)`), and symmetric positive definite `A` (`(n_in+1)^2`) and `S`
(`n_out^2`) built as `M M^T / k + I` from seeded Gaussian `M` (condition numbers of a few
units, so inverses stay well conditioned). `vec` stacks columns (PROTOCOL s1), i.e.
`reshape(-1, order="F")`. Eq. (20) is checked on the problem's own per-example gradients:
the layer-l block of `g_b` is `vec(Ds abar^T) = abar (x) Ds` with `Ds = dL/ds_l`, read off
the bias columns of `J_b` (Grosse s5.2).

The algebra rows above test the Kronecker identities themselves; `kron_kfac_layout` tests
the project's own K-FAC code with them: the block-diagonal `kfac_matrix` acts on layer l's
block as `vec(S_l V A_l)` (eq. (16), `A_l` symmetric) and is zero across layers, and the
factored solve (eq. 24) `kfac_solve_factors` equals `vec(S_d^{-1} V A_d^{-1})` (eqs. (16),
(19)) with `(A_d, S_d) = damped_factors(A_l, S_l, lambda)` -- matrix forms that share no code
with the reference's `np.kron` or its eigenbasis solve.

Products are exact to `rounding_rtol(length=k, depth=1)` relative to the product of the
norms; inverses and eigendecompositions add the condition number (`solve_rtol`).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Problem, layer_slices, unflatten
from ngd_ref.dense import damped_factors, kfac_factors, kfac_matrix, kfac_solve_factors
from verify._tolerance import compare, rounding_rtol
from verify.identities._common import magnitude, problem_rng, reference, solve_tolerance
from verify.identities._registry import identity, result, separated

__all__ = [
    "kron_eigendecomposition",
    "kron_inverse",
    "kron_kfac_layout",
    "kron_mixed_product",
    "kron_order_matters",
    "kron_transpose",
    "kron_vec",
    "kron_vec_outer",
    "vec",
]

SOURCE = "Grosse ch.4 s5.1 (seed 002)"


def vec(matrix: np.ndarray) -> np.ndarray:
    """Stack the columns (PROTOCOL s1's vec; Grosse Fig. 2)."""
    return np.asarray(matrix).reshape(-1, order="F")


def _factors(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(S, X, A)`: SPD `S` (n_out^2), the first layer's `Wbar` (n_out x (n_in+1)), SPD `A`."""
    rng = problem_rng(problem, "kronecker")
    weight, bias = unflatten(problem.layers, problem.params)[0]
    x = np.column_stack([weight, bias])

    def spd(k: int) -> np.ndarray:
        m = rng.standard_normal((k, k))
        return m @ m.T / k + np.eye(k)

    return spd(x.shape[0]), x, spd(x.shape[1])


def _tol(*dims: int) -> float:
    return rounding_rtol("float64", length=max(dims), depth=1)


@identity("kron_vec", source=f"{SOURCE} eq. (16)", statement="vec(S X A) = (A^T (x) S) vec(X)")
def kron_vec(problem: Problem):
    """Grosse eq. (16): `vec(A X B) = (B^T (x) A) vec(X)`, here with `A = S`, `B = A`."""
    s, x, a = _factors(problem)
    left, right = vec(s @ x @ a), np.kron(a.T, s) @ vec(x)
    mag = float(np.linalg.norm(s) * np.linalg.norm(x) * np.linalg.norm(a))
    cmp = compare(right, left, tolerance=_tol(x.size), magnitude=mag)
    return result("kron_vec", problem, cmp, "vec(S X A) = (A^T (x) S) vec(X)", f"{SOURCE} eq. (16)")


@identity("kron_order_matters", source=f"{SOURCE} eq. (16)",
          statement="(S (x) A^T) vec(X) != vec(S X A): the factor order matters",
          applies=lambda p: p.layers[0].weight_shape[0] >= 2, negative_control=True)
def kron_order_matters(problem: Problem):
    """Negative control of eq. (16): the swapped order `S (x) A^T` (row-major thinking) is wrong.

    Hypothesis: both factors at least 2 x 2 (with a 1 x 1 factor the two orders coincide).
    """
    s, x, a = _factors(problem)
    mag = float(np.linalg.norm(s) * np.linalg.norm(x) * np.linalg.norm(a))
    cmp = compare(np.kron(s, a.T) @ vec(x), vec(s @ x @ a), tolerance=_tol(x.size), magnitude=mag)
    return separated("kron_order_matters", problem, cmp, "(S (x) A^T) vec(X) != vec(S X A)",
                     f"{SOURCE} eq. (16)")


@identity("kron_mixed_product", source=f"{SOURCE} eq. (17)",
          statement="(A (x) S)(A' (x) S') = A A' (x) S S'")
def kron_mixed_product(problem: Problem):
    """Grosse eq. (17), with second factors `A' = A^2` and `S' = S^T`."""
    s, _, a = _factors(problem)
    a2, s2 = a @ a, s.T
    left = np.kron(a, s) @ np.kron(a2, s2)
    right = np.kron(a @ a2, s @ s2)
    mag = float(np.linalg.norm(a) * np.linalg.norm(a2) * np.linalg.norm(s) * np.linalg.norm(s2))
    cmp = compare(left, right, tolerance=_tol(a.size * s.size), magnitude=mag)
    return result("kron_mixed_product", problem, cmp, "mixed product", f"{SOURCE} eq. (17)")


@identity("kron_transpose", source=f"{SOURCE} eq. (18)", statement="(A (x) X)^T = A^T (x) X^T")
def kron_transpose(problem: Problem):
    """Grosse eq. (18), with a non-square factor `X` so the transpose is not trivial."""
    _, x, a = _factors(problem)
    cmp = compare(np.kron(a, x).T, np.kron(a.T, x.T), tolerance=_tol(1), magnitude=0.0)
    return result("kron_transpose", problem, cmp, "transpose", f"{SOURCE} eq. (18)")


@identity("kron_inverse", source=f"{SOURCE} eq. (19)",
          statement="(A (x) S)^{-1} = A^{-1} (x) S^{-1}")
def kron_inverse(problem: Problem):
    """Grosse eq. (19) for SPD factors; tolerance scaled by `kappa(A) kappa(S)`."""
    s, _, a = _factors(problem)
    condition = float(np.linalg.cond(a) * np.linalg.cond(s))
    left = np.linalg.inv(np.kron(a, s))
    right = np.kron(np.linalg.inv(a), np.linalg.inv(s))
    tol = solve_tolerance(problem, condition, length=a.shape[0] * s.shape[0], depth=1)
    cmp = compare(left, right, tolerance=tol)
    return result("kron_inverse", problem, cmp, "inverse", f"{SOURCE} eq. (19)")


@identity("kron_vec_outer", source=f"{SOURCE} eq. (20), s5.2",
          statement="per-example gradient block of layer l = vec(Ds abar^T) = abar (x) Ds",
          applies=lambda p: p.dense_only)  # a convolution's block sums abar_t (x) Ds_t over t
def kron_vec_outer(problem: Problem):
    """Grosse eq. (20) on the problem's gradients: `g_b[layer l] = abar_{l-1} (x) dL/ds_l`."""
    ref = reference(problem)
    out = []
    for index, (layer, sl) in enumerate(zip(problem.layers, layer_slices(problem.layers),
                                            strict=True)):
        bias_columns = slice(sl.stop - layer.n_out, sl.stop)
        kron = np.stack([
            np.kron(trace.abar[index], trace.jacobian[:, bias_columns].T @ r)
            for trace, r in zip(ref.traces, ref.loss_grads, strict=True)])
        grads = ref.per_example_gradients[:, sl]
        mag = magnitude(grads) + float(np.sum(np.linalg.norm(ref.jacobians, axis=(1, 2))
                                              * np.linalg.norm(ref.loss_grads, axis=1)))
        cmp = compare(kron, grads, tolerance=_tol(layer.n_in + 1, problem.output_dim),
                      magnitude=mag)
        out.append(result("kron_vec_outer", problem, cmp,
                          f"layer {index + 1}: g_b = abar (x) dL/ds", f"{SOURCE} eq. (20)"))
    return out


@identity("kron_eigendecomposition", source=f"{SOURCE} eq. (21)",
          statement="A (x) S = (Q_A (x) Q_S)(D_A (x) D_S)(Q_A (x) Q_S)^T; eigenvalues are products")
def kron_eigendecomposition(problem: Problem):
    """Grosse eq. (21): spectra multiply and eigenvectors are Kronecker products."""
    s, _, a = _factors(problem)
    da, qa = np.linalg.eigh(a)
    ds, qs = np.linalg.eigh(s)
    q = np.kron(qa, qs)
    rebuilt = q @ np.diag(np.kron(da, ds)) @ q.T
    k = a.shape[0] * s.shape[0]
    tol = _tol(k) * max(np.linalg.cond(a), np.linalg.cond(s))
    mag = float(np.linalg.norm(a) * np.linalg.norm(s))
    products = np.sort(np.kron(da, ds))
    return [
        result("kron_eigendecomposition", problem,
               compare(rebuilt, np.kron(a, s), tolerance=tol, magnitude=mag),
               "A (x) S rebuilt from the factors' eigenpairs", f"{SOURCE} eq. (21)"),
        result("kron_eigendecomposition", problem,
               compare(products, np.linalg.eigvalsh(np.kron(a, s)), tolerance=tol, magnitude=mag),
               "eigenvalues of A (x) S = all products", f"{SOURCE} eq. (21)"),
    ]


#: lambda / (||A_l||_2 ||S_l||_2) of `kron_kfac_layout`'s factored solve: the damped factors'
#: condition numbers are then at most `1 + ||A|| / (pi sqrt(lambda))` and its S analogue.
LAYOUT_DAMPING = 2.0**-4


@identity("kron_kfac_layout", source=f"{SOURCE} eqs. (16), (19); s5.2, eq. (24)",
          statement="the project's K-FAC matrix acts on layer l as vec(S_l V A_l), and its "
                    "factored solve as vec(S_d^{-1} V A_d^{-1})")
def kron_kfac_layout(problem: Problem):
    """Eq. (16) and (19) on `kfac_factors`, `kfac_matrix`, `kfac_solve_factors` (Fisher kind).

    `V` is a seeded Gaussian `n_out x (n_in + 1)` matrix placed in layer l's block; the
    damping is relative (`LAYOUT_DAMPING`), and a layer with a zero factor (dead units) takes
    `lambda = LAYOUT_DAMPING`.
    """
    factors = kfac_factors(problem, "fisher")
    matrix = kfac_matrix(problem, "fisher")
    rng = problem_rng(problem, "kron-layout")
    out = []
    for index, ((a, s), sl) in enumerate(zip(factors, layer_slices(problem.layers),
                                             strict=True)):
        big_v = rng.standard_normal((s.shape[0], a.shape[0]))
        v = np.zeros(problem.n_params)
        v[sl] = vec(big_v)
        desired = np.zeros(problem.n_params)
        desired[sl] = vec(s @ big_v @ a)
        mag = float(np.linalg.norm(s) * np.linalg.norm(big_v) * np.linalg.norm(a))
        out.append(result("kron_kfac_layout", problem,
                          compare(matrix @ v, desired, tolerance=_tol(problem.n_params),
                                  magnitude=mag),
                          f"layer {index + 1}: kfac_matrix vec(V) = vec(S V A)",
                          f"{SOURCE} eq. (16)"))
        scale = float(np.linalg.norm(a, 2) * np.linalg.norm(s, 2))
        lam = LAYOUT_DAMPING * (scale if scale > 0 else 1.0)
        a_d, s_d = damped_factors(a, s, lam)
        desired = np.zeros(problem.n_params)
        desired[sl] = vec(np.linalg.solve(s_d, big_v) @ np.linalg.inv(a_d))
        solved = kfac_solve_factors(factors, v, lam, "factored")
        condition = float(np.linalg.cond(a_d) * np.linalg.cond(s_d))
        tol = solve_tolerance(problem, condition, length=a.shape[0] * s.shape[0], depth=2)
        out.append(result("kron_kfac_layout", problem, compare(solved, desired, tolerance=tol),
                          f"layer {index + 1}: factored solve = vec(S_d^-1 V A_d^-1) "
                          f"(kappa {condition:.3g})", f"{SOURCE} eq. (19)"))
    return out
