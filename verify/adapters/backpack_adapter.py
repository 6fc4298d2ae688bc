"""BackPACK (`backpack-for-pytorch`): its extensions of the backward pass behind the protocol.

BackPACK is used as its users use it: `extend(model)`, `extend(loss_func)`, then
`with backpack(Extension()): loss.backward()` and the results read from the parameters'
attributes. The problem is translated by `verify.adapters._torch_model` (float64 modules and
tensors built with an explicit dtype; torch's default dtype is never changed), and every
result is divided by the documented constant `t` of the torch loss (`h_torch = t h`:
`MSELoss` has no 1/2 and its mean runs over B*C, `BCEWithLogitsLoss`'s mean too; see
docs/torch.md) or, for quantities built from individual gradients, by `t^2 c`.

Capabilities and the extension behind each:
- `loss`, `gradient`: the extended loss and its `backward()` (`param.grad`);
- `hessian_diag`: `DiagHessian` (`diag_h`); `ggn_diag`: `DiagGGNExact` (`diag_ggn_exact`);
- `ggn`, `ggn_vp`, `fisher`, `fisher_vp`: `SqrtGGNExact` (`sqrt_ggn_exact`, V with
  G = V V^T); F = G for these natural-parameter losses (Martens s9);
- `empirical_fisher`, `empirical_fisher_vp`, `per_example_gradients` (s13): `BatchGrad`
  (`grad_batch`); `empirical_fisher_diag`: `SumGradSquared` (`sum_grad_squared`);
- `kfac_factors_separate` (s13): `KFLR` (`kflr`: `[S, A_w]` for a weight, `[S]` for a
  bias), kinds ggn and fisher; on a convolution `approx="expand"` only, BackPACK's KFLR as
  computed (neither s12 approximation, docs/findings.md), `"reduce"` declined;
- `mc_fisher`, `mc_fisher_vp` (s11): `SqrtGGNMC(mc_samples=S)`; `mc_fisher_diag` (s11):
  `DiagGGNMC(mc_samples=S)`.

Convolutions (PROTOCOL s12, `layer_kinds = ("dense", "conv2d")`): `nn.Conv2d` with NCHW
inputs and an `nn.Flatten` after the last convolution (`verify.adapters._torch_model`); every
extension above supports `Conv2d` and `Flatten`.

Seeds (PROTOCOL s11): BackPACK draws from torch's global generator, so a call runs under
`torch.random.fork_rng()` with `torch.manual_seed(seed)`: the draws are repeatable and the
caller's generator state is restored afterwards.

Not claimed, because BackPACK does not compute it: `hessian` / `hvp` (its `HMP` is the
block-diagonal Hessian), `kfac_factors` and `mc_kfac_factors` (s4's homogeneous factor has
the cross term `mean_b a_b` between weight and bias that BackPACK's separate blocks do not
carry, and s11 has no separate-block sampled K-FAC for `KFAC`), the empirical
K-FAC kind, damped solves, CG and the s9 methods; losses `poisson`, `nll_probs`,
`gaussian_logvar` (BackPACK has no derivatives for `PoissonNLLLoss`, `NLLLoss` or
`GaussianNLLLoss`) raise `NotImplementedError` (skip).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ngd_ref import Problem
from verify.adapters._torch_model import TorchModel, seeded, torch_model

__all__ = ["Backpack"]

#: K-FAC kinds KFLR computes exactly (kind fisher: F_R = H_L for natural parameters)
_KFLR_KINDS = ("ggn", "fisher")


class Backpack:
    """BackPACK's first- and second-order extensions as a port (float64)."""

    name = "backpack"
    dtype = "float64"
    layer_kinds = ("dense", "conv2d")  # PROTOCOL s12: nn.Conv2d (verify.adapters._torch_model)

    def __init__(self) -> None:
        import backpack  # noqa: F401 -- fail at construction when absent

    # -- translation -------------------------------------------------------------------------
    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _setup(problem: Problem) -> TorchModel:
        from backpack import extend

        setup = torch_model(problem)
        extend(setup.model)
        extend(setup.loss_func)
        return setup

    def _backward(self, problem: Problem, *extensions: Any, seed: int | None = None):
        """One extended backward pass; returns the setup (results on its parameters)."""
        from backpack import backpack

        setup = self._setup(problem)
        setup.model.zero_grad()
        with seeded(seed):
            loss = setup.loss_func(setup.model(setup.inputs), setup.targets)
            with backpack(*extensions):
                loss.backward()
        return setup

    def _parameter_result(self, problem: Problem, extension: Any, attribute: str,
                          divisor: float, seed: int | None = None) -> np.ndarray:
        setup = self._backward(problem, *([extension] if extension else []), seed=seed)
        flat = setup.canonical([(getattr(m.weight, attribute), getattr(m.bias, attribute))
                                for m in setup.layer_modules])
        return flat / divisor

    def _sqrt_ggn(self, problem: Problem, extension: Any, attribute: str,
                  seed: int | None = None) -> np.ndarray:
        """`V` (n, k) with `G_torch = V V^T`, divided by `sqrt(t)` (so `V V^T` is G or F)."""
        setup = self._backward(problem, extension, seed=seed)
        raw = getattr(setup.layer_modules[0].weight, attribute)
        columns = raw.shape[0] * raw.shape[1]  # (C or S, B, *param.shape)
        v = setup.canonical_columns(
            columns, lambda p: getattr(p, attribute).reshape(columns, *p.shape))
        return v / np.sqrt(setup.factor)

    # -- s5 capabilities ---------------------------------------------------------------------
    def loss(self, problem: Problem) -> float:
        """`h = loss_torch / t`."""
        setup = self._setup(problem)
        value = setup.loss_func(setup.model(setup.inputs), setup.targets)
        return float(value.detach()) / setup.factor

    def gradient(self, problem: Problem) -> np.ndarray:
        """`grad h` from `loss.backward()` (`param.grad`), divided by `t`."""
        return self._parameter_result(problem, None, "grad", self._setup(problem).factor)

    def hessian_diag(self, problem: Problem) -> np.ndarray:
        """`DiagHessian`: `diag_h / t`."""
        from backpack.extensions import DiagHessian

        return self._parameter_result(problem, DiagHessian(), "diag_h",
                                      self._setup(problem).factor)

    def ggn_diag(self, problem: Problem) -> np.ndarray:
        """`DiagGGNExact`: `diag_ggn_exact / t`."""
        from backpack.extensions import DiagGGNExact

        return self._parameter_result(problem, DiagGGNExact(), "diag_ggn_exact",
                                      self._setup(problem).factor)

    def ggn(self, problem: Problem) -> np.ndarray:
        """`SqrtGGNExact`: `G = V V^T / t`."""
        from backpack.extensions import SqrtGGNExact

        v = self._sqrt_ggn(problem, SqrtGGNExact(), "sqrt_ggn_exact")
        return v @ v.T

    def ggn_vp(self, problem: Problem, v) -> np.ndarray:
        """`G v = V (V^T v) / t`."""
        from backpack.extensions import SqrtGGNExact

        root = self._sqrt_ggn(problem, SqrtGGNExact(), "sqrt_ggn_exact")
        return root @ (root.T @ np.asarray(v, dtype=np.float64))

    def fisher(self, problem: Problem) -> np.ndarray:
        """`F = G` (natural parameters: `MSELoss`, `CrossEntropyLoss`, `BCEWithLogitsLoss`)."""
        return self.ggn(problem)

    def fisher_vp(self, problem: Problem, v) -> np.ndarray:
        """`F v = G v` (natural parameters)."""
        return self.ggn_vp(problem, v)

    def per_example_gradients(self, problem: Problem) -> np.ndarray:
        """`BatchGrad`: row b is `grad_batch[b] / (t c)` (PROTOCOL s13)."""
        from backpack.extensions import BatchGrad

        setup = self._backward(problem, BatchGrad())
        rows = setup.canonical_columns(problem.batch_size, lambda p: p.grad_batch).T
        return rows / (setup.factor * problem.scale)

    def empirical_fisher(self, problem: Problem) -> np.ndarray:
        """`EF = c sum_b g_b g_b^T` from `BatchGrad`'s `g'_b = t c g_b`."""
        g = self.per_example_gradients(problem)
        return problem.scale * (g.T @ g)

    def empirical_fisher_vp(self, problem: Problem, v) -> np.ndarray:
        """`EF v = c sum_b g_b (g_b^T v)`."""
        g = self.per_example_gradients(problem)
        return problem.scale * (g.T @ (g @ np.asarray(v, dtype=np.float64)))

    def empirical_fisher_diag(self, problem: Problem) -> np.ndarray:
        """`SumGradSquared`: `sum_b g'_b^2 / (t^2 c)`."""
        from backpack.extensions import SumGradSquared

        factor = self._setup(problem).factor
        return self._parameter_result(problem, SumGradSquared(), "sum_grad_squared",
                                      factor**2 * problem.scale)

    # -- s13 ---------------------------------------------------------------------------------
    def kfac_factors_separate(self, problem: Problem, kind: str, approx: str = "expand"):
        """`KFLR`: `((A_w, S / t), ([[1]], S / t))` per layer (PROTOCOL s13).

        BackPACK's weight factors `[S, A_w]` act on the row-major `vec(W)` as `S (x) A_w`,
        which is `A_w (x) S` on the protocol's column-major `vec(W)`; the bias block is `S`.
        On a convolution BackPACK's `KFLR` is its KFC (Grosse and Martens 2016, the s12
        `approx="expand"` it names) as computed, passed on unchanged: `A_w` is expand's, but
        `S` sums the GGN's square root over positions before squaring (`Jb = sum_t J_{b,t}`,
        reduce's `S`), so the weight block is neither s12 approximation (docs/findings.md).
        BackPACK has no K-FAC-reduce: `approx="reduce"` declines on convolutional problems.
        """
        from backpack.extensions import KFLR

        if kind not in _KFLR_KINDS:
            raise NotImplementedError(f"BackPACK has no K-FAC of kind {kind!r}")
        if approx != "expand" and not problem.dense_only:
            raise NotImplementedError(f"BackPACK has no K-FAC approximation {approx!r} for "
                                      f"convolutions (its KFLR is KFC's, expand)")
        return self._separate(self._backward(problem, KFLR()), "kflr")

    @staticmethod
    def _separate(setup: TorchModel, attribute: str):
        out = []
        for module in setup.layer_modules:
            s_w, a_w = (x.detach().numpy() for x in getattr(module.weight, attribute))
            (s_b,) = (x.detach().numpy() for x in getattr(module.bias, attribute))
            one = np.ones((1, 1), dtype=a_w.dtype)
            out.append(((a_w, s_w / setup.factor), (one, s_b / setup.factor)))
        return out

    # -- s11 ---------------------------------------------------------------------------------
    def mc_fisher(self, problem: Problem, num_samples: int, seed: int) -> np.ndarray:
        """`SqrtGGNMC(mc_samples=S)`: `V V^T / t`, unbiased for F."""
        from backpack.extensions import SqrtGGNMC

        v = self._sqrt_ggn(problem, SqrtGGNMC(mc_samples=num_samples), "sqrt_ggn_mc", seed)
        return v @ v.T

    def mc_fisher_vp(self, problem: Problem, v, num_samples: int, seed: int) -> np.ndarray:
        """`SqrtGGNMC`: `V (V^T v) / t`."""
        from backpack.extensions import SqrtGGNMC

        root = self._sqrt_ggn(problem, SqrtGGNMC(mc_samples=num_samples), "sqrt_ggn_mc", seed)
        return root @ (root.T @ np.asarray(v, dtype=np.float64))

    def mc_fisher_diag(self, problem: Problem, num_samples: int, seed: int) -> np.ndarray:
        """`DiagGGNMC(mc_samples=S)`: `diag_ggn_mc / t`."""
        from backpack.extensions import DiagGGNMC

        return self._parameter_result(problem, DiagGGNMC(mc_samples=num_samples),
                                      "diag_ggn_mc", self._setup(problem).factor, seed)
