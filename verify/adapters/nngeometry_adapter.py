"""nngeometry: Fisher matrices in its parameter-space representations behind the protocol.

nngeometry is used as its users use it: `FIM(model, loader, representation, variant=...)` and
`FIM_MonteCarlo(..., trials=S)` with a `DataLoader` over the batch (one batch of B), then the
representation's own methods (`mv`, `solvePVec`). The problem is translated by
`verify.adapters._torch_model` (float64 modules and tensors with an explicit dtype; torch's
default dtype is never changed). Vectors are nngeometry's flat `PVector` layout,
`[vec_row(W_1), b_1, ...]`; K-FAC blocks act on `[W b]` like PROTOCOL s4's `A (x) S`.

Variants (documented output distributions): `mse` -> `"regression"` (unit-variance Gaussian,
the protocol's `0.5 ||y - z||^2`), `softmax_cross_entropy` -> `"classif_logits"`,
`sigmoid_cross_entropy` with one output -> `"classif_binary_logits"` (documented for 1-d
logits only; more outputs raise `NotImplementedError`). Other losses are declined.

Constants: nngeometry averages over the examples of the loader, `F_nn = (1/B) sum_b ...`, so
the protocol's `F = k F_nn` with `k = c B` (1 for `"mean"`); its K-FAC `G` likewise, and a
damped solve `(k M + lambda I)^{-1} v = k^{-1} (M + (lambda/k) I)^{-1} v` (also exact for the
pi-adjusted factored damping, whose pi scales by `1/sqrt(k)`).

Capabilities:
- `fisher`, `fisher_vp`: `FIM(..., PMatDense)`: `.data`, `.mv`;
- `damped_update` (fisher): `PMatDense.solvePVec(grad, regul)`;
- `kfac_factors` (kind fisher): `FIM(..., PMatKFAC).data`, `(A, G)` per layer, returned as
  `(A, k G)` and unchanged otherwise: nngeometry puts `sqrt(n_out)` into A
  (docs/findings.md);
- `kfac_solve` (kind fisher): `factored` by `PMatKFAC.solvePVec(v, regul, use_pi=True)`;
  `eigen` by `PMatEKFAC` before any `update_diag` (its diagonal is then the Kronecker
  product of the factors' eigenvalues: K-FAC in its eigenbasis, damped exactly);
- `mc_fisher`, `mc_fisher_vp` (s11): `FIM_MonteCarlo(..., PMatDense,
  variant="classif_logits", trials=S)`.

Seeds (PROTOCOL s11): `FIM_MonteCarlo` draws with `torch.multinomial` from torch's global
generator; a call runs under `torch.random.fork_rng()` with `torch.manual_seed(seed)`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ngd_ref import Problem
from verify.adapters._torch_model import TorchModel, seeded, torch_model

__all__ = ["Nngeometry"]


class Nngeometry:
    """nngeometry's exact and Monte Carlo Fisher representations as a port (float64)."""

    name = "nngeometry"
    dtype = "float64"

    def __init__(self) -> None:
        import nngeometry  # noqa: F401 -- fail at construction when absent

    # -- translation -------------------------------------------------------------------------
    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _setup(problem: Problem) -> TorchModel:
        return torch_model(problem)

    @staticmethod
    def _variant(problem: Problem) -> str:
        if problem.loss == "mse":
            return "regression"
        if problem.loss == "softmax_cross_entropy":
            return "classif_logits"
        if problem.loss == "sigmoid_cross_entropy" and problem.layers[-1].n_out == 1:
            return "classif_binary_logits"
        raise NotImplementedError(f"nngeometry has no FIM variant for {problem.loss!r} "
                                  f"with {problem.layers[-1].n_out} outputs")

    def _loader(self, setup: TorchModel):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(setup.inputs.clone(), setup.targets),
                          batch_size=setup.problem.batch_size)

    def _fim(self, problem: Problem, representation: Any):
        from nngeometry.metrics import FIM

        setup = self._setup(problem)
        return FIM(setup.model, self._loader(setup), representation,
                   variant=self._variant(problem))

    def _vector(self, problem: Problem, v):
        """Canonical `v` -> nngeometry's `PVector` (flat torch layout)."""
        import torch
        from nngeometry.layercollection import LayerCollection
        from nngeometry.object import PVector

        setup = self._setup(problem)
        flat = np.asarray(v, dtype=np.float64)[setup.torch_order]
        return PVector(LayerCollection.from_model(setup.model),
                       vector_repr=torch.tensor(flat, dtype=torch.float64))

    def _canonical(self, problem: Problem, vector) -> np.ndarray:
        flat = vector.to_torch().detach().numpy()
        out = np.empty(problem.n_params, dtype=flat.dtype)
        out[self._setup(problem).torch_order] = flat
        return out

    def _dense(self, problem: Problem, data) -> np.ndarray:
        order = self._setup(problem).torch_order
        inverse = np.argsort(order)
        return data.detach().numpy()[np.ix_(inverse, inverse)]

    @staticmethod
    def _k(problem: Problem) -> float:
        return problem.scale * problem.batch_size

    # -- capabilities ------------------------------------------------------------------------
    def fisher(self, problem: Problem) -> np.ndarray:
        """`FIM(..., PMatDense).data` times `k`."""
        from nngeometry.object import PMatDense

        return self._k(problem) * self._dense(problem, self._fim(problem, PMatDense).data)

    def fisher_vp(self, problem: Problem, v) -> np.ndarray:
        """`PMatDense.mv(v)` times `k`."""
        from nngeometry.object import PMatDense

        out = self._fim(problem, PMatDense).mv(self._vector(problem, v))
        return self._k(problem) * self._canonical(problem, out)

    def damped_update(self, problem: Problem, curvature: str, damping: float) -> np.ndarray:
        """`-(F + lambda I)^{-1} grad h` by `PMatDense.solvePVec(grad, regul=lambda/k) / k`."""
        import torch
        from nngeometry.object import PMatDense

        if curvature != "fisher":
            raise NotImplementedError(f"nngeometry computes no {curvature!r} matrix")
        setup, k = self._setup(problem), self._k(problem)
        fim = self._fim(problem, PMatDense)
        params = list(setup.model.parameters())
        grads = torch.autograd.grad(setup.loss_func(setup.model(setup.inputs), setup.targets),
                                    params)
        flat = torch.cat([g.reshape(-1) for g in grads]).detach().numpy() / setup.factor
        gradient = np.empty_like(flat)
        gradient[setup.torch_order] = flat
        solved = fim.solvePVec(self._vector(problem, gradient), regul=damping / k)
        return -self._canonical(problem, solved) / k

    def kfac_factors(self, problem: Problem, kind: str):
        """`PMatKFAC.data`: `(A, k G)` per layer, kind fisher (nngeometry's split kept)."""
        from nngeometry.object import PMatKFAC

        if kind != "fisher":
            raise NotImplementedError(f"nngeometry's K-FAC is of the Fisher, not {kind!r}")
        blocks = self._fim(problem, PMatKFAC).data
        return [(a.detach().numpy(), self._k(problem) * g.detach().numpy())
                for a, g in blocks.values()]

    def kfac_solve(self, problem: Problem, v, damping, method, kind="fisher") -> np.ndarray:
        """`PMatKFAC.solvePVec(use_pi=True)` (factored) or `PMatEKFAC.solvePVec` (eigen)."""
        from nngeometry.object import PMatEKFAC, PMatKFAC

        if kind != "fisher":
            raise NotImplementedError(f"nngeometry's K-FAC is of the Fisher, not {kind!r}")
        k = self._k(problem)
        vector = self._vector(problem, v)
        if method == "factored":
            solved = self._fim(problem, PMatKFAC).solvePVec(vector, regul=damping / k,
                                                            use_pi=True)
        elif method == "eigen":
            solved = self._fim(problem, PMatEKFAC).solvePVec(vector, regul=damping / k)
        else:
            raise NotImplementedError(f"no damped K-FAC solve {method!r}")
        return self._canonical(problem, solved) / k

    # -- s11 ---------------------------------------------------------------------------------
    def _mc(self, problem: Problem, num_samples: int, seed: int):
        from nngeometry.metrics import FIM_MonteCarlo
        from nngeometry.object import PMatDense

        if self._variant(problem) != "classif_logits":
            raise NotImplementedError("FIM_MonteCarlo samples categorical outputs only")
        setup = self._setup(problem)
        with seeded(seed):
            return FIM_MonteCarlo(setup.model, self._loader(setup), PMatDense,
                                  variant="classif_logits", trials=int(num_samples))

    def mc_fisher(self, problem: Problem, num_samples: int, seed: int) -> np.ndarray:
        """`FIM_MonteCarlo(..., trials=S).data` times `k`."""
        return self._k(problem) * self._dense(problem, self._mc(problem, num_samples, seed).data)

    def mc_fisher_vp(self, problem: Problem, v, num_samples: int, seed: int) -> np.ndarray:
        """`FIM_MonteCarlo(...).mv(v)` times `k` (the draws do not depend on `v`)."""
        out = self._mc(problem, num_samples, seed).mv(self._vector(problem, v))
        return self._k(problem) * self._canonical(problem, out)
