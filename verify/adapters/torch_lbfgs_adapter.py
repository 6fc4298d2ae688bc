"""`torch.optim.LBFGS` as a PROTOCOL s10 `lbfgs` trajectory.

Under the harness's `optimizer_trajectory` (batches that differ from step to step) this
adapter reports *not checked* (`NotImplementedError`, a skip naming the reason): torch's
L-BFGS cannot be mapped onto s10 there, because its curvature pair mixes two batches (below;
measured in tests/test_real_adapters.py and docs/findings.md). It is validated on a repeated
batch, where the mapping is exact, and `trajectory(..., batches=)` runs it with one closure
per step on that step's batch so the deviation can be measured.

Used as its users use it: `torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=memory,
line_search_fn=None, tolerance_grad=0, tolerance_change=0)` and one `step(closure)` per
batch, the closure computing the torch loss (docs/torch.md: `h_torch = t h`) on that batch.
Each step is then `theta_{k+1} = theta_k - lr H_k g_k` with the two-loop over the newest
`history_size` pairs, `H_0 = (s^T y / y^T y) I` of the newest pair.

torch's conventions that s10 does not share (docs/findings.md), declined with
`NotImplementedError` (reported as skip) where they change the trajectory:
- `H_0` is always the scaled `s^T y / y^T y` (1 before a pair): only `gamma="scaled"`;
- `y` is the gradient at the new point on the *next* step's closure minus the previous
  gradient: with max_iter=1 `step()` evaluates its closure once, at `theta_k` on batch k, and
  that one gradient is both `g_k` of the direction and the end of the previous pair, so
  `y_{k-1} = grad h_k(theta_k) - grad h_{k-1}(theta_{k-1})` (two objectives), where s10's is
  `grad h_{k-1}(theta_k) - grad h_{k-1}(theta_{k-1})` (one). No setting of `LBFGS` evaluates
  a second gradient per step without also moving (max_iter=2 takes two steps), so only
  identical batches map;
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
            raise NotImplementedError(
                "not checked: torch.optim.LBFGS's pair y_k = grad h_{k+1}(theta_{k+1}) - "
                "grad h_k(theta_k) mixes two batches (s10: both gradients on batch k); only "
                "identical batches map (docs/findings.md)")
        return self.trajectory(problem.replace(inputs=first_x, targets=first_y), len(batches),
                               float(hyper["lr"]), int(hyper["memory"]), first_step=False)

    @staticmethod
    def trajectory(problem: Problem, steps: int, lr: float, memory: int, *,
                   first_step: bool = True, batches=None) -> list[np.ndarray]:
        """`steps` LBFGS steps, one `step(closure)` each, the closure on that step's batch.

        Args:
            problem: the network, loss and `theta_0`.
            steps: K.
            lr: `lr` of `LBFGS`.
            memory: its `history_size`.
            first_step: False declines where torch's first step differs from s10's
                (`||t g_0||_1 > 1`).
            batches: K `(inputs, targets)` pairs; default the problem's own batch every step.
        """
        import torch

        setup = torch_model(problem)
        if setup.factor != 1.0:
            raise NotImplementedError("the first step is -lr t g: only losses with t = 1 map")
        if batches is None:
            batches = [(problem.inputs, problem.targets)] * steps
        data = [(m.inputs, m.targets) for m in (
            torch_model(problem.replace(inputs=np.asarray(x), targets=np.asarray(y)))
            for x, y in batches[:steps])]
        params = list(setup.model.parameters())
        optimizer = torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=memory,
                                      line_search_fn=None, tolerance_grad=0.0,
                                      tolerance_change=0.0)
        current = list(data[0])

        def closure():
            optimizer.zero_grad()
            loss = setup.loss_func(setup.model(current[0]), current[1])
            loss.backward()
            return loss

        closure()
        size = float(torch.cat([p.grad.reshape(-1) for p in params]).abs().sum())
        if not first_step and size > 1.0:
            raise NotImplementedError("||g_0||_1 > 1: torch's first step is -lr g_0 / ||g_0||_1")
        out = []
        for inputs, targets in data:
            current[:] = [inputs, targets]
            optimizer.step(closure)
            out.append(setup.canonical([(m.weight, m.bias) for m in setup.linears]))
        return out
