"""A problem in the terms a PyTorch user writes: a float64 `nn.Sequential` and a torch loss.

Shared by the `backpack` and `nngeometry` adapters (torch is imported lazily by them, never by
the core suite). Every tensor is built with an explicit `dtype=torch.float64`; torch's global
default dtype is never touched (an adapter that sets it hides exactly the bug class of
BackPACK's KFRA identity and nngeometry's damping scalar, docs/findings.md).

Layout: weights `(out, in)` and biases `(out,)` per `nn.Linear` (`ngd_ref.to_torch`); results
shaped like the parameters go back through `ngd_ref.from_torch`.

Convolutions (PROTOCOL s12; recognised by their `kernel` field): `nn.Conv2d(c_in, c_out,
kernel, stride, padding)` (zero padding, a cross-correlation like s12's map), whose
`(c_out, c_in, k_h, k_w)` weight is the canonical `W` of shape `(c_out, c_in k_h k_w)`
reshaped row-major (s12: `W = weight.reshape(c_out, -1)`, the (channel, kernel row, kernel
column) patch order of `unfold`), so `torch.flatten(weight)` is `W`'s row-major
vectorization, as for `nn.Linear`. The inputs `(B, C*H*W)` (rows flattened channel-major)
are reshaped to NCHW `(B, C, H, W)`; after the last convolution (and its activation) an
`nn.Flatten()` flattens NCHW to `(B, c_out H' W')`, channel-major: what s12 feeds a dense
layer after a convolution, and z when a convolution is last.

Losses (docs/torch.md): the torch loss uses the problem's reduction, and `factor` is the
documented constant `t` with `h_torch = t h`:

| protocol loss | torch loss | t ("mean") | t ("sum") |
|---|---|---|---|
| `mse` | `MSELoss` (`||y - z||^2`, mean over B*C) | 2/C | 2 |
| `softmax_cross_entropy` | `CrossEntropyLoss` | 1 | 1 |
| `sigmoid_cross_entropy` | `BCEWithLogitsLoss` (mean over B*C) | 1/C | 1 |

So a quantity linear in the loss (H, G, F, K-FAC's `S`, their MC estimates) is the torch
value divided by `t`; an individual gradient computed from the reduced loss (BackPACK's
`BatchGrad`) is `t c g_b`, so `EF = c sum_b g_b g_b^T` is `sum_b g'_b g'_b^T / (t^2 c)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ngd_ref import Conv2d, Problem, from_torch, to_torch

__all__ = ["TORCH_LOSSES", "TorchModel", "seeded", "torch_inputs", "torch_model", "torch_order",
           "torch_sequential"]

#: protocol loss -> torch loss class name (`torch.nn`)
TORCH_LOSSES = {"mse": "MSELoss", "softmax_cross_entropy": "CrossEntropyLoss",
                "sigmoid_cross_entropy": "BCEWithLogitsLoss"}

_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "ReLU", "softplus": "Softplus"}


def torch_sequential(problem: Problem, *, softmax_output: bool = False) -> Any:
    """The problem's network as a float64 `nn.Sequential` holding the problem's parameters.

    One `nn.Linear` or `nn.Conv2d` per layer (module docstring), each followed by its
    activation module (none for `identity`); an `nn.Flatten()` follows the last convolution.

    Args:
        problem: the problem.
        softmax_output: map a last layer's `softmax` to `nn.Softmax(dim=-1)` (for a library
            whose loss takes the network's output as is, e.g. mse on probabilities).

    Raises:
        NotImplementedError: for an activation without a torch module here (`softmax` unless
            `softmax_output`).
    """
    import torch
    from torch import nn

    modules: list[nn.Module] = []
    last_conv = max((i for i, layer in enumerate(problem.layers) if isinstance(layer, Conv2d)),
                    default=-1)
    for index, (layer, (w, b)) in enumerate(zip(problem.layers,
                                                to_torch(problem.layers, problem.params),
                                                strict=True)):
        if isinstance(layer, Conv2d):
            module: nn.Module = nn.Conv2d(layer.c_in, layer.c_out, tuple(layer.kernel),
                                          stride=tuple(layer.stride),
                                          padding=tuple(layer.padding), dtype=torch.float64)
            weight = w.reshape(layer.c_out, layer.c_in, *layer.kernel)
        else:
            module, weight = nn.Linear(layer.n_in, layer.n_out, dtype=torch.float64), w
        with torch.no_grad():
            module.weight.copy_(torch.tensor(weight, dtype=torch.float64))
            module.bias.copy_(torch.tensor(b, dtype=torch.float64))
        modules.append(module)
        if layer.activation == "softmax":
            if not softmax_output:
                raise NotImplementedError("the torch losses mapped here take logits, not softmax")
            modules.append(nn.Softmax(dim=-1))
        elif layer.activation in _ACTIVATIONS:
            modules.append(getattr(nn, _ACTIVATIONS[layer.activation])())
        elif layer.activation != "identity":
            raise NotImplementedError(f"no torch module mapped for activation "
                                      f"{layer.activation!r}")
        if index == last_conv:
            modules.append(nn.Flatten())
    return nn.Sequential(*modules)


def torch_inputs(problem: Problem) -> Any:
    """The inputs as float64: `(B, n_in)`, or NCHW `(B, C, H, W)` with an `input_shape`."""
    import torch

    inputs = torch.tensor(np.array(problem.inputs), dtype=torch.float64)
    if problem.input_shape is None:
        return inputs
    return inputs.reshape(inputs.shape[0], *problem.input_shape)


def torch_order(problem: Problem) -> np.ndarray:
    """Indices `p` with `flat_torch = canonical[p]`, `flat_torch = [vec_row(W_1), b_1, ...]`.

    The concatenation of `param.reshape(-1)` in `model.parameters()` order (the layout of
    `torch.nn.utils.parameters_to_vector`, curvlinops and nngeometry's flat vectors); a
    convolution's kernel flattens to its `W`'s row-major vectorization (module docstring).
    """
    index = to_torch(problem.layers, np.arange(problem.n_params, dtype=float))
    return np.concatenate([np.concatenate([w.reshape(-1), b]) for w, b in index]).astype(int)


@dataclasses.dataclass(frozen=True)
class TorchModel:
    """A problem as torch modules and float64 tensors.

    Attributes:
        problem: the problem.
        model: `torch_sequential(problem)`: `nn.Linear` / `nn.Conv2d` (float64), activation
            modules and an `nn.Flatten` after the last convolution.
        loss_func: the torch loss module, with the problem's reduction.
        inputs: `torch_inputs(problem)`, `(B, n_in)` or NCHW float64.
        targets: int64 `(B,)` labels (cross-entropy) or float64 `(B, C)`.
        factor: `t` with `h_torch = t h` (module docstring).
    """

    problem: Problem
    model: Any
    loss_func: Any
    inputs: Any
    targets: Any
    factor: float

    @property
    def linears(self) -> list[Any]:
        """The `nn.Linear` modules, in order."""
        import torch

        return [m for m in self.model if isinstance(m, torch.nn.Linear)]

    @property
    def layer_modules(self) -> list[Any]:
        """The `nn.Linear` and `nn.Conv2d` modules, one per problem layer, in order."""
        import torch

        return [m for m in self.model if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]

    def canonical(self, per_layer: list[tuple[Any, Any]]) -> np.ndarray:
        """`[(weight-shaped, bias-shaped), ...]` tensors -> canonical vector (no rounding).

        A convolution's `(c_out, c_in, k_h, k_w)`-shaped tensor is its `W` reshaped (module
        docstring), so it is read as `(c_out, c_in k_h k_w)`.
        """
        return from_torch([(w.detach().numpy().reshape(w.shape[0], -1), b.detach().numpy())
                           for w, b in per_layer])

    @property
    def torch_order(self) -> np.ndarray:
        """`torch_order(problem)`: `flat_torch = canonical[torch_order]`."""
        return torch_order(self.problem)

    def canonical_columns(self, leading: int, value: Callable[[Any], Any]) -> np.ndarray:
        """`(n, leading)` from `value(param)`, a tensor shaped `(leading, *param.shape)`.

        The rows of every `value(param).reshape(leading, -1)`, concatenated in parameter
        order, are torch-order vectors; one permutation (`torch_order`) makes them canonical.
        """
        flat = np.concatenate([value(p).detach().numpy().reshape(leading, -1)
                               for m in self.layer_modules for p in (m.weight, m.bias)], axis=1)
        out = np.empty((self.problem.n_params, leading), dtype=flat.dtype)
        out[self.torch_order] = flat.T
        return out


def torch_model(problem: Problem) -> TorchModel:
    """Translate `problem` (raises `NotImplementedError` for a loss torch cannot express).

    Raises:
        NotImplementedError: for losses without a torch loss in `TORCH_LOSSES`, or a softmax
            output layer (the libraries' losses take logits).
    """
    import torch
    from torch import nn

    if problem.loss not in TORCH_LOSSES:
        raise NotImplementedError(f"no torch loss mapped for {problem.loss!r}")
    model = torch_sequential(problem)
    inputs = torch_inputs(problem)
    if problem.loss == "softmax_cross_entropy":
        targets = torch.tensor(np.array(problem.targets), dtype=torch.int64)
    else:
        targets = torch.tensor(np.array(problem.targets), dtype=torch.float64)
    outputs = problem.output_dim
    per_output = problem.reduction == "mean" and problem.loss != "softmax_cross_entropy"
    factor = (2.0 if problem.loss == "mse" else 1.0) / (outputs if per_output else 1)
    loss_func = getattr(nn, TORCH_LOSSES[problem.loss])(reduction=problem.reduction)
    return TorchModel(problem, model, loss_func, inputs, targets, factor)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run with torch's global generator seeded, restoring its state afterwards."""
    import torch

    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield
