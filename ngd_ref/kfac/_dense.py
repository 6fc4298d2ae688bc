"""Dense exact K-FAC (Grosse ch. 4 s5, seed 002; PROTOCOL s4), on any `Backend`.

For layer l with homogeneous input `abar = [a_{l-1}; 1]` and pre-activation `s_l`, the
layer's block of `F`, `G` or `EF` is (Grosse s5.2, with eq. 16 and eq. 20)

    C_ll = c sum_b (abar_b abar_b^T) (x) M_b,

where `M_b = (dz/ds_l)^T F_R,b (dz/ds_l)` (true Fisher), `(dz/ds_l)^T H_L,b (dz/ds_l)` (GGN) or
`Ds_b Ds_b^T` with `Ds_b = dL_b/ds_l = (dz/ds_l)^T dL_b/dz` (empirical Fisher). K-FAC treats
activations and pseudo-gradients as independent and replaces the sum of Kronecker products by
a Kronecker product of sums (Grosse s5.2, "push the expectation inward"):

    A_l = (1/B) sum_b abar_b abar_b^T             (always a batch mean)
    S_l = (c B) (1/B) sum_b M_b = c sum_b M_b     (so c is carried by S)
    C_ll ~ A_l (x) S_l.

The expectations over `y ~ r(.|z)` are exact (the output Fisher `F_R` comes from exact
quadrature in `ngd_ref._losses`), never sampled; the sampled estimator of Grosse s5.8 lives in
the JAX twin and is tested statistically against these factors.

Exactness (each a check in the identity battery): the approximation is an equality
    * with one example (B = 1): the sum has one term;
    * for deep linear networks with `mse`: `dz/ds_l` is a product of weight matrices and
      `H_L = F_R = I`, so `M_b` does not depend on b (fisher and ggn kinds);
    * when all examples are identical (inputs, and targets for the kinds that read them).
Everywhere else it is an approximation; `kfac_approximation` measures how far.

Convolutions (PROTOCOL s12): with T output positions, patches `abar_{b,t}` and
`J_{b,t} = dz/ds_{l,t}`, the exact block is `c sum_b sum_{t,t'} abar_{b,t} abar_{b,t'}^T (x)
J_{b,t}^T middle_b J_{b,t'}`; `approx="expand"` (KFC, Grosse & Martens 2016; K-FAC-expand of
Eschenhagen et al. 2023) takes `A_l = (1/B) sum_b sum_t abar_{b,t} abar_{b,t}^T`,
`S_l = c (1/T) sum_b sum_t J_{b,t}^T middle_b J_{b,t}`, and `approx="reduce"` takes
`A_l = (1/B) sum_b abar_b abar_b^T` with `abar_b = (1/T) sum_t abar_{b,t}` and
`S_l = c sum_b Jb^T middle_b Jb`, `Jb = sum_t J_{b,t}`. A dense layer is `T = 1`, where both
are the formulas above. "B = 1 is exact" holds for `T = 1` layers only; the convolutions'
regimes are `conv_exactness_regimes`.

Damped solves of `v` (Grosse s5.3), block by block with `V = unvec(v_l)` (n_out x (n_in+1)):
    * eigen (eq. 23): `(A (x) S + lambda I)^{-1} v = vec(Q_S [(Q_S^T V Q_A) / (d_S d_A^T +
      lambda)] Q_A^T)`;
    * factored (eq. 24): `vec((S + sqrt(lambda)/pi I)^{-1} V (A + pi sqrt(lambda) I)^{-1})`
      with `pi = sqrt((tr A / dim A) / (tr S / dim S))` (Martens & Grosse 2015 s6.3).
Eq. 24's theorem: for every `pi > 0` the factored matrix dominates `A (x) S + lambda I` in the
Loewner order, so the factored step is the more conservative one.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import numpy as np

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._layout import layer_slices
from ngd_ref._problem import Problem
from ngd_ref._spec import Conv2d, Loss
from ngd_ref._validation import as_member, check_damping
from ngd_ref.curvature._dense import Curvature, DenseCurvature, dense

__all__ = [
    "DampingMethod",
    "KfacApprox",
    "ExactnessRegime",
    "KfacApproximation",
    "KfacKind",
    "damped_factors",
    "ema_update",
    "exact_diagonal_blocks",
    "exactness_regimes",
    "factored_damping_pi",
    "kfac_approximation",
    "kfac_factors",
    "kfac_factors_of",
    "kfac_magnitudes",
    "kfac_magnitudes_of",
    "kfac_trace_rounding_of",
    "kfac_matrix",
    "kfac_solve",
    "kfac_solve_factors",
]

Factors = list[tuple[np.ndarray, np.ndarray]]


class KfacKind(str, enum.Enum):
    """Which curvature the factor `S_l` approximates (PROTOCOL s4)."""

    FISHER = "fisher"
    GGN = "ggn"
    EMPIRICAL = "empirical"

    @property
    def curvature(self) -> Curvature:
        """The dense matrix whose diagonal blocks this kind approximates."""
        return {KfacKind.FISHER: Curvature.FISHER, KfacKind.GGN: Curvature.GGN,
                KfacKind.EMPIRICAL: Curvature.EMPIRICAL_FISHER}[self]


class DampingMethod(str, enum.Enum):
    """How damping enters a K-FAC solve: exactly (eq. 23) or factored (eq. 24)."""

    EIGEN = "eigen"
    FACTORED = "factored"


class KfacApprox(str, enum.Enum):
    """How a convolution's positions enter its factors (PROTOCOL s12); same for T = 1."""

    EXPAND = "expand"
    REDUCE = "reduce"


class ExactnessRegime(str, enum.Enum):
    """Hypotheses under which `A_l (x) S_l` equals the exact diagonal block."""

    ONE_EXAMPLE = "one_example"
    DEEP_LINEAR_MSE = "deep_linear_mse"
    IDENTICAL_EXAMPLES = "identical_examples"


# ---------------------------------------------------------------------------------------------
# Factors
# ---------------------------------------------------------------------------------------------
def _middles(ref: DenseCurvature, kind: KfacKind) -> list[np.ndarray]:
    """Per-example output-space middle `(C, C)`: F_R, H_L, or dL/dz dL/dz^T."""
    if kind is KfacKind.FISHER:
        return list(ref.output_fishers)
    if kind is KfacKind.GGN:
        return list(ref.loss_hessians)
    return [np.multiply.outer(r, r) for r in ref.loss_grads]


def _pieces(ref: DenseCurvature, kind: KfacKind, *, absolute: bool = False,
            approx: KfacApprox = KfacApprox.EXPAND,
            middles: np.ndarray | None = None,
            ) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Per layer, per example: the terms `x_b` of `A_l` and `M_b` of `S_l`.

    Dense layer: `x_b = abar_b abar_b^T` and `M_b = (dz/ds_l)^T middle_b (dz/ds_l)`, with
    `dz/ds_l` read from the bias columns of the Jacobian (in the canonical layout layer l's
    block of `J_b` is `abar^T (x) dz/ds_l` and the last entry of `abar` is 1). Convolution
    (module docstring): expand `x_b = sum_t abar_t abar_t^T`, `M_b = (1/T) sum_t J_t^T middle
    J_t`; reduce `x_b = abar_b abar_b^T` with the mean patch, `M_b = Jb^T middle Jb`. With
    `absolute`, the magnitude of the computation: absolute values of `abar` and the middles,
    and the chain's `MAG(dz/ds_l)` (`DenseCurvature.preactivation_jacobian_magnitudes`, which
    does not cancel where `dz/ds_l` does).
    """
    problem = ref.problem
    fix = (lambda x: np.abs(ref.backend.to_float64(x))) if absolute else (lambda x: x)
    per_example = ([fix(m) for m in _middles(ref, kind)] if middles is None
                   else list(np.asarray(middles)))
    chain = ref.preactivation_jacobian_magnitudes if absolute else ref.preactivation_jacobians
    xs, blocks = [], []
    with ref.backend.precision():
        for index, (layer, sl) in enumerate(zip(problem.layers, layer_slices(problem.layers),
                                                strict=True)):
            if not layer.is_convolution:
                dzds = (np.stack([jacs[index] for jacs in chain]) if absolute
                        else ref.jacobians[:, :, sl.stop - layer.n_out: sl.stop])
                xs.append([np.multiply.outer(x, x)
                           for x in (fix(t.abar[index]) for t in ref.traces)])
                blocks.append([d.T @ m @ d for d, m in zip(dzds, per_example, strict=True)])
                continue
            x_l, m_l = [], []
            for trace, jacs, middle in zip(ref.traces, chain, per_example, strict=True):
                cols = fix(trace.abar[index])                           # (d + 1, T)
                per_t = jacs[index].reshape(-1, layer.c_out, layer.n_positions)
                x, m = _conv_terms(cols, per_t, middle, layer, approx, ref.backend)
                x_l.append(x)
                m_l.append(m)
            xs.append(x_l)
            blocks.append(m_l)
    return xs, blocks


def _conv_terms(cols: np.ndarray, per_t: np.ndarray, middle: np.ndarray, layer: Conv2d,
                approx: KfacApprox, bk: Backend) -> tuple[np.ndarray, np.ndarray]:
    """One example's `(x_b, M_b)` of a convolution; `per_t[:, :, t] = J_{b,t}` `(C, c_out)`."""
    positions = bk.scalar(layer.n_positions)
    if approx is KfacApprox.EXPAND:
        stacked = per_t.transpose(2, 0, 1)                              # (T, C, c_out)
        m = sum(j.T @ middle @ j for j in stacked) / positions
        return cols @ cols.T, m
    mean = cols.sum(axis=1) / positions
    total = per_t.sum(axis=2)                                           # Jb, (C, c_out)
    return np.multiply.outer(mean, mean), total.T @ middle @ total


