"""Identities at a degenerate gradient or curvature report "not applicable" (issue 18 item 4).

Two stationary points built from dead ReLUs (every pre-activation -1): a dense softmax
classifier whose outputs are all the last bias, one example per class (the mean gradient is
0), and a convolution feeding a 1x1 convolution whose seven outputs are its bias under softmax
cross-entropy (gradient 0, G ~ 1e-16 by rounding: exactly 0 in exact arithmetic).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ngd_ref import Conv2d, layer_slices, zoo
from ngd_ref._zoo_conv import make_conv_problem
from verify._report import Status
from verify.battery import run_battery
from verify.identities import IDENTITIES
from verify.identities._common import ggn_degenerate, gradient_degenerate
from verify.strategies import build


def _dead(problem, name: str, last_bias: float):
    """`problem` with its first layer dead (W = 0, b = -1) and the last bias constant."""
    theta = np.array(problem.params, dtype=float)
    first, last = problem.layers[0], problem.layers[-1]
    slices = layer_slices(problem.layers)
    dead = np.zeros(first.weight_shape)
    dead[:, -1] = -1.0
    theta[slices[0]] = dead.reshape(-1, order="F")
    w = theta[slices[-1]].reshape(last.weight_shape, order="F").copy()
    w[:, -1] = last_bias
    theta[slices[-1]] = w.reshape(-1, order="F")
    return problem.replace(name=name, params=theta)


DENSE = _dead(build("softmax_cross_entropy", [2, 3, 3], ["relu"], 3, "mean", 0, 5),
              "degenerate-dead-relu-ce-b3", 0.0).replace(targets=np.array([0, 1, 2]))
CONV = _dead(make_conv_problem((1, 1, 8), (Conv2d(1, 1, (1, 2), (1, 1), (0, 0), "relu"),
                                           Conv2d(1, 1, (1, 1), (1, 1), (0, 0), "identity")),
                               "softmax_cross_entropy", 1, name="degenerate-conv"),
             "degenerate-dead-relu-conv-ce-b1", 0.1)
GRADIENT_IDENTITIES = {i.name for i in IDENTITIES
                       if any(h.name == "gradient not degenerate" for h in i.hypotheses)}


@pytest.mark.parametrize("problem", [DENSE, CONV], ids=["dense", "conv"])
def test_degenerate_problems_skip_instead_of_failing(problem):
    assert gradient_degenerate(problem) is not None
    results = run_battery([problem])
    bad = [r for r in results if r.status in (Status.FAIL, Status.ERROR)]
    assert not bad, [(r.check, r.message) for r in bad]
    skipped = {r.check for r in results if r.status is Status.SKIP}
    assert GRADIENT_IDENTITIES <= skipped
    assert all("not applicable: hypothesis" in r.message
               for r in results if r.status is Status.SKIP)


def test_the_conv_stationary_point_has_a_rounding_ggn():
    assert ggn_degenerate(CONV) is not None and ggn_degenerate(DENSE) is None


def test_the_hypotheses_hold_on_the_quick_zoo():
    for problem in zoo.problems(quick=True):
        assert gradient_degenerate(problem) is None and ggn_degenerate(problem) is None


def test_before_the_hypothesis_the_dense_stationary_point_failed():
    """Without the hypotheses these identities fail or raise at g = 0 (the bug it fixes)."""
    stripped = [i for i in IDENTITIES if i.name in {"gradient_descent_not_invariant",
                                                    "trust_region_step_is_descent",
                                                    "seed_step_formula_literal"}]
    results = run_battery([DENSE], identities=[dataclasses.replace(i, hypotheses=())
                                                for i in stripped])
    assert {r.status for r in results} <= {Status.FAIL, Status.ERROR} and results
