"""A problem in the terms a PyTorch user writes: a float64 `nn.Sequential` and a torch loss.

Shared by the `backpack` and `nngeometry` adapters (torch is imported lazily by them, never by
the core suite). Every tensor is built with an explicit `dtype=torch.float64`; torch's global
default dtype is never touched (an adapter that sets it hides exactly the bug class of
BackPACK's KFRA identity and nngeometry's damping scalar, docs/findings.md).

Layout: weights `(out, in)` and biases `(out,)` per `nn.Linear` (`ngd_ref.to_torch`); results
shaped like the parameters go back through `ngd_ref.from_torch`.

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

from ngd_ref import Problem, from_torch, to_torch

__all__ = ["TORCH_LOSSES", "TorchModel", "seeded", "torch_model"]

#: protocol loss -> torch loss class name (`torch.nn`)
TORCH_LOSSES = {"mse": "MSELoss", "softmax_cross_entropy": "CrossEntropyLoss",
                "sigmoid_cross_entropy": "BCEWithLogitsLoss"}

_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "ReLU", "softplus": "Softplus"}


@dataclasses.dataclass(frozen=True)
class TorchModel:
    """A problem as torch modules and float64 tensors.

    Attributes:
        problem: the problem.
        model: `nn.Sequential` of `nn.Linear` (float64) and activation modules.
        loss_func: the torch loss module, with the problem's reduction.
        inputs: `(B, n_in)` float64.
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

    def canonical(self, per_layer: list[tuple[Any, Any]]) -> np.ndarray:
        """`[(weight-shaped, bias-shaped), ...]` tensors -> canonical vector (no rounding)."""
        return from_torch([(w.detach().numpy(), b.detach().numpy()) for w, b in per_layer])

    @property
    def torch_order(self) -> np.ndarray:
        """Indices `p` with `flat_torch = canonical[p]`, `flat_torch = [vec_row(W_1), b_1, ...]`.

        The concatenation of `param.reshape(-1)` in `model.parameters()` order (the layout of
        `torch.nn.utils.parameters_to_vector`, curvlinops and nngeometry's flat vectors).
        """
        index = to_torch(self.problem.layers, np.arange(self.problem.n_params, dtype=float))
        return np.concatenate([np.concatenate([w.reshape(-1), b]) for w, b in index]).astype(int)

    def canonical_columns(self, leading: int, value: Callable[[Any], Any]) -> np.ndarray:
        """`(n, leading)` from `value(param)`, a tensor shaped `(leading, *param.shape)`."""
        pairs = [(value(m.weight), value(m.bias)) for m in self.linears]
        return np.stack([self.canonical([(w[i], b[i]) for w, b in pairs])
                         for i in range(leading)], axis=1)


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
    modules: list[nn.Module] = []
    for layer, (w, b) in zip(problem.layers, to_torch(problem.layers, problem.params),
                             strict=True):
        if layer.activation == "softmax":
            raise NotImplementedError("the torch losses mapped here take logits, not softmax")
        linear = nn.Linear(layer.n_in, layer.n_out, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(w, dtype=torch.float64))
            linear.bias.copy_(torch.tensor(b, dtype=torch.float64))
        modules.append(linear)
        if layer.activation != "identity":
            modules.append(getattr(nn, _ACTIVATIONS[layer.activation])())
    inputs = torch.tensor(np.array(problem.inputs), dtype=torch.float64)
    if problem.loss == "softmax_cross_entropy":
        targets = torch.tensor(np.array(problem.targets), dtype=torch.int64)
    else:
        targets = torch.tensor(np.array(problem.targets), dtype=torch.float64)
    outputs = problem.layers[-1].n_out
    per_output = problem.reduction == "mean" and problem.loss != "softmax_cross_entropy"
    factor = (2.0 if problem.loss == "mse" else 1.0) / (outputs if per_output else 1)
    loss_func = getattr(nn, TORCH_LOSSES[problem.loss])(reduction=problem.reduction)
    return TorchModel(problem, nn.Sequential(*modules), loss_func, inputs, targets, factor)


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