def _assemble(xs: list[list[np.ndarray]], blocks: list[list[np.ndarray]], c,
              bk: Backend) -> Factors:
    """`A_l = (1/B) sum_b x_b`, `S_l = c sum_b M_b`."""
    factors = []
    with bk.precision():
        for x_l, m_l in zip(xs, blocks, strict=True):
            a = sum(x_l) / bk.scalar(len(x_l))
            factors.append((a, c * sum(m_l)))
    return factors


def kfac_factors(problem: Problem, kind: KfacKind | str, *, backend: Backend = FLOAT64,
                 approx: KfacApprox | str = "expand") -> Factors:
    """Compute the Kronecker factors `[(A_l, S_l), ...]` of PROTOCOL s4, exact expectations.

    `A_l = (1/B) sum_b abar_b abar_b^T` is `(n_in + 1) x (n_in + 1)` and `S_l = c sum_b M_b` is
    `n_out x n_out` (Grosse s5.2; `M_b` per kind as in the module docstring). With one example,
    `A_l (x) S_l` is the exact diagonal block of `F`, `G` or `EF` (`exact_diagonal_blocks`).

    Args:
        problem: a validated `Problem`.
        kind: `"fisher"`, `"ggn"` or `"empirical"` (a `KfacKind`).
        backend: `FLOAT64` or `mp_backend(dps)`; the factors are arrays of that backend.
        approx: `"expand"` or `"reduce"` for convolutions (PROTOCOL s12); dense layers
            (T = 1) have the same factors under both.

    Returns:
        One `(A_l, S_l)` pair per layer.

    Example:
        >>> from ngd_ref import zoo
        >>> [(a.shape, s.shape) for a, s in kfac_factors(zoo.get("mlp-3x4x3-tanh-mse-b1"), "ggn")]
        [((4, 4), (4, 4)), ((5, 5), (3, 3))]
    """
    return kfac_factors_of(dense(problem, backend), kind, approx=approx)


def kfac_factors_of(ref: DenseCurvature, kind: KfacKind | str, *,
                    approx: KfacApprox | str = "expand") -> Factors:
    """`kfac_factors` of an existing `DenseCurvature` (any parameters, any backend).

    The optimizer trajectories (`ngd_ref.trajectory`) need the factors at parameters that are
    not a problem's float64 `params` (mpmath iterates); this is the same computation.
    """
    pieces = _pieces(ref, as_member(KfacKind, kind, "kind"),
                     approx=as_member(KfacApprox, approx, "approx"))
    return _assemble(*pieces, ref.c, ref.backend)


