"""`curvlinops` (PyTorch): Hessian, GGN, EF and K-FAC operators behind the protocol.

Translation (no numbers adjusted beyond the documented constant factors below): the problem
becomes a float64 `torch.nn.Sequential` of `Linear` / `Conv2d` + activation modules
(`verify.adapters._torch_model.torch_sequential`: weights `(out, in)`, `ngd_ref.to_torch`; a
convolution's kernel `(c_out, c_in, k_h, k_w)` is PROTOCOL s12's `W` reshaped, NCHW inputs,
an `nn.Flatten` after the last convolution); curvlinops' vectors are the concatenation of the
flattened (row-major) parameter tensors `[W_1, b_1, W_2, b_2, ...]`, mapped to the canonical
layout by `torch_order`.

Activations: `identity`, `tanh`, `sigmoid`, `relu`, `softplus` and (last layer) `softmax`
(`nn.Softmax(dim=-1)`, e.g. mse on a softmax output); any other declines the problem
(`NotImplementedError`, reported as skipped).

Losses: curvlinops supports `MSELoss`, `CrossEntropyLoss` and `BCEWithLogitsLoss` (mse,
softmax_cross_entropy, sigmoid_cross_entropy); other losses raise `NotImplementedError`
(reported as skipped). The torch losses are built with `reduction="sum"` and the results
multiplied by the documented constant `k`: `k = c` for cross-entropies and, for mse, `k = c/2`
for quantities linear in the loss (H, G, the fisher/ggn `S`) and `k = c/4` for those
quadratic in its gradient (EF, the empirical `S`): torch's `MSELoss` is `||y - z||^2`, the
protocol's is `0.5 ||y - z||^2`. torch's `"mean"`
reductions would also average over outputs (B*C) for MSE/BCE, which the protocol does not.

Capabilities: `hessian`, `ggn`, `empirical_fisher` (dense from `HessianLinearOperator`,
`GGNLinearOperator`, `EFLinearOperator`), `hvp`, `ggn_vp`, `empirical_fisher_vp`,
`kfac_factors` (`KFACLinearOperator` with `separate_weight_and_bias=False`, fisher types
`type-2` for kinds fisher/ggn -- exact for these natural-parameter losses -- and
`empirical`), and `kfac_solve` (`KFACInverseLinearOperator` with `use_exact_damping=True`
for "eigen" and `use_heuristic_damping=True` for "factored"). Convolutions (PROTOCOL s12,
`layer_kinds = ("dense", "conv2d")`): `approx` is curvlinops' `kfac_approx` ("expand",
"reduce"); its expand puts the `1/T` into `A` rather than `S` (a split, docs/findings.md).

Sampled (PROTOCOL s11), curvlinops' `fisher_type="mc"`: `mc_fisher_vp` is
`FisherMCLinearOperator(..., seed=seed, mc_samples=S) @ v`, `mc_fisher` the same operator
applied to the identity, and `mc_kfac_factors` (`estimator="targets"`) the factors of
`KFACLinearOperator(..., fisher_type="mc", mc_samples=S, seed=seed)`; all are linear in the
loss (`k = c/2` for mse: curvlinops samples from its own `||y - z||^2`, a normal of variance
1/2, so its MC Fisher is unbiased for its GGN `2 J^T J`). curvlinops has no curvature
propagation: `estimator="sketch"` declines.
"""

from __future__ import annotations

import functools

import numpy as np

from ngd_ref import Problem
from verify.adapters._torch_model import torch_inputs, torch_order, torch_sequential

__all__ = ["Curvlinops"]

_LOSSES = ("mse", "softmax_cross_entropy", "sigmoid_cross_entropy")


