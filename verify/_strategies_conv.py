"""Hypothesis strategy of convolutional problems (PROTOCOL s12), tiny enough for dense matrices.

Select it with `problems(conv=True)` or `conv_problems()` (the hypothesis strategy's default
draws stay dense); `generate_conv` is the same space drawn with a numpy generator, which
`verify.strategies.generate` (the `--fuzz` problems) uses for every `CONV_EVERY`-th draw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import hypothesis.strategies as st
import numpy as np

from ngd_ref import Conv2d, Layer, Loss, Problem, zoo

__all__ = ["CONV_EVERY", "build_conv", "conv_problems", "generate_conv"]

#: every CONV_EVERY-th problem of `verify.strategies.generate` (the `--fuzz` draws) is a conv net
CONV_EVERY = 4

#: Losses a conv last layer (identity activation) can feed: any output size works for them.
CONV_LAST_LOSSES = ("mse", "sigmoid_cross_entropy", "poisson", "softmax_cross_entropy")


def build_conv(input_shape: tuple[int, int, int], convs: Sequence[tuple], head: int | None,
               loss: str, batch: int, reduction: str, scale_exponent: int,
               data_seed: int) -> Problem:
    """The problem of one point: `convs` are `(c_out, kernel, stride, padding, activation)`.

    `head` is the width of a dense last layer, or None for a convolution as last layer (then
    its activation is replaced by `identity`).
    """
    layers: list = []
    channels, hw = input_shape[0], input_shape[1:]
    for index, (c_out, kernel, stride, padding, act) in enumerate(convs):
        last = head is None and index == len(convs) - 1
        conv = Conv2d(channels, c_out, kernel, stride, padding, "identity" if last else act,
                      input_hw=hw)
        layers.append(conv)
        channels, hw = c_out, conv.output_hw
    if head is not None:
        width = head
        if loss == Loss.GAUSSIAN_LOGVAR.value:
            width = 2 * max(1, head // 2)
        elif Loss(loss).has_class_labels:
            width = max(2, head)
        last_act = "softmax" if loss == Loss.NLL_PROBS.value else "identity"
        layers.append(Layer(layers[-1].output_size, width, last_act))
    name = (f"gen-conv-{'x'.join(map(str, input_shape))}-"
            + "-".join(f"c{c[0]}k{c[1][0]}{c[1][1]}s{c[2][0]}{c[2][1]}p{c[3][0]}{c[3][1]}{c[4]}"
                       for c in convs)
            + (f"-d{layers[-1].output_size}" if head is not None else "")
            + f"-{loss}-b{batch}-{reduction}-k{scale_exponent}-s{data_seed}")
    base = zoo.make_conv_problem(input_shape, layers, loss, batch, name=name, reduction=reduction,
                             seed=data_seed)
    return base.replace(params=base.params * 2.0**scale_exponent)


#: every protocol loss (the default of `conv_problems`)
_ALL_LOSSES: tuple[str, ...] = tuple(member.value for member in Loss)


def generate_conv(rng: np.random.Generator, losses: Sequence[str],
                  activations: Sequence[str] = zoo.HIDDEN_ACTIVATIONS,
                  max_batch: int = 3) -> Problem:
    """One problem of `conv_problems`' space, drawn with `rng` (deterministic per state)."""
    return _draw_conv(lambda lo, hi: int(rng.integers(lo, hi + 1)),
                      lambda options: options[int(rng.integers(len(options)))],
                      losses, activations, max_batch)


@st.composite
def _conv_problems(draw, losses: Sequence[str], activations: Sequence[str],
                   max_batch: int) -> Problem:
    return _draw_conv(lambda lo, hi: draw(st.integers(lo, hi)),
                      lambda options: draw(st.sampled_from(options)),
                      losses, activations, max_batch)


def _draw_conv(integer: Callable[[int, int], int], choose: Callable[[list], Any],
               losses: Sequence[str], activations: Sequence[str], max_batch: int) -> Problem:
    """The point of the space chosen by `integer(lo, hi)` (inclusive) and `choose(options)`."""
    shape = (integer(1, 2), integer(2, 4), integer(2, 4))
    hw: tuple[int, ...] = shape[1:]
    convs = []
    for _ in range(integer(1, 2)):
        padding = (integer(0, 1), integer(0, 1))
        kernel = tuple(integer(1, min(3, size + 2 * pad))
                       for size, pad in zip(hw, padding, strict=True))
        stride = (integer(1, 2), integer(1, 2))
        convs.append((integer(1, 2), kernel, stride, padding,
                      choose(list(activations))))
        hw = tuple((size + 2 * pad - k) // s + 1
                   for size, pad, k, s in zip(hw, padding, kernel, stride, strict=True))
    conv_last = bool(integer(0, 1))
    pool = [loss for loss in losses if loss in CONV_LAST_LOSSES] if conv_last else list(losses)
    if conv_last and Loss.SOFTMAX_CROSS_ENTROPY.value in pool and convs[-1][0] * hw[0] * hw[1] < 2:
        pool.remove(Loss.SOFTMAX_CROSS_ENTROPY.value)
    if not pool:
        conv_last, pool = False, list(losses)
    loss = choose(pool)
    head = None if conv_last else integer(1, 3)
    return build_conv(shape, convs, head, loss, integer(1, max_batch),
                      choose(["mean", "sum"]), integer(-1, 1),
                      integer(0, 2**16))


def conv_problems(*, losses: Sequence[str] = _ALL_LOSSES,
                  activations: Sequence[str] = zoo.HIDDEN_ACTIVATIONS,
                  max_batch: int = 3) -> st.SearchStrategy[Problem]:
    """A strategy of valid convolutional problems, tiny enough for dense matrices.

    1-2 channels, 2-4 pixels a side, one or two convolutions (kernel 1-3, stride 1-2, padding
    0-1), then a dense layer or none (a convolution as last layer).

    Raises:
        ValueError: for an invalid argument, naming it.
    """
    bad = [a for a in activations if a not in zoo.HIDDEN_ACTIVATIONS]
    if not activations or bad:
        raise ValueError(f"activations: expected a non-empty subset of {zoo.HIDDEN_ACTIVATIONS}, "
                         f"got {activations!r}")
    if not losses or any(loss not in {m.value for m in Loss} for loss in losses):
        raise ValueError(f"losses: expected protocol loss names, got {losses!r}")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
    return _conv_problems(tuple(losses), tuple(activations), max_batch)
