"""`torch.optim.LBFGS` as a PROTOCOL s10 `lbfgs` trajectory.

The harness's `optimizer_trajectory` uses batches that differ from step to step, which
torch's L-BFGS cannot map (below), so there it skips; it is validated by hand on a repeated
batch in tests/test_real_adapters.py.

Used as its users use it: `torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=memory,
line_search_fn=None, tolerance_grad=0, tolerance_change=0)` and one `step(closure)` per
batch, the closure computing the torch loss (docs/torch.md: `h_torch = t h`) on that batch.
Each step is then `theta_{k+1} = theta_k - lr H_k g_k` with the two-loop over the newest
`history_size` pairs, `H_0 = (s^T y / y^T y) I` of the newest pair.

torch's conventions that s10 does not share (docs/findings.md), declined with
`NotImplementedError` (reported as skip) where they change the trajectory:
- `H_0` is always the scaled `s^T y / y^T y` (1 before a pair): only `gamma="scaled"`;
- `y` is the gradient at the new point on the *next* step's closure minus the previous
  gradient, so with different batches it mixes two objectives: only identical batches;
- the first step is `-lr min(1, 1/||g_0||_1) g_0`, not `-lr g_0`: declined where
  `||g_0||_1 > 1`;
- `history_size=0` raises `IndexError` (`old_dirs.pop(0)` on an empty list): `memory = 0`
  is declined;
- a pair is stored when `y^T s > 1e-10`, not `> 0` (the same on trajectories whose `y^T s`
  is not within 1e-10 of 0);
- the torch objective is `t h` (docs/torch.md): with stored pairs `(s, t y)` the two-loop
  gives `(H_k / t)(t g) = H_k g`, the protocol's step, but before any pair is stored the
  step is `-lr t g`: declined unless `t = 1` (cross-entropies; sigmoid with `"sum"`).
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Problem
from verify.adapters._torch_model import torch_model

__all__ = ["TorchLbfgs"]


class TorchLbfgs:
    """`torch.optim.LBFGS` (no line search, one iteration per step) as an s10 port."""

    name = "torch-lbfgs"
    dtype = "float64"

    def __init__(self) -> None:
        import torch  # noqa: F401 -- fail at construction when absent

    def optimizer_trajectory(self, problem: Problem, batches, method: str, hyper: dict):
        """`theta_1, ..., theta_K` from one `LBFGS.step(closure)` per batch."""
        if method != "lbfgs":
            raise NotImplementedError(f"torch.optim.LBFGS is not {method!r}")
        if hyper["gamma"] != "scaled":
            raise NotImplementedError("torch.optim.LBFGS always scales H_0 by s^T y / y^T y")
        if int(hyper["memory"]) == 0:
            raise NotImplementedError("history_size=0 raises IndexError in torch.optim.LBFGS")
        first_x, first_y = (np.asarray(a) for a in batches[0])
        if any(not (np.array_equal(x, first_x) and np.array_equal(y, first_y))
               for x, y in batches):
            raise NotImplementedError("torch.optim.LBFGS's y mixes the gradients of two "
                                      "batches; only identical batches map")
        return self.trajectory(problem.replace(inputs=first_x, targets=first_y), len(batches),
                               float(hyper["lr"]), int(hyper["memory"]), first_step=False)

    @staticmethod
    def trajectory(problem: Problem, steps: int, lr: float, memory: int, *,
                   first_step: bool = True) -> list[np.ndarray]:
        """`steps` LBFGS steps on `problem`'s own batch.

        `first_step=False` declines where torch's first step differs from s10's
        (`||t g_0||_1 > 1`).
        """
        import torch

        setup = torch_model(problem)
        if setup.factor != 1.0:
            raise NotImplementedError("the first step is -lr t g: only losses with t = 1 map")
        params = list(setup.model.parameters())
        optimizer = torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=memory,
                                      line_search_fn=None, tolerance_grad=0.0,
                                      tolerance_change=0.0)

        def closure():
            optimizer.zero_grad()
            loss = setup.loss_func(setup.model(setup.inputs), setup.targets)
            loss.backward()
            return loss

        closure()
        size = float(torch.cat([p.grad.reshape(-1) for p in params]).abs().sum())
        if not first_step and size > 1.0:
            raise NotImplementedError("||g_0||_1 > 1: torch's first step is -lr g_0 / ||g_0||_1")
        out = []
        for _ in range(steps):
            optimizer.step(closure)
            out.append(setup.canonical([(m.weight, m.bias) for m in setup.linears]))
        return out