class Curvlinops:
    """curvlinops' curvature operators as a port (float64)."""

    name = "curvlinops"
    dtype = "float64"
    layer_kinds = ("dense", "conv2d")  # PROTOCOL s12: nn.Conv2d (verify.adapters._torch_model)

    def __init__(self) -> None:
        # torch's global default dtype is left alone: every tensor is built float64 explicitly,
        # so a library tensor created without a dtype shows up as float32 (docs/findings.md)
        import curvlinops  # noqa: F401 -- fail at construction when absent

    # -- translation -------------------------------------------------------------------------
    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _setup(problem: Problem):
        import torch
        from torch import nn

        if problem.loss not in _LOSSES:
            raise NotImplementedError(f"curvlinops has no loss for {problem.loss!r}")
        # softmax (last layer only, PROTOCOL s1) over the output features of a (B, C) batch
        model = torch_sequential(problem, softmax_output=True)
        loss_func = {"mse": nn.MSELoss, "softmax_cross_entropy": nn.CrossEntropyLoss,
                     "sigmoid_cross_entropy": nn.BCEWithLogitsLoss}[problem.loss](reduction="sum")
        x = torch_inputs(problem)
        y = torch.from_numpy(np.array(problem.targets))
        params = [p for p in model.parameters()]
        # H, G, S (fisher/ggn) are linear in the loss: k = c/2 for mse; EF and S (empirical)
        # are quadratic in the loss gradient: k = c/4 for mse.
        half = 0.5 if problem.loss == "mse" else 1.0
        return model, loss_func, params, [(x, y)], (problem.scale * half, problem.scale * half**2)

    def _to_torch_order(self, problem: Problem, v) -> np.ndarray:
        """Canonical -> `[vec_row(W_1), b_1, ...]` (`torch_order`)."""
        return np.asarray(v, dtype=np.float64)[torch_order(problem)]

    def _from_torch_order(self, problem: Problem, flat) -> np.ndarray:
        out = np.empty(problem.n_params)
        out[torch_order(problem)] = np.asarray(flat, dtype=np.float64)
        return out

    def _operator(self, problem: Problem, which: str):
        import curvlinops

        model, loss_func, params, data, (linear, quadratic) = self._setup(problem)
        cls = {"hessian": curvlinops.HessianLinearOperator, "ggn": curvlinops.GGNLinearOperator,
               "empirical_fisher": curvlinops.EFLinearOperator}[which]
        return (cls(model, loss_func, params, data),
                quadratic if which == "empirical_fisher" else linear)

    def _product(self, problem: Problem, which: str, v) -> np.ndarray:
        import torch

        op, factor = self._operator(problem, which)
        out = op @ torch.from_numpy(self._to_torch_order(problem, v))
        return factor * self._from_torch_order(problem, out.detach().numpy())

    def _dense(self, problem: Problem, which: str) -> np.ndarray:
        """The operator on the identity, one matrix product (as `mc_fisher`)."""
        import torch

        op, factor = self._operator(problem, which)
        return factor * self._columns(problem, op @ torch.from_numpy(self._basis(problem)))

    def _basis(self, problem: Problem) -> np.ndarray:
        """The canonical identity's columns in torch order, `(n, n)`."""
        n = problem.n_params
        return np.stack([self._to_torch_order(problem, e) for e in np.eye(n)], axis=1)

    def _columns(self, problem: Problem, out) -> np.ndarray:
        """`(n, k)` torch-order columns -> canonical-order columns."""
        return np.stack([self._from_torch_order(problem, col) for col in out.detach().numpy().T],
                        axis=1)

    # -- capabilities ------------------------------------------------------------------------
    def hessian(self, problem: Problem):
        """Dense H, `HessianLinearOperator` applied to the identity."""
        return self._dense(problem, "hessian")

    def ggn(self, problem: Problem):
        """Dense G from `GGNLinearOperator`."""
        return self._dense(problem, "ggn")

    def empirical_fisher(self, problem: Problem):
        """Dense EF from `EFLinearOperator`."""
        return self._dense(problem, "empirical_fisher")

    def hvp(self, problem: Problem, v):
        """`H v`."""
        return self._product(problem, "hessian", v)

    def ggn_vp(self, problem: Problem, v):
        """`G v`."""
        return self._product(problem, "ggn", v)

    def empirical_fisher_vp(self, problem: Problem, v):
        """`EF v`."""
        return self._product(problem, "empirical_fisher", v)

    def _kfac(self, problem: Problem, kind: str, approx: str = "expand"):
        import curvlinops

        model, loss_func, params, data, (linear, quadratic) = self._setup(problem)
        fisher_type = {"fisher": "type-2", "ggn": "type-2", "empirical": "empirical"}[kind]
        # the constructor computes the factors; calling compute_kronecker_factors() again would
        # accumulate a second copy on top (docs/findings.md)
        kfac = curvlinops.KFACLinearOperator(model, loss_func, params, data,
                                             fisher_type=fisher_type, kfac_approx=approx,
                                             separate_weight_and_bias=False)
        return kfac, quadratic if kind == "empirical" else linear

    def kfac_factors(self, problem: Problem, kind: str, approx: str = "expand"):
        """`[(A_l, S_l)]` from curvlinops' input and gradient covariances (times the factor k).

        `approx` is curvlinops' `kfac_approx` (PROTOCOL s12; both are s4's for a dense layer).
        """
        kfac, factor = self._kfac(problem, kind, approx)
        out = []
        for name in kfac._mapping:  # one entry per Linear / Conv2d module, in order
            a = kfac._input_covariances[name].detach().numpy()
            s = kfac._gradient_covariances[name].detach().numpy()
            out.append((a, factor * s))
        return out

    def kfac_solve(self, problem: Problem, v, damping, method, kind="fisher",
                   approx: str = "expand"):
        """Damped K-FAC solve with `KFACInverseLinearOperator` (exact or heuristic damping)."""
        import curvlinops
        import torch

        kfac, factor = self._kfac(problem, kind, approx)
        # curvlinops damps its own (unscaled) matrix: K-FAC of k^-1 C, so solve with damping/k.
        inverse = curvlinops.KFACInverseLinearOperator(
            kfac, damping=damping / factor, use_exact_damping=method == "eigen",
            use_heuristic_damping=method == "factored")
        out = inverse @ torch.from_numpy(self._to_torch_order(problem, v))
        return self._from_torch_order(problem, out.detach().numpy()) / factor

    # -- sampled (s11) ---------------------------------------------------------------------
    def _fisher_mc(self, problem: Problem, num_samples: int, seed: int):
        import curvlinops

        model, loss_func, params, data, (linear, _) = self._setup(problem)
        op = curvlinops.FisherMCLinearOperator(model, loss_func, params, data, seed=int(seed),
                                               mc_samples=int(num_samples))
        return op, linear

    def mc_fisher_vp(self, problem: Problem, v, num_samples: int, seed: int):
        """`FisherMCLinearOperator(seed, mc_samples=S) @ v` (times k)."""
        import torch

        op, factor = self._fisher_mc(problem, num_samples, seed)
        out = op @ torch.from_numpy(self._to_torch_order(problem, v))
        return factor * self._from_torch_order(problem, out.detach().numpy())

    def mc_fisher(self, problem: Problem, num_samples: int, seed: int):
        """`FisherMCLinearOperator(seed, mc_samples=S)` on the identity, one matrix product."""
        import torch

        op, factor = self._fisher_mc(problem, num_samples, seed)
        return factor * self._columns(problem, op @ torch.from_numpy(self._basis(problem)))

    def mc_kfac_factors(self, problem: Problem, num_samples: int, seed: int,
                        estimator: str = "targets"):
        """`KFACLinearOperator(fisher_type="mc", mc_samples=S, seed=seed)`'s factors."""
        import curvlinops

        if estimator != "targets":
            raise NotImplementedError(f"curvlinops has no {estimator!r} K-FAC estimator")
        model, loss_func, params, data, (linear, _) = self._setup(problem)
        kfac = curvlinops.KFACLinearOperator(model, loss_func, params, data, fisher_type="mc",
                                             mc_samples=int(num_samples), seed=int(seed),
                                             separate_weight_and_bias=False)
        return [(kfac._input_covariances[name].detach().numpy(),
                 linear * kfac._gradient_covariances[name].detach().numpy())
                for name in kfac._mapping]
