"""The built-in problem zoo: named, deterministic, tiny problems covering the protocol.

Every parameter, input and real-valued target is a dyadic rational (a multiple of 1/64 or
1/16), so each value is exact in float64 *and* in float32: a float32 port starts from exactly
the same problem, and the mpmath certification starts from exactly the stored values.

Coverage (`problems()`): every loss x every hidden activation; mean and sum reductions; one
example and several; deep linear networks; ReLU networks; identical inputs; `softmax` last
layer with `nll_probs` (and its split twin with `softmax_cross_entropy`); heteroscedastic
`gaussian_logvar`. `problems(quick=True)` is a subset that still covers every loss, both
reductions, both batch regimes and every last-layer kind, and (issue 14) Poisson targets
above 1 (so `log y!` is not 0), two problems sharing every shape (`deep-linear-2x3x3x2-mse-b4`
and `deep-curved-2x3x3x2-mse-b4`: a cache keyed on shapes is visible) and a deep net with a
curved activation at every hidden layer (`phi'' != 0` below the top hidden layer, so a
Hessian that drops the deep second-order terms is visible). Both end with convolutional
problems (PROTOCOL s12, `conv_problems()`): the zoo with all of them, the quick zoo with
`QUICK_CONV` (two convolutions with padding and stride under a softmax head, a convolution as
last layer with sigmoid cross-entropy, a 1x1 strided convolution with Poisson outputs).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from ngd_ref._problem import Problem
from ngd_ref._spec import LOSSES, Layer
from ngd_ref._zoo_conv import conv_problems, make_conv_problem

__all__ = ["HIDDEN_ACTIVATIONS", "LOSSES", "QUICK_CONV", "conv_problems", "get",
           "make_conv_problem", "make_problem", "names", "problems"]

HIDDEN_ACTIVATIONS = ("identity", "tanh", "sigmoid", "relu", "softplus")


def _dyadic(rng: np.random.Generator, shape, scale: float, denominator: int = 64) -> np.ndarray:
    return np.round(rng.normal(scale=scale, size=shape) * denominator) / denominator


def make_problem(
    sizes: tuple[int, ...],
    activations: tuple[str, ...],
    loss: str,
    batch: int,
    *,
    reduction: str = "mean",
    seed: int = 0,
    identical_inputs: bool = False,
    name: str | None = None,
) -> Problem:
    """A deterministic problem with dyadic-rational data.

    Args:
        sizes: layer widths `(n_0, n_1, ..., n_L)`; for `gaussian_logvar` `n_L` counts both
            halves (mean and log-variance).
        activations: one per layer.
        loss: a loss name of PROTOCOL section 2.
        batch: number of examples B.
        reduction: `"mean"` or `"sum"`.
        seed: seed of the data; the same arguments always give the same problem.
        identical_inputs: repeat one input (and target) B times (a K-FAC exactness regime).
        name: override the generated name.
    """
    layers = tuple(Layer(sizes[i], sizes[i + 1], act) for i, act in enumerate(activations))
    label = f"{loss}-{reduction}-{batch}-{sizes}-{activations}-{seed}-{identical_inputs}"
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    params = np.concatenate(
        [_dyadic(rng, (layer.n_in + 1) * layer.n_out, 1.0 / np.sqrt(layer.n_in + 1))
         for layer in layers]
    )
    rows = 1 if identical_inputs else batch
    inputs = _dyadic(rng, (rows, sizes[0]), 1.0, 16)
    c = sizes[-1]
    if loss in ("softmax_cross_entropy", "nll_probs"):
        targets = rng.integers(0, c, rows)
    elif loss == "sigmoid_cross_entropy":
        targets = rng.integers(0, 2, (rows, c)).astype(float)
    elif loss == "poisson":
        targets = rng.integers(0, 4, (rows, c)).astype(float)
    elif loss == "gaussian_logvar":
        targets = _dyadic(rng, (rows, c // 2), 1.0, 16)
    else:
        targets = _dyadic(rng, (rows, c), 1.0, 16)
    if identical_inputs:
        inputs, targets = np.repeat(inputs, batch, 0), np.repeat(targets, batch, 0)
    if name is None:
        arch = "x".join(map(str, sizes))
        acts = "-".join(dict.fromkeys(activations[:-1])) or activations[-1]
        name = f"mlp-{arch}-{acts}-{loss}-b{batch}"
        if activations[-1] != "identity":
            name += f"-out_{activations[-1]}"
        if reduction == "sum":
            name += "-sum"
        if identical_inputs:
            name += "-same_inputs"
    return Problem(name, layers, loss, params, inputs, targets, reduction)


#: the conv problems of the quick zoo (the names of `conv_problems()` entries)
QUICK_CONV = ("conv-1x4x4-2c-pad-stride-ce-b2", "conv-2x3x3-2c-last-sigmoid-bce-b2",
              "conv-1x1-stride2-3x3x3-poisson-b2")

#: data seed of the quick zoo's Poisson problem: its targets are (3, 2, 1), so log y! != 0
_QUICK_POISSON_SEED = 4


def _out(loss: str) -> str:
    return "softmax" if loss == "nll_probs" else "identity"


def _width(loss: str) -> int:
    return 4 if loss == "gaussian_logvar" else 3


@functools.lru_cache(maxsize=2)
def problems(quick: bool = False) -> tuple[Problem, ...]:
    """The zoo (or its quick subset), in a fixed order with unique names."""
    out: list[Problem] = []
    if quick:
        for i, loss in enumerate(LOSSES):
            act = HIDDEN_ACTIVATIONS[1 + i % 4]
            batch = 1 if i % 3 == 0 else 3
            reduction = "sum" if i % 2 else "mean"
            seed = _QUICK_POISSON_SEED if loss == "poisson" else 0
            out.append(make_problem((3, 4, _width(loss)), (act, _out(loss)), loss, batch,
                                    reduction=reduction, seed=seed))
        out.append(make_problem((2, 3, 3, 2), ("identity",) * 3, "mse", 4,
                                name="deep-linear-2x3x3x2-mse-b4"))
        # the same shapes, curved at every hidden layer
        out.append(make_problem((2, 3, 3, 2), ("tanh", "softplus", "identity"), "mse", 4,
                                name="deep-curved-2x3x3x2-mse-b4"))
        out += [p for p in conv_problems() if p.name in QUICK_CONV]
        return tuple(out)
    # every loss x every hidden activation, B = 3, mean
    for loss in LOSSES:
        for act in HIDDEN_ACTIVATIONS:
            out.append(make_problem((3, 4, _width(loss)), (act, _out(loss)), loss, 3))
    # one example, and sum reduction, for every loss
    for loss in LOSSES:
        out.append(make_problem((3, 4, _width(loss)), ("tanh", _out(loss)), loss, 1))
        out.append(make_problem((3, 4, _width(loss)), ("sigmoid", _out(loss)), loss, 4,
                                reduction="sum"))
    # structural regimes
    out += [
        make_problem((2, 3, 3, 2), ("identity",) * 3, "mse", 4, name="deep-linear-2x3x3x2-mse-b4"),
        make_problem((3, 3, 2), ("identity",) * 2, "mse", 1, name="deep-linear-3x3x2-mse-b1"),
        make_problem((2, 4, 4, 3), ("relu", "relu", "identity"), "softmax_cross_entropy", 3),
        make_problem((3, 4, 3), ("tanh", "identity"), "softmax_cross_entropy", 3,
                     identical_inputs=True),
        make_problem((3, 4, 3), ("tanh", "identity"), "mse", 2, identical_inputs=True),
        make_problem((2, 5, 6), ("tanh", "identity"), "gaussian_logvar", 4,
                     name="heteroscedastic-2x5x6-tanh-b4"),
        make_problem((2, 3, 3), ("tanh", "softmax"), "mse", 2),
        *conv_problems(),
    ]
    names_seen = [p.name for p in out]
    assert len(set(names_seen)) == len(names_seen), "zoo names must be unique"
    return tuple(out)


def names(quick: bool = False) -> list[str]:
    """Names of the zoo problems."""
    return [p.name for p in problems(quick)]


def get(name: str) -> Problem:
    """The zoo problem called `name`.

    Raises:
        KeyError: with the list of valid names.
    """
    for problem in problems(False) + problems(True):
        if problem.name == name:
            return problem
    raise KeyError(f"no zoo problem named {name!r}; see ngd_ref.zoo.names()")
