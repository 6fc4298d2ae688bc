"""Checks of K-FAC (PROTOCOL s4; Grosse ch. 4 s5, seed 002).

On a convolutional problem (PROTOCOL s12) every call passes `approx=` ("expand" and
"reduce" each, check names suffixed `_expand`/`_reduce`) and `kfac_factors_default_approx` /
`kfac_solve_default_approx` check that omitting it means "expand"; on dense-only problems
the calls are section 4's, without the keyword (both approximations are s4's there).

* `kfac_factors(problem, kind)` for every kind (`fisher`, `ggn`, `empirical`): a list of one
  `(A_l, S_l)` pair per layer with the right shapes, the product `A_l (x) S_l` equal to the
  exact reference's (`ngd_ref.kfac._dense.kfac_factors`; `A_l = mean_b abar abar^T`,
  `S_l = c sum_b M_b`), tolerance `TolerancePolicy.rtol` relative to the product of the factors'
  magnitudes (`TolerancePolicy.kfac_magnitudes`), both factors symmetric. Only the product is the
  approximation (PROTOCOL s12, last point), so a port's scalar split `(k A_l, S_l / k)` passes
  and is reported (`factor_split`). Swapped factors, a missing bias row, a wrong batch
  constant or the empirical statistics in place of the true ones all fail here.
* `kfac_solve(problem, v, damping, method, kind)` for both methods (`eigen`, eq. 23;
  `factored` with pi, eq. 24) and every kind, against `ngd_ref.kfac._dense.kfac_solve`, with
  `solve_rtol` and the largest per-layer condition number of the damped Kronecker matrix;
  `kfac_solve_default_kind`: the same call with `kind` omitted must be kind `fisher`
  (PROTOCOL s5's default; issue 14).

A port that declines one variant (`NotImplementedError` for a kind or an `approx`, e.g. a
library without K-FAC-reduce) gets that check recorded as `skip` and the other variants still
checked.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from ngd_ref.dense import factored_damping_pi, kfac_factors, kfac_solve
from verify._report import Status
from verify.harness._context import CheckContext
from verify.harness._faults import NotClaimed

__all__ = ["APPROXES", "KINDS", "METHODS", "ApproxKeyword", "approx_keywords", "check_kfac_factors",
           "check_kfac_solve", "factor_split"]

KINDS = ("fisher", "ggn", "empirical")
METHODS = ("eigen", "factored")
_SOLVE_CASES = tuple((kind, method, 0.1) for kind in KINDS for method in METHODS) + (
    ("fisher", "eigen", 1.0),
    ("fisher", "factored", 1.0),
    (None, "eigen", 0.1),  # kind omitted: PROTOCOL s5's default, "fisher"
)


#: PROTOCOL s12's K-FAC approximations of a convolution ("expand" is the default)
APPROXES = ("expand", "reduce")


class ApproxKeyword(TypedDict, total=False):
    """The keyword arguments a K-FAC call is checked with: s12's `approx`, or none."""

    approx: str


def approx_keywords(problem) -> tuple[ApproxKeyword, ...]:
    """The `approx=` keywords to check K-FAC with: none on dense-only problems, both on conv."""
    return ({},) if problem.dense_only else tuple(ApproxKeyword(approx=a) for a in APPROXES)


def _suffix(keyword: ApproxKeyword) -> str:
    return f"_{keyword['approx']}" if keyword else ""


def _pairs(ctx: CheckContext, check: str, value, expected: list) -> list | None:
    try:
        pairs = [tuple(pair) for pair in value]
    except TypeError:
        ctx.record(
            check, Status.FAIL, f"expected a list of (A, S) pairs, got {type(value).__name__}"
        )
        return None
    if len(pairs) != len(expected) or any(len(p) != 2 for p in pairs):
        ctx.record(
            check,
            Status.FAIL,
            f"expected {len(expected)} (A, S) pairs (one per layer), "
            f"got {len(pairs)} items of lengths {[len(p) for p in pairs]}",
        )
        return None
    return pairs


def factor_split(actual, desired: np.ndarray) -> str:
    """Describe the scalar `k` of `actual ~ k desired` (least squares), e.g. `k = 1`."""
    try:
        a = np.asarray(actual, dtype=np.float64)
        norm2 = float(np.sum(desired * desired))
        k = float(np.sum(a * desired)) / norm2 if norm2 > 0 else float("nan")
    except (TypeError, ValueError):
        return "k undetermined"
    return f"k = {k:.6g}" if np.isfinite(k) else "k undetermined"