def kfac_magnitudes(problem: Problem, kind: KfacKind | str, *,
                    approx: KfacApprox | str = "expand",
                    middle_magnitudes: np.ndarray | None = None) -> Factors:
    """Compute `kfac_factors` on absolute values: the `MAG` of the tolerance policy (float64).

    `A_l` from `|abar|`, `S_l = c sum_b MAG(dz/ds_l)^T MAG(middle_b) MAG(dz/ds_l)`, with the
    chain rule's `MAG(dz/ds_l)` (`preactivation_jacobian_magnitudes`). Rounding errors of
    a correct port are proportional to these (see `verify._tolerance`), not to the possibly
    cancelling factors themselves.

    Args:
        problem: the problem.
        kind: `fisher`, `ggn` or `empirical`.
        approx: `expand` or `reduce` for convolutions (PROTOCOL s12).
        middle_magnitudes: `(B, C, C)` entrywise magnitudes of the output-space middles
            (the tolerance policy's, which know where a closed form cancels); default
            `|middle_b|`.
    """
    return kfac_magnitudes_of(dense(problem), kind, approx=approx,
                              middle_magnitudes=middle_magnitudes)


def kfac_magnitudes_of(ref: DenseCurvature, kind: KfacKind | str, *,
                       approx: KfacApprox | str = "expand",
                       middle_magnitudes: np.ndarray | None = None) -> Factors:
    """`kfac_magnitudes` of an existing `DenseCurvature` (any parameters, any backend; float64).

    The optimizer trajectories need the factors' magnitudes at their iterates (eq. 24's pi
    is determined only where a factor's trace is more than its rounding).
    """
    pieces = _pieces(ref, as_member(KfacKind, kind, "kind"), absolute=True,
                     approx=as_member(KfacApprox, approx, "approx"), middles=middle_magnitudes)
    return _assemble(*pieces, float(ref.c), FLOAT64)


def kfac_trace_rounding_of(ref: DenseCurvature, kind: KfacKind | str, *,
                           approx: KfacApprox | str = "expand") -> list[float]:
    """Per layer, the first-order rounding bound of `tr(S_l)` in units of `rtol` (float64).

    `S_l = c sum_b sum_t w_t J_t^T M_b J_t` (`J_t = dz/ds_{l,t}`; a dense layer has one
    term, a convolution's expand `w_t = 1/T` per position, reduce one term with `J = sum_t
    J_t`). With the port's `J + dJ`, `M + dM`, `|dJ| <= rtol MAG(J)` (the chain rule on absolute
    values) and `|dM| <= rtol |M|`, `d tr(J^T M J) = 2 tr(dJ^T M J) + tr(J^T dM J)` is at most
    `rtol (2 ||MAG(J)||_F ||M J||_F + tr(|J|^T |M| |J|))` (Cauchy-Schwarz): first order in
    the Jacobian's cancellation, where `tr(MAG(S))` would square it. The bound is `>= 3 tr(S_l)`.
    Eq. 24's pi is determined only where it is below `tr(S_l) / rtol`.
    """
    kind, approx = as_member(KfacKind, kind, "kind"), as_member(KfacApprox, approx, "approx")
    f64 = ref.backend.to_float64
    middles = [f64(m) for m in _middles(ref, kind)]
    out = []
    for index, layer in enumerate(ref.problem.layers):
        total = 0.0
        for jacs, mags, middle in zip(ref.preactivation_jacobians,
                                      ref.preactivation_jacobian_magnitudes, middles,
                                      strict=True):
            per_t = f64(jacs[index]).reshape(-1, layer.weight_shape[0], layer.n_positions)
            mag_t = mags[index].reshape(per_t.shape)
            if approx is KfacApprox.REDUCE:
                per_t, mag_t = per_t.sum(axis=2, keepdims=True), mag_t.sum(axis=2, keepdims=True)
            weight = 1.0 / per_t.shape[2]
            for t in range(per_t.shape[2]):
                j, mag = per_t[:, :, t], mag_t[:, :, t]
                total += weight * float(2 * np.linalg.norm(mag) * np.linalg.norm(middle @ j)
                                        + np.trace(np.abs(j).T @ np.abs(middle) @ np.abs(j)))
        out.append(float(ref.c) * total)
    return out


