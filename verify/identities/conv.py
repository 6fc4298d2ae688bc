"""Convolutional K-FAC identities (PROTOCOL s12) on the dense reference.

For a convolution with T output positions the exact diagonal block of `F`, `G` or `EF` is the
double sum `c sum_b sum_{t,t'} abar_{b,t} abar_{b,t'}^T (x) J_{b,t}^T middle_b J_{b,t'}`
(`ngd_ref.kfac._conv.conv_block`); "B = 1 is exact" (s4) holds only for T = 1. The theorems
(proofs in `ngd_ref/kfac/_conv.py`; Grosse & Martens 2016 s3, Eschenhagen et al. 2023 s3):

* `conv_block_double_sum`: the double sum equals the exact matrices' diagonal block.
* `conv_kfac_exact_regimes`: `A_l (x) S_l` equals the block in the per-layer regimes: T = 1
  with B = 1 (both), identical patches with B = 1 (reduce), identically fed positions with
  B = 1 (reduce), a linear last convolution with mse (expand, fisher/ggn, any B).
* `conv_kfac_reduce_bias_block_exact`: reduce's bias-bias block is exact on every problem.
* negative controls: `conv_kfac_inexact` (each approximation outside its regimes, e.g. expand
  on identical patches, both on a tanh conv + tanh dense net at B = 1) and
  `conv_kfac_expand_bias_block_inexact` (expand misses the cross-position terms), each where
  the gap predicted by the double sum is detectable.
* `conv_kfac_factored_damping_conservative`: eq. 24's Loewner bound for the reduce factors
  (the expand factors are the default ones, checked by `kfac_factored_damping_conservative`).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Problem, layer_slices
from ngd_ref.dense import (
    KfacApprox,
    KfacKind,
    conv_block,
    conv_exactness_regimes,
    damped_factors,
    dense,
    factored_damping_pi,
    kfac_factors,
    kfac_magnitudes,
)
from verify._policy import tolerance_policy
from verify._report import CheckResult
from verify._tolerance import Comparison, compare, rounding_rtol
from verify.identities._registry import detectable, identity, result, separated
from verify.identities.kfac import _psd_kinds, _psd_part

__all__ = [
    "conv_block_double_sum",
    "conv_kfac_exact_regimes",
    "conv_kfac_expand_bias_block_inexact",
    "conv_kfac_factored_damping_conservative",
    "conv_kfac_inexact",
    "conv_kfac_reduce_bias_block_exact",
]

SOURCE = "PROTOCOL s12; Grosse & Martens 2016 s3; Eschenhagen et al. 2023 s3"
DAMPING_SOURCE = "Grosse ch.4 eq. 24 (seed 002), PROTOCOL s12"
#: lambda / ||A (x) S||_2 and pi / trace-norm pi of the reduce eq. 24 check (as in
#: `verify.identities.kfac`: relative, so both factors' dampings stay above rounding).
DAMPING_GRID = (1e-4, 1e-2, 1.0)
PI_GRID = (1e-2, 1.0, 1e2)


def _has_conv(problem: Problem) -> bool:
    return not problem.dense_only


def _conv_layers(problem: Problem) -> list[int]:
    return [i for i, layer in enumerate(problem.layers) if layer.is_convolution]


def _exact(problem: Problem, kind: KfacKind, index: int) -> np.ndarray:
    sl = layer_slices(problem.layers)[index]
    return dense(problem).matrix(kind.curvature)[sl, sl]


def _scale(problem: Problem, kind: KfacKind, index: int, approx: KfacApprox) -> float:
    """MAG of both sides: the exact block's and the K-FAC product's magnitudes."""
    sl = layer_slices(problem.layers)[index]
    policy = tolerance_policy(problem, "float64")
    a, s = kfac_magnitudes(problem, kind, approx=approx)[index]
    return max(float(np.linalg.norm(policy.matrix_magnitude(kind.curvature.value)[sl, sl])),
               float(np.linalg.norm(np.kron(a, s))))


def _kfac_comparison(problem: Problem, kind: KfacKind, index: int, approx: KfacApprox,
                     rows: slice | None = None) -> Comparison:
    a, s = kfac_factors(problem, kind, approx=approx)[index]
    product, exact = np.kron(a, s), _exact(problem, kind, index)
    if rows is not None:
        product, exact = product[rows, rows], exact[rows, rows]
    return compare(product, exact, tolerance=tolerance_policy(problem, "float64").rtol,
                   magnitude=_scale(problem, kind, index, approx))


def _bias(problem: Problem, index: int) -> slice:
    """The bias entries of layer `index`'s block: the last `c_out` of `vec(Wbar)`."""
    rows, cols = problem.layers[index].weight_shape
    return slice(rows * (cols - 1), rows * cols)