def check_kfac_factors(ctx: CheckContext) -> None:
    """Every kind's products `A_l (x) S_l` against the exact reference; the split reported."""
    b = ctx.policy
    cases = [(kind, keyword, False) for kind in KINDS for keyword in approx_keywords(ctx.problem)]
    if not ctx.problem.dense_only:  # approx omitted: PROTOCOL s12's default, "expand"
        cases.append(("fisher", {"approx": "expand"}, True))
    for kind, keyword, omitted in cases:
        check = ("kfac_factors_default_approx" if omitted
                 else f"kfac_factors_{kind}{_suffix(keyword)}")
        expected = kfac_factors(ctx.problem, kind, **keyword)
        magnitudes = ctx.policy.kfac_magnitudes(kind, **keyword)
        ctx.begin(check)
        try:
            value = ctx.port("kfac_factors", ctx.problem, kind, **({} if omitted else keyword))
        except NotClaimed as exc:  # a declined variant (a kind, an approx): the rest still run
            ctx.record(check, Status.SKIP, f"port declines: {exc}")
            continue
        pairs = _pairs(ctx, check, value, expected)
        if pairs is None:
            continue
        for index, ((a, s), (a_ref, s_ref), (a_mag, s_mag)) in enumerate(
            zip(pairs, expected, magnitudes, strict=True)
        ):
            try:
                product = np.kron(np.asarray(a, dtype=np.float64), np.asarray(s, dtype=np.float64))
            except (TypeError, ValueError):
                product = None
            comparison = ctx.compare(
                f"{check}_product",
                product,
                np.kron(a_ref, s_ref),
                tolerance=b.rtol,
                magnitude=float(np.linalg.norm(a_mag) * np.linalg.norm(s_mag)),
                what=f"layer {index}: A_l (x) S_l, A_l = mean_b abar abar^T, S_l = c sum_b M_b, "
                f"kind {kind}{_described(keyword, omitted)} (PROTOCOL s4; only the product "
                f"counts, s12: the port's split "
                f"A = k A_ref with {factor_split(a, a_ref)})",
            )
            if comparison.reason:
                continue
            for label, actual, mag in (("A", a, a_mag), ("S", s, s_mag)):
                ctx.symmetric(
                    f"{check}_{label}_symmetric",
                    actual,
                    tolerance=b.rtol,
                    magnitude=float(np.linalg.norm(mag)) * _split_scale(actual, mag),
                )


def _described(keyword: ApproxKeyword, omitted: bool) -> str:
    if not keyword:
        return ""
    return f", approx {keyword['approx']}" + (" (omitted: the default)" if omitted else "")


def _omitted_approx(problem) -> str:
    return "" if problem.dense_only else ", approx omitted (PROTOCOL s12's default, expand)"


def _split_scale(actual, magnitude: np.ndarray) -> float:
    """`||actual|| / ||MAG||` at least 1: a factor's symmetry in the units of the port's split."""
    norm = float(np.linalg.norm(np.asarray(actual, dtype=np.float64)))
    return max(norm / max(float(np.linalg.norm(magnitude)), np.finfo(float).tiny), 1.0)


def _condition(factors, magnitudes, damping: float, method: str) -> float:
    """Largest per-layer condition of the damped Kronecker matrix (units of `verify._policy`)."""
    worst = 1.0
    for (a, s), (a_mag, s_mag) in zip(factors, magnitudes, strict=True):
        la = np.clip(np.linalg.eigvalsh(a), 0.0, None)
        ls = np.clip(np.linalg.eigvalsh(s), 0.0, None)
        if method == "eigen":
            products = np.outer(ls, la)
            kappa = (products.max() + damping) / (products.min() + damping)
        else:
            pi = float(factored_damping_pi(a, s))
            root = np.sqrt(damping)
            kappa = ((la.max() + pi * root) / (la.min() + pi * root)) * (
                (ls.max() + root / pi) / (ls.min() + root / pi)
            )
        units = max(
            float(np.linalg.norm(a_mag)) / max(float(np.linalg.norm(a)), 1e-300),
            float(np.linalg.norm(s_mag)) / max(float(np.linalg.norm(s)), 1e-300),
        )
        worst = max(worst, kappa * max(units, 1.0))
    return worst


def check_kfac_solve(ctx: CheckContext) -> None:
    """Damped K-FAC solves for every kind, both methods, two dampings."""
    b = ctx.policy
    (v,) = ctx.probe(ctx.problem.n_params)
    cases = [(passed, method, damping, keyword) for passed, method, damping in _SOLVE_CASES
             for keyword in (approx_keywords(ctx.problem) if passed else ({},))]
    for passed, method, damping, keyword in cases:
        kind = passed or "fisher"
        check = f"kfac_solve_{method}_{kind}{_suffix(keyword)}" if passed else \
            "kfac_solve_default_kind"
        factors = kfac_factors(ctx.problem, kind, **keyword)
        if method == "factored" and any(np.trace(s) <= 0 for _, s in factors):
            ctx.record(check, Status.SKIP, "pi is undefined: tr(S_l) = 0 for this problem")
            continue
        condition = _condition(factors, ctx.policy.kfac_magnitudes(kind, **keyword), damping,
                               method)
        tolerance = b.solve_rtol(condition)
        if not b.determined(tolerance):  # as shampoo_direction: a correct port may return NaN
            ctx.record(check, Status.SKIP,
                       f"not checked: the K-FAC {method} damped system is singular to "
                       f"{ctx.dtype} precision (condition {condition:.1e}, relative tolerance "
                       f"{tolerance:.2e} >= 1)")
            continue
        ctx.begin(check)
        try:
            value = ctx.port("kfac_solve", ctx.problem, v, damping, method,
                             *([kind] if passed else []), **keyword)
        except NotClaimed as exc:  # as in check_kfac_factors
            ctx.record(check, Status.SKIP, f"port declines: {exc}")
            continue
        ctx.compare(
            check,
            value,
            kfac_solve(ctx.problem, v, damping, method, kind, **keyword),
            tolerance=tolerance,
            what=f"K-FAC {method} damped solve, kind {kind}{'' if passed else ' (omitted)'}"
            f"{_described(keyword, False) if passed else _omitted_approx(ctx.problem)}, "
            f"lambda {damping:g} "
            f"(Grosse eq. {23 if method == 'eigen' else 24}; condition {condition:.1e})",
        )