def _block_diagonal(blocks: Sequence[np.ndarray], bk: Backend) -> np.ndarray:
    n = sum(b.shape[0] for b in blocks)
    out = bk.zeros((n, n))
    start = 0
    for block in blocks:
        stop = start + block.shape[0]
        out[start:stop, start:stop] = block
        start = stop
    return out


def kfac_matrix(problem: Problem, kind: KfacKind | str, *, backend: Backend = FLOAT64,
                approx: KfacApprox | str = "expand") -> np.ndarray:
    """Form the block-diagonal K-FAC matrix `diag(A_1 (x) S_1, ..., A_L (x) S_L)`, `(n, n)`.

    In the canonical layout (column-major `vec([W b])`), `A_l (x) S_l` acts on `vec(V)` as
    `vec(S_l V A_l)` (Grosse eq. 16, A symmetric).
    """
    factors = kfac_factors(problem, kind, backend=backend, approx=approx)
    with backend.precision():
        return _block_diagonal([np.kron(a, s) for a, s in factors], backend)


def exact_diagonal_blocks(problem: Problem, kind: KfacKind | str,
                          backend: Backend = FLOAT64) -> list[np.ndarray]:
    """Return the diagonal blocks `C_ll` of the exact `F`, `G` or `EF` that K-FAC approximates."""
    matrix = dense(problem, backend).matrix(as_member(KfacKind, kind, "kind").curvature)
    return [matrix[sl, sl] for sl in layer_slices(problem.layers)]


def exactness_regimes(problem: Problem, kind: KfacKind | str) -> tuple[ExactnessRegime, ...]:
    """List the exactness regimes (module docstring) whose hypotheses `problem` satisfies.

    * `ONE_EXAMPLE`: `B = 1`.
    * `DEEP_LINEAR_MSE`: every activation is `identity`, the loss is `mse`, the kind is
      `fisher` or `ggn` (the empirical Fisher's `Ds_b` carries the residual, which varies).
    * `IDENTICAL_EXAMPLES`: `B > 1` and all inputs equal; for `ggn` and `empirical` (which read
      the targets through `H_L` or `dL/dz`) all targets equal too.

    All three need every layer to have one position (T = 1: dense layers, or convolutions
    whose kernel covers the padded input); a convolution with T > 1 has cross-position terms
    even with one example (PROTOCOL s12; its regimes are `conv_exactness_regimes`).
    """
    kind = as_member(KfacKind, kind, "kind")
    regimes = []
    if any(layer.n_positions > 1 for layer in problem.layers):
        return ()
    if problem.batch_size == 1:
        regimes.append(ExactnessRegime.ONE_EXAMPLE)
    linear = all(layer.phi.linear for layer in problem.layers)
    if linear and Loss(problem.loss).spec.residual and kind is not KfacKind.EMPIRICAL:
        regimes.append(ExactnessRegime.DEEP_LINEAR_MSE)
    same_inputs = bool(np.all(problem.inputs == problem.inputs[:1]))
    same_targets = bool(np.all(problem.targets == problem.targets[:1]))
    if problem.batch_size > 1 and same_inputs and (kind is KfacKind.FISHER or same_targets):
        regimes.append(ExactnessRegime.IDENTICAL_EXAMPLES)
    return tuple(regimes)