@identity("conv_block_double_sum", source=SOURCE, applies=_has_conv,
          statement="a convolution's diagonal block of F, G, EF = c sum_b sum_{t,t'} "
                    "abar_t abar_t'^T (x) J_t^T M_b J_t'")
def conv_block_double_sum(problem: Problem) -> list[CheckResult]:
    """The block formula of s12 against the dense matrices (two independent routes)."""
    out = []
    rtol = tolerance_policy(problem, "float64").rtol
    for index in _conv_layers(problem):
        for kind in KfacKind:
            cmp = compare(conv_block(problem, index, kind), _exact(problem, kind, index),
                          tolerance=rtol,
                          magnitude=_scale(problem, kind, index, KfacApprox.EXPAND))
            out.append(result(f"conv_block_double_sum[layer{index},{kind.value}]", problem, cmp,
                              "double sum over positions = exact block", SOURCE))
    return out


def _regime_cases(problem: Problem):
    for index in _conv_layers(problem):
        for kind in KfacKind:
            for regime in conv_exactness_regimes(problem, index, kind):
                for approx in regime.approximations:
                    yield index, kind, approx, regime


@identity("conv_kfac_exact_regimes", source=SOURCE,
          applies=lambda p: _has_conv(p) and any(True for _ in _regime_cases(p)),
          statement="A_l (x) S_l = exact block: T = 1 and B = 1 (both); identical patches or "
                    "identically fed positions, B = 1 (reduce); linear last conv + mse (expand)")
def conv_kfac_exact_regimes(problem: Problem) -> list[CheckResult]:
    """Each regime of `ngd_ref.kfac._conv`, per convolution, kind and approximation."""
    return [result(f"conv_kfac_exact_regimes[layer{index},{kind.value},{approx.value}]",
                   problem, _kfac_comparison(problem, kind, index, approx),
                   f"{approx.value}: A (x) S = exact block ({regime.value})", SOURCE)
            for index, kind, approx, regime in _regime_cases(problem)]


@identity("conv_kfac_reduce_bias_block_exact", source=SOURCE, applies=_has_conv,
          statement="reduce: the bias-bias block of A_l (x) S_l is exact (A_bb = 1, "
                    "S_l = c sum_b Jb^T M_b Jb)")
def conv_kfac_reduce_bias_block_exact(problem: Problem) -> list[CheckResult]:
    """Every patch ends in 1, so reduce's mean patch does too: its bias block is exact."""
    return [result(f"conv_kfac_reduce_bias_block_exact[layer{index},{kind.value}]", problem,
                   _kfac_comparison(problem, kind, index, KfacApprox.REDUCE,
                                    _bias(problem, index)),
                   "reduce bias block = exact bias block", SOURCE)
            for index in _conv_layers(problem) for kind in KfacKind]


def _predicted(problem: Problem, kind: KfacKind, index: int, approx: KfacApprox,
               rows: slice | None = None, *, cross_only: bool = False) -> float:
    """The gap predicted from the double sum (not from the dense matrices), relative."""
    block = conv_block(problem, index, kind, cross=not cross_only)
    if cross_only:
        gap = block[rows, rows]
    else:
        a, s = kfac_factors(problem, kind, approx=approx)[index]
        gap = (block - np.kron(a, s)) if rows is None else (block - np.kron(a, s))[rows, rows]
    scale = _scale(problem, kind, index, approx)
    return float(np.linalg.norm(gap)) / scale if scale > 0 else 0.0  # a zero block: no gap


