"""Convolutional problems (PROTOCOL s12), tiny enough for dense n x n matrices.

Kept apart from the default zoo (`problems()`, `--quick`, the fuzz draws) until every consumer
handles convolutions; `ngd_ref.zoo.conv_problems()` lists them. Data are dyadic rationals, as
in the rest of the zoo, so they are exact in float64, float32 and mpmath.

Coverage: kernel sizes 1 to the whole input, strides 1 and 2, zero padding, 1 to 3 channels,
one or two convolutions, a convolution as last layer (then z is its output flattened
channel-major), and the K-FAC exactness regimes of s12 (one example, identical patches, a
kernel covering the whole input, a linear last convolution with mse, identically fed
positions).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import cast

import numpy as np

from ngd_ref._problem import Problem, bind_layers
from ngd_ref._spec import Conv2d, Layer

__all__ = ["conv_problems", "make_conv_problem"]


def _dyadic(rng: np.random.Generator, shape, scale: float, denominator: int = 64) -> np.ndarray:
    return np.round(rng.normal(scale=scale, size=shape) * denominator) / denominator


def _targets(rng: np.random.Generator, loss: str, rows: int, c: int) -> np.ndarray:
    if loss in ("softmax_cross_entropy", "nll_probs"):
        return rng.integers(0, c, rows)
    if loss == "sigmoid_cross_entropy":
        return rng.integers(0, 2, (rows, c)).astype(float)
    if loss == "poisson":
        return rng.integers(0, 4, (rows, c)).astype(float)
    if loss == "gaussian_logvar":
        return _dyadic(rng, (rows, c // 2), 1.0, 16)
    return _dyadic(rng, (rows, c), 1.0, 16)


def make_conv_problem(input_shape: tuple[int, int, int], layers: Sequence[Conv2d | Layer | tuple],
                      loss: str, batch: int, *, name: str, reduction: str = "mean",
                      seed: int = 0, identical_inputs: bool = False,
                      constant_inputs: bool = False) -> Problem:
    """A deterministic convolutional problem with dyadic-rational data.

    Args:
        input_shape: `(C, H, W)` of one image.
        layers: `Conv2d(c_in, c_out, kernel, stride, padding, activation)` entries first, then
            dense `Layer`s (the first dense layer's `n_in` is the flattened conv output).
        loss: a loss name of PROTOCOL section 2.
        batch: number of examples B.
        name: the problem's name.
        reduction: `"mean"` or `"sum"`.
        seed: seed of the data.
        identical_inputs: repeat one image (and target) B times.
        constant_inputs: every pixel of a channel equal, with no padding this makes all
            patches of the first convolution identical.
    """
    label = f"{name}-{seed}"
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    bound = bind_layers(layers, input_shape)
    params = np.concatenate([_dyadic(rng, layer.n_params, 1.0 / np.sqrt(layer.weight_shape[1]))
                             for layer in bound])
    rows = 1 if identical_inputs else batch
    if constant_inputs:
        channel = _dyadic(rng, (rows, input_shape[0], 1), 1.0, 16)
        inputs = np.repeat(channel, input_shape[1] * input_shape[2], axis=2).reshape(rows, -1)
    else:
        inputs = _dyadic(rng, (rows, int(np.prod(input_shape))), 1.0, 16)
    targets = _targets(rng, loss, rows, bound[-1].output_size)
    if identical_inputs:
        inputs, targets = np.repeat(inputs, batch, 0), np.repeat(targets, batch, 0)
    # `Problem.layers` is annotated with the dense `Layer` that most of the code reads; a
    # problem's layers may start with s12's `Conv2d` (validated by `Problem` itself)
    dense_typed = cast("tuple[Layer, ...]", bound)
    return Problem(name, dense_typed, loss, params, inputs, targets, reduction, input_shape)


@functools.lru_cache(maxsize=1)
def conv_problems() -> tuple[Problem, ...]:
    """The convolutional problems, in a fixed order with unique names (n <= ~150)."""
    c = Conv2d
    out = [
        # two convolutions (padding, stride 2) and a dense softmax head
        make_conv_problem((1, 4, 4), (c(1, 2, (2, 2), (1, 1), (1, 1), "tanh"),
                                      c(2, 2, (3, 3), (2, 2), (0, 0), "relu"),
                                      Layer(8, 3, "identity")),
                          "softmax_cross_entropy", 2, name="conv-1x4x4-2c-pad-stride-ce-b2"),
        # one convolution, two channels in, dense tanh hidden, mse
        make_conv_problem((2, 3, 3), (c(2, 2, (2, 2), (1, 1), (0, 0), "tanh"),
                                      Layer(8, 3, "tanh"), Layer(3, 2, "identity")),
                          "mse", 3, name="conv-2x3x3-tanh-dense-tanh-mse-b3"),
        # a tanh conv + tanh dense net at B = 1: neither expand nor reduce is exact
        make_conv_problem((1, 3, 3), (c(1, 2, (2, 2), (1, 1), (0, 0), "tanh"),
                                      Layer(8, 2, "tanh")),
                          "mse", 1, name="conv-1x3x3-tanh-dense-tanh-mse-b1"),
        # a linear last convolution with mse: expand is exact (no cross-position terms)
        make_conv_problem((1, 4, 3), (c(1, 2, (2, 2), (1, 1), (1, 0), "identity"),),
                          "mse", 3, name="conv-last-linear-1x4x3-pad-mse-b3"),
        # a convolution as last layer with a nonlinear activation and sigmoid cross-entropy
        make_conv_problem((2, 3, 3), (c(2, 3, (2, 2), (1, 1), (0, 0), "identity"),
                                      c(3, 1, (2, 2), (1, 1), (0, 0), "sigmoid")),
                          "sigmoid_cross_entropy", 2, name="conv-2x3x3-2c-last-sigmoid-bce-b2",
                          reduction="sum"),
        # the kernel covers the whole input (T = 1): expand = reduce = s4
        make_conv_problem((2, 2, 2), (c(2, 3, (2, 2), (1, 1), (0, 0), "tanh"),
                                      Layer(3, 3, "identity")),
                          "softmax_cross_entropy", 1, name="conv-full-kernel-2x2x2-ce-b1"),
        # identical patches (constant image, no padding), B = 1: reduce exact, expand off
        make_conv_problem((1, 3, 3), (c(1, 2, (2, 2), (1, 1), (0, 0), "tanh"),
                                      Layer(8, 2, "identity")),
                          "mse", 1, name="conv-same-patches-1x3x3-mse-b1", constant_inputs=True),
        # 1x1 kernel, stride 2, poisson
        make_conv_problem((3, 3, 3), (c(3, 2, (1, 1), (2, 2), (0, 0), "softplus"),
                                      Layer(8, 2, "identity")),
                          "poisson", 2, name="conv-1x1-stride2-3x3x3-poisson-b2"),
    ]
    out.append(_identically_fed())
    names = [p.name for p in out]
    assert len(set(names)) == len(names), "conv zoo names must be unique"
    return tuple(out)


def _identically_fed() -> Problem:
    """Every position feeds the output identically, B = 1.

    A linear conv, then a dense layer whose weight on a channel is the same at every position,
    so `J_{b,t}` does not depend on t.
    """
    base = make_conv_problem((1, 3, 3), (Conv2d(1, 2, (2, 2), (1, 1), (0, 0), "identity"),
                                         Layer(8, 2, "tanh")),
                             "mse", 1, name="conv-identically-fed-1x3x3-mse-b1")
    conv, dense_layer = base.layers
    assert isinstance(conv, Conv2d)  # the first layer of `base`
    wbar = base.params[conv.n_params:].reshape(dense_layer.weight_shape, order="F").copy()
    t = conv.n_positions
    for channel in range(conv.c_out):
        wbar[:, channel * t:(channel + 1) * t] = wbar[:, channel * t:channel * t + 1]
    params = np.concatenate([base.params[:conv.n_params], wbar.reshape(-1, order="F")])
    return base.replace(params=params)