# ---------------------------------------------------------------------------------------------
# Damping and solves
# ---------------------------------------------------------------------------------------------
def factored_damping_pi(a: np.ndarray, s: np.ndarray, *, backend: Backend = FLOAT64):
    """`pi = sqrt((tr(A)/dim A) / (tr(S)/dim S))` (PROTOCOL s4; Martens & Grosse 2015 s6.3).

    The trace-norm choice that balances the two added terms of eq. 24. When a trace is not
    positive (`tr(S) = 0` for a layer that receives no curvature, e.g. dead ReLUs or a softmax
    shift the next layer cannot see; a rounding-negative trace is zero) the ratio is undefined;
    `pi = 1` is returned, which keeps eq. 24's guarantee since it holds for every `pi > 0`.
    """
    with backend.precision():
        tr_a, tr_s = np.trace(a), np.trace(s)
        if not (tr_s > 0 and tr_a > 0):
            return backend.scalar(1)
        ratio = (tr_a / a.shape[0]) / (tr_s / s.shape[0])
        return backend.sqrt(ratio)


def damped_factors(a: np.ndarray, s: np.ndarray, damping: float, *, pi=None,
                   backend: Backend = FLOAT64) -> tuple[np.ndarray, np.ndarray]:
    """Factored Tikhonov damping (Grosse eq. 24): `(A + pi sqrt(l) I, S + sqrt(l)/pi I)`.

    Args:
        a: one layer's `A_l`.
        s: one layer's `S_l`.
        damping: `lambda > 0`.
        pi: the split; `factored_damping_pi(a, s)` when None.
        backend: the factors' backend.
    """
    check_damping(damping, positive=True)
    with backend.precision():
        pi = factored_damping_pi(a, s, backend=backend) if pi is None else backend.scalar(pi)
        root = backend.sqrt(backend.scalar(damping))
        return (a + pi * root * backend.eye(a.shape[0]), s + root / pi * backend.eye(s.shape[0]))


def _solve_columns(m: np.ndarray, rhs: np.ndarray, bk: Backend) -> np.ndarray:
    """`m^{-1} rhs` column by column (the mpmath backend solves one vector at a time)."""
    return np.stack([bk.solve(m, rhs[:, j]) for j in range(rhs.shape[1])], axis=1)


def _solve_layer(a: np.ndarray, s: np.ndarray, v: np.ndarray, damping: float,
                 method: DampingMethod, bk: Backend) -> np.ndarray:
    """One block: `v` is `vec(V)` with `V` of shape `(dim S, dim A)` (column-major)."""
    big_v = v.reshape((s.shape[0], a.shape[0]), order="F")
    if method is DampingMethod.EIGEN:
        d_a, q_a = bk.eigh(a)
        d_s, q_s = bk.eigh(s)
        inner = (q_s.T @ big_v @ q_a) / (np.multiply.outer(d_s, d_a) + bk.scalar(damping))
        out = q_s @ inner @ q_a.T
    else:
        a_d, s_d = damped_factors(a, s, damping, backend=bk)
        out = _solve_columns(a_d, _solve_columns(s_d, big_v, bk).T, bk).T
    return out.reshape(-1, order="F")


def kfac_solve_factors(factors: Sequence[tuple[np.ndarray, np.ndarray]], v: np.ndarray,
                       damping: float, method: DampingMethod | str, *,
                       backend: Backend = FLOAT64) -> np.ndarray:
    """Block-diagonal damped K-FAC solve from given factors (e.g. moving averages).

    Per layer: `(A_l (x) S_l + lambda I)^{-1} v_l` by eq. 23 (`"eigen"`) or
    `((A_l + pi sqrt(l) I) (x) (S_l + sqrt(l)/pi I))^{-1} v_l` by eq. 24 (`"factored"`).

    Raises:
        ValueError: for a bad `damping`, `method`, or a `v` whose length is not `n`.
    """
    method = as_member(DampingMethod, method, "method")
    check_damping(damping, positive=True)  # the caller's scalar is kept: mpmath stays exact
    n = sum(a.shape[0] * s.shape[0] for a, s in factors)
    with backend.precision():
        v = backend.asarray(v)
        if v.shape != (n,):
            raise ValueError(f"v: expected shape ({n},) (the number of parameters), got {v.shape}")
        out, start = [], 0
        for a, s in factors:
            stop = start + a.shape[0] * s.shape[0]
            out.append(_solve_layer(a, s, v[start:stop], damping, method, backend))
            start = stop
        return np.concatenate(out)