def _inexact_cases(problem: Problem):
    rtol = tolerance_policy(problem, "float64").rtol
    for index in _conv_layers(problem):
        for kind in KfacKind:
            exact = {a for r in conv_exactness_regimes(problem, index, kind)
                     for a in r.approximations}
            for approx in KfacApprox:
                if approx not in exact and detectable(_predicted(problem, kind, index, approx),
                                                      rtol):
                    yield index, kind, approx


@identity("conv_kfac_inexact", source=SOURCE, negative_control=True,
          applies=lambda p: _has_conv(p) and any(True for _ in _inexact_cases(p)),
          statement="outside its regimes each approximation differs from the exact block "
                    "(where the double sum predicts a detectable gap)")
def conv_kfac_inexact(problem: Problem) -> list[CheckResult]:
    """E.g. expand on identical patches (off by about T), both for tanh conv + tanh dense, B = 1."""
    return [separated(f"conv_kfac_inexact[layer{index},{kind.value},{approx.value}]", problem,
                      _kfac_comparison(problem, kind, index, approx),
                      f"{approx.value} != exact block (no regime holds)", SOURCE)
            for index, kind, approx in _inexact_cases(problem)]


def _expand_bias_cases(problem: Problem):
    rtol = tolerance_policy(problem, "float64").rtol
    for index in _conv_layers(problem):
        for kind in KfacKind:
            if detectable(_predicted(problem, kind, index, KfacApprox.EXPAND,
                                     _bias(problem, index), cross_only=True), rtol):
                yield index, kind


@identity("conv_kfac_expand_bias_block_inexact", source=SOURCE, negative_control=True,
          applies=lambda p: _has_conv(p) and any(True for _ in _expand_bias_cases(p)),
          statement="expand's bias block misses c sum_b sum_{t != t'} J_t^T M_b J_t' "
                    "(where those cross-position terms are detectable)")
def conv_kfac_expand_bias_block_inexact(problem: Problem) -> list[CheckResult]:
    """The control of `conv_kfac_reduce_bias_block_exact`: the bias block is not trivially exact."""
    return [separated(f"conv_kfac_expand_bias_block_inexact[layer{index},{kind.value}]",
                      problem, _kfac_comparison(problem, kind, index, KfacApprox.EXPAND,
                                                _bias(problem, index)),
                      "expand bias block != exact bias block", SOURCE)
            for index, kind in _expand_bias_cases(problem)]


@identity("conv_kfac_factored_damping_conservative", source=DAMPING_SOURCE, applies=_has_conv,
          statement="reduce factors: (A + pi sqrt(l) I) (x) (S + sqrt(l)/pi I) >= A (x) S + l I")
def conv_kfac_factored_damping_conservative(problem: Problem) -> list[CheckResult]:
    """Eq. 24's Loewner bound on the convolutions' reduce factors (PSD kinds only).

    The smallest eigenvalue of the difference must be `>= -tol ||M_f||_2`, tol the rounding
    tolerance of a `dim`-long product (as `kfac_factored_damping_conservative`).
    """
    out = []
    for kind in _psd_kinds(problem):
        worst = 0.0
        for index in _conv_layers(problem):
            a, s = (_psd_part(f) for f in
                    kfac_factors(problem, kind, approx=KfacApprox.REDUCE)[index])
            dim = a.shape[0] * s.shape[0]
            norm = float(np.linalg.norm(a, 2) * np.linalg.norm(s, 2)) or 1.0
            pi0 = float(factored_damping_pi(a, s))
            for fraction in DAMPING_GRID:
                for ratio in PI_GRID:
                    damping = fraction * norm
                    m_f = np.kron(*damped_factors(a, s, damping, pi=ratio * pi0))
                    gap = float(np.linalg.eigvalsh(m_f - np.kron(a, s)
                                                   - damping * np.eye(dim))[0])
                    tol = rounding_rtol("float64", length=dim, depth=2)
                    worst = max(worst, max(-gap, 0.0) / (float(np.linalg.norm(m_f, 2)) * tol))
        cmp = Comparison(worst, 1.0, 1.0, worst, None, worst <= 1.0)
        out.append(result(f"conv_kfac_factored_damping_conservative[{kind.value},reduce]",
                          problem, cmp, "M_factored >= A (x) S + l I (error = worst negative "
                          "eigenvalue / (||M_f|| tol))", DAMPING_SOURCE))
    return out
