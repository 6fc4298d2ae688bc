"""The numpy port's `optimizer_trajectory` (PROTOCOL s10), written independently of the reference.

A mixin of `NumpyPort`: every step is built from the port's own primitives (its gradient,
curvature matrices, K-FAC factors and Kronecker solves, CG, inverse roots and two-loop
recursion) at the port's precision, with its own recurrences for the optimizer state. The
state updates are small hooks, so each optimizer mutant (`verify.mutants._corpus_trajectory`)
overrides exactly one:

* `_ema(average, new, eta)` -- eq. 25, `eta average + (1 - eta) new`;
* `_bias(eta, m)` -- the bias correction `1 - eta^m`;
* `_due(k, every)` -- whether a periodic refresh fires at step k (`k % every == 0`), and
  `_inverse_due` the same for K-FAC's inverses;
* `_inverse_after_direction` -- False: a K-FAC inverse rebuilt at step k is used at step k;
* `_levenberg_marquardt(lam, rho, omega)` -- Grosse s4.1's rule;
* `_model_damping(lam)` -- the damping inside the model `M_k` of `rho_k` (eq. 14: `lam`);
* `_line_minimizer(g_delta, curvature_delta, delta_delta, lam)` -- eq. 26's alpha;
* `_momentum_vector(previous_step, previous_direction)` -- eq. 27's second vector, `d_{k-1}`;
* `_warm_start(beta, p_prev)` -- HF's CG start `beta p_{k-1}`;
* `_shampoo_accumulate(stat, outer, beta2)` and `_shampoo_root` -- `beta2 L + G G^T`, p = 4;
* `_pair_accepted(ys)` and `_pair_order(pairs)` -- `y^T s > 0`, oldest first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from verify.mutants._port_base import PortPrimitives

__all__ = ["TrajectoryPort"]


class TrajectoryPort(PortPrimitives):
    """Mixin: `optimizer_trajectory` for `NumpyPort` (needs its primitives)."""

    # -- hooks -----------------------------------------------------------------------------
    def _ema(self, average, new, eta):
        return eta * average + (1 - eta) * new

    def _bias(self, eta, m):
        return 1 - eta**m

    def _due(self, k: int, every: int) -> bool:
        return k % every == 0

    def _inverse_due(self, k: int, every: int) -> bool:
        return self._due(k, every)

    _inverse_after_direction = False

    def _levenberg_marquardt(self, lam, rho, omega):
        if not np.isfinite(rho) or rho < 0.25:
            return lam * omega
        if rho > 0.75:
            return lam / omega
        return lam

    def _model_damping(self, lam):
        return lam

    def _line_minimizer(self, g_delta, curvature_delta, delta_delta, lam):
        denominator = curvature_delta + lam * delta_delta
        return -g_delta / denominator if denominator != 0 else self._dt(0)

    def _momentum_vector(self, previous_step, previous_direction):
        return previous_step

    def _warm_start(self, beta, p_prev):
        return self._dt(beta) * p_prev

    def _shampoo_accumulate(self, stat, outer, beta2):
        return self._dt(beta2) * stat + outer

    _shampoo_root = 4

    def _pair_accepted(self, ys) -> bool:
        return bool(ys > 0)

    def _pair_order(self, pairs: list) -> list:
        return list(pairs)

    # -- pieces ----------------------------------------------------------------------------
    def _at(self, problem, theta, batch):
        x, y = batch
        return problem.replace(params=np.asarray(theta, dtype=np.float64),
                               inputs=np.asarray(x, dtype=np.float64), targets=np.array(y))

    def _curvature_of(self, problem, name: str) -> np.ndarray:
        name = {"empirical": "empirical_fisher"}.get(name, name)
        return self._cast(getattr(self, name)(problem))

    def _blocks(self, problem, v):
        out, start = [], 0
        for layer in problem.layers:
            size = (layer.n_in + 1) * layer.n_out
            out.append(v[start : start + size])
            start += size
        return out

    # -- the capability --------------------------------------------------------------------
    def optimizer_trajectory(self, problem, batches, method, hyper):
        """`theta_1 .. theta_K` of `method` (PROTOCOL s10), in the port's precision."""
        dt = self._dt
        theta = self._cast(problem.params)
        state: dict[str, Any] = {
            "d": np.zeros_like(theta), "p": np.zeros_like(theta), "direction": None,
            "lam": dt(hyper["damping"]) if "damping" in hyper else None,
            "avg": None, "m": 0, "solver": None, "stats": None, "roots": None,
            "pairs": []}
        step = getattr(self, f"_step_{method}", None)
        if step is None:
            raise NotImplementedError(f"method {method!r}")
        out = []
        for k, batch in enumerate(batches):
            here = self._at(problem, theta, batch)
            g = self.gradient(here)
            d = self._cast(step(k, here, g, hyper, state))
            new_theta = theta + d
            if not np.all(np.isfinite(new_theta)):
                pass
            elif method == "lbfgs":
                y = self.gradient(self._at(problem, new_theta, batch)) - g
                if self._pair_accepted(y @ d):
                    kept = state["pairs"] + [(d, y)]
                    state["pairs"] = kept[max(0, len(kept) - int(hyper["memory"])):]
            elif hyper.get("adapt_damping") and (k + 1) % int(hyper["damping_every"]) == 0:
                self._adapt(here, self._at(problem, new_theta, batch), g, d, hyper, state)
            theta, state["d"] = new_theta, d
            out.append(theta.copy())
            if not np.all(np.isfinite(theta)):  # nothing to evaluate the next step at
                out += [np.full_like(theta, np.nan)] * (len(batches) - k - 1)
                break
        return out

    def _adapt(self, here, moved, g, d, hyper, state) -> None:
        name = hyper.get("curvature", hyper.get("kind"))
        lam = state["lam"]
        c = self._curvature_of(here, name)
        model = g @ d + (d @ (c @ d) + self._model_damping(lam) * (d @ d)) / 2
        if model == 0:
            return
        with np.errstate(all="ignore"):
            rho = (self.loss(moved) - self.loss(here)) / model
        state["lam"] = self._dt(self._levenberg_marquardt(lam, rho, self._dt(
            hyper["damping_factor"])))

    def _step_damped_newton(self, k, here, g, hyper, state):
        c = self._curvature_of(here, hyper["curvature"])
        return -self._dt(hyper["lr"]) * np.linalg.solve(
            self._damped_matrix(c, state["lam"]), g)

    def _step_hessian_free(self, k, here, g, hyper, state):
        system = self._damped_matrix(self._curvature_of(here, hyper["curvature"]), state["lam"])
        p = self._cast(self.cg(lambda v: system @ v, -g,
                               self._warm_start(hyper["cg_warm_start"], state["p"]),
                               tol=0.0, maxiter=int(hyper["cg_iters"])))
        state["p"] = p
        return self._dt(hyper["lr"]) * p

    def _step_kfac(self, k, here, g, hyper, state):
        dt = self._dt
        eta = dt(hyper["ema"])
        if self._due(k, int(hyper["stats_every"])):
            new = [(self._cast(a), self._cast(s))
                   for a, s in self.kfac_factors(here, hyper["kind"])]
            old = state["avg"] or [(np.zeros_like(a), np.zeros_like(s)) for a, s in new]
            state["avg"] = [(self._ema(a0, a1, eta), self._ema(s0, s1, eta))
                            for (a0, s0), (a1, s1) in zip(old, new, strict=True)]
            state["m"] += 1
        rebuild = self._inverse_due(k, int(hyper["inverse_every"])) and state["avg"] is not None
        if state["solver"] is None or (rebuild and not self._inverse_after_direction):
            state["solver"] = self._kfac_rebuild(hyper, state)
        factors, lam_solve = state["solver"]
        delta = np.concatenate([
            self._kron_solve(a, s, block, lam_solve, hyper["damping_method"])
            for (a, s), block in zip(factors, self._blocks(here, g), strict=True)])
        if rebuild and self._inverse_after_direction:
            state["solver"] = self._kfac_rebuild(hyper, state)
        previous_direction, state["direction"] = state["direction"], delta
        rule = hyper["step_rule"]
        if rule == "fixed":
            return -dt(hyper["lr"]) * delta + dt(hyper["momentum"]) * state["d"]
        lam = state["lam"]
        c = self._curvature_of(here, hyper["kind"])
        cd = c @ delta
        alpha = self._line_minimizer(g @ delta, delta @ cd, delta @ delta, lam)
        if rule == "rescaled":
            return alpha * delta
        prev = self._momentum_vector(state["d"],
                                     np.zeros_like(delta) if previous_direction is None
                                     else previous_direction)
        if k == 0 or not np.any(prev != 0):
            return alpha * delta
        a11 = delta @ cd + lam * (delta @ delta)
        a12 = prev @ cd + lam * (prev @ delta)
        a22 = prev @ (c @ prev) + lam * (prev @ prev)
        det = a11 * a22 - a12 * a12
        if det <= 64 * np.finfo(dt).eps * a11 * a22:
            return alpha * delta
        gd, gp = g @ delta, g @ prev
        return ((-gd * a22 + gp * a12) / det) * delta + ((-gp * a11 + gd * a12) / det) * prev

    def _kfac_rebuild(self, hyper, state):
        if hyper["ema_bias_correction"]:
            scale = self._bias(self._dt(hyper["ema"]), state["m"])
            factors = [(a / scale, s / scale) for a, s in state["avg"]]
        else:
            factors = list(state["avg"])
        return factors, state["lam"]

    def _step_shampoo(self, k, here, g, hyper, state):
        grads = [block.reshape((layer.n_out, layer.n_in + 1), order="F")
                 for layer, block in zip(here.layers, self._blocks(here, g), strict=True)]
        if state["stats"] is None:
            state["stats"] = [(np.zeros((m.shape[0],) * 2, self._dt),
                               np.zeros((m.shape[1],) * 2, self._dt)) for m in grads]
        state["stats"] = [(self._shampoo_accumulate(lm, m @ m.T, hyper["beta2"]),
                           self._shampoo_accumulate(rm, m.T @ m, hyper["beta2"]))
                          for (lm, rm), m in zip(state["stats"], grads, strict=True)]
        if self._due(k, int(hyper["root_every"])):
            state["roots"] = [(self._cast(self.inverse_root(lm, self._shampoo_root, hyper["eps"])),
                               self._cast(self.inverse_root(rm, self._shampoo_root, hyper["eps"])))
                              for lm, rm in state["stats"]]
        lr = self._dt(hyper["lr"])
        return np.concatenate([self._vec(-lr * (rl @ m @ rr))
                               for (rl, rr), m in zip(state["roots"], grads, strict=True)])

    def _step_lbfgs(self, k, here, g, hyper, state):
        pairs = state["pairs"]
        gamma = hyper["gamma"]
        if gamma == "scaled":
            gamma = (pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1]) if pairs else 1
        ordered = self._pair_order(pairs)
        direction = self.lbfgs_direction(g, [s for s, _ in ordered], [y for _, y in ordered],
                                         gamma)
        return -self._dt(hyper["lr"]) * self._cast(direction)