def kfac_solve(problem: Problem, v: np.ndarray, damping: float, method: DampingMethod | str,
               kind: KfacKind | str = "fisher", *, backend: Backend = FLOAT64,
               approx: KfacApprox | str = "expand") -> np.ndarray:
    """`kfac_solve_factors(kfac_factors(problem, kind), v, damping, method)` (PROTOCOL s4/s5).

    Example:
        >>> from ngd_ref import zoo
        >>> p = zoo.get("mlp-3x4x3-tanh-mse-b1")
        >>> kfac_solve(p, np.ones(p.n_params), 0.1, "eigen").shape
        (31,)
    """
    factors = kfac_factors(problem, kind, backend=backend, approx=approx)
    return kfac_solve_factors(factors, v, damping, method, backend=backend)


def ema_update(average: Sequence[tuple[np.ndarray, np.ndarray]],
               new: Sequence[tuple[np.ndarray, np.ndarray]], decay: float) -> Factors:
    """Exponential moving average of the statistics (Grosse eq. 25).

    `A <- eta A + (1 - eta) A_batch`, `S <- eta S + (1 - eta) S_batch` with `eta = decay`
    (`A_batch = Y^T Y / B` is exactly `kfac_factors`' `A_l`; the default 0.95 of Grosse s5.4
    averages over about `1/(1 - eta)` batches).

    Raises:
        ValueError: if `decay` is not in [0, 1) or the factor lists do not match.
    """
    eta = float(decay)
    if not 0.0 <= eta < 1.0:
        raise ValueError(f"decay: expected 0 <= decay < 1, got {decay!r}")
    if len(average) != len(new):
        raise ValueError(f"new: expected {len(average)} layers of factors, got {len(new)}")
    out = []
    for (a_old, s_old), (a_new, s_new) in zip(average, new, strict=True):
        if a_old.shape != a_new.shape or s_old.shape != s_new.shape:
            raise ValueError(f"new: factor shapes {a_new.shape}, {s_new.shape} do not match the "
                             f"average's {a_old.shape}, {s_old.shape}")
        out.append((eta * a_old + (1 - eta) * a_new, eta * s_old + (1 - eta) * s_new))
    return out


# ---------------------------------------------------------------------------------------------
# How far from exact
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KfacApproximation:
    """How far block-diagonal K-FAC is from the exact curvature (float64).

    Attributes:
        kind: the K-FAC kind.
        block_errors: per layer `||A_l (x) S_l - C_ll||_F / ||C_ll||_F` (0 in the exact regimes).
        block_diagonal_error: the same over all diagonal blocks together.
        full_error: `||K - C||_F / ||C||_F`, including the off-diagonal blocks K drops.
        kfac_spectrum: eigenvalues of `K`, descending.
        exact_spectrum: eigenvalues of `C`, descending.
    """

    kind: KfacKind
    block_errors: tuple[float, ...]
    block_diagonal_error: float
    full_error: float
    kfac_spectrum: np.ndarray
    exact_spectrum: np.ndarray


def _relative(diff: np.ndarray, ref: np.ndarray) -> float:
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(diff)) / norm if norm else float(np.linalg.norm(diff))


def kfac_approximation(problem: Problem, kind: KfacKind | str) -> KfacApproximation:
    """Relative Frobenius errors and spectra of K-FAC against the exact `F`, `G` or `EF`."""
    kind = as_member(KfacKind, kind, "kind")
    k = kfac_matrix(problem, kind)
    c = dense(problem).matrix(kind.curvature)
    slices = layer_slices(problem.layers)
    block_errors = tuple(_relative(k[sl, sl] - c[sl, sl], c[sl, sl]) for sl in slices)
    c_blocks = _block_diagonal([c[sl, sl] for sl in slices], FLOAT64)
    return KfacApproximation(
        kind=kind,
        block_errors=block_errors,
        block_diagonal_error=_relative(k - c_blocks, c_blocks),
        full_error=_relative(k - c, c),
        kfac_spectrum=np.linalg.eigvalsh(k)[::-1],
        exact_spectrum=np.linalg.eigvalsh(c)[::-1],
    )
