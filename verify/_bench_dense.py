"""Dense-reference timing: how long explicit H, G, F take, and how that grows with size.

The target of issue 2: H, G and F for a network with about 1000 parameters and 16 examples in
under 2 s on a 2-core machine. The cost model is O(B n sum_l n_l^2) for the Jacobians and the
forward-over-backward pass plus O(B C n^2) for the matrices, i.e. about quadratic in n at
fixed depth; the section reports the fitted exponent so a regression shows.

Issue 17's conv figure: H, G and F of `conv_bench_problem()` (two 3x3 padded convolutions on a
6x6 image and a dense softmax head, 1058 parameters, B = 8), goal 2 s on 2 cores.
"""

from __future__ import annotations

import time

import numpy as np

from ngd_ref import Conv2d, Layer, Problem, zoo
from ngd_ref.dense import DenseCurvature

__all__ = ["conv_bench_problem", "dense_section"]

_SIZES = ((6, 16, 8), (12, 24, 8), (24, 32, 8), (40, 48, 8))  # ~250, ~500, ~1050, ~2400 parameters


def conv_bench_problem() -> Problem:
    """The conv net of the conv figure: 1058 parameters, B = 8 (PROTOCOL s12)."""
    return zoo.make_conv_problem((1, 6, 6), (Conv2d(1, 4, (3, 3), (1, 1), (1, 1), "tanh"),
                                             Conv2d(4, 4, (3, 3), (1, 1), (1, 1), "tanh"),
                                             Layer(144, 6, "identity")),
                                 "softmax_cross_entropy", 8, name="bench-conv-1x6x6-b8")


def _time_problem(problem: Problem, repeats: int) -> tuple[int, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ref = DenseCurvature(problem)
        ref.hessian, ref.ggn, ref.fisher  # noqa: B018 -- cached properties computed for timing
        times.append(time.perf_counter() - start)
    return problem.n_params, float(np.median(times))


def _time_matrices(sizes: tuple[int, ...], batch: int, repeats: int) -> tuple[int, float]:
    problem = zoo.make_problem(sizes, ("tanh", "identity"), "softmax_cross_entropy", batch)
    return _time_problem(problem, repeats)


def dense_section(quick: bool = False) -> dict:
    """Seconds to build H, G and F per size (float64, B = 16), the growth exponent, the conv.

    The conv figure is `conv_bench_problem` (B = 8).
    """
    repeats = 1 if quick else 3
    rows = [_time_matrices(sizes, 16, repeats) for sizes in _SIZES]
    n, seconds = np.array([r[0] for r in rows], float), np.array([r[1] for r in rows])
    exponent = float(np.polyfit(np.log(n), np.log(seconds), 1)[0])
    at_1000 = next(s for (p, s) in rows if p > 900)
    return {
        "dense_hgf_seconds_n1000_b16": at_1000,
        "dense_hgf_seconds_by_n": {str(int(p)): s for p, s in rows},
        "dense_hgf_growth_exponent": exponent,
        "dense_hgf_target_seconds": 2.0,
        "dense_hgf_seconds_conv_n1058_b8": _time_problem(conv_bench_problem(), repeats)[1],
    }
