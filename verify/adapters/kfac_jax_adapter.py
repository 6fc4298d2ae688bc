"""`kfac-jax` (DeepMind, 0.0.8): exact curvature and K-FAC behind the protocol.

kfac-jax is used as its documentation tells a user to: the network is written in JAX with
every dense layer registered by `kfac_jax.register_dense(s, a, kernel, bias)` and the loss
registered on the network output (`register_squared_error_loss`,
`register_softmax_cross_entropy_loss`, `register_sigmoid_cross_entropy_loss`,
`register_categorical_predictive_distribution`); the curvature comes from its estimator
classes, which are what `kfac_jax.Optimizer` runs internally:

    capability             kfac-jax call
    loss                   BlockDiagonalCurvature.compute_func_from_registered
    hvp, ggn_vp, fisher_vp ImplicitExactCurvature.multiply_{hessian,ggn,fisher}
    hessian                hvp against every basis vector
    ggn, fisher,           ExplicitExactCurvature, estimation_mode ggn_exact / fisher_exact /
    empirical_fisher       fisher_empirical, `to_dense_matrix`
    kfac_factors           BlockDiagonalCurvature (DenseTwoKroneckerFactored blocks), modes
                           fisher_exact / ggn_exact / fisher_empirical: the blocks' two factors
    kfac_solve             the same estimator, `update_cache` + `multiply_inverse(...,
                           use_cached=True)` with `exact_power=True` ("eigen": eigenbases of the
                           factors, Martens s10) or `False` (pi-adjusted factored damping,
                           seed 002 eq. (24)), as the optimizer does

Layout (no numbers touched): parameters are Flax-layout `[{"kernel": (n_in, n_out), "bias":
(n_out,)}]` (`verify.adapters._jax_model`); vectors and dense matrices go through
`ravel_pytree` order and `ngd_ref.from_flax`. A dense block's factors are over the array
`[kernel; bias]` of shape `(n_in + 1, n_out)` = `Wbar^T`, whose row-major vectorization is the
canonical `vec(Wbar)`; its input factor has the bias coordinate last, so `(A, S)` are the
protocol's (PROTOCOL s4) as they stand.

Loss conventions, with their documented constants (kfac-jax registration docstrings):

* every registered loss is `weight * sum_b L_b / batch_size`: the adapter registers
  `weight = w = c B` (1 for "mean", B for "sum"), so `h = c sum_b L_b` exactly;
* `register_squared_error_loss` is `weight * ||y - z||^2` (a normal of variance 1/2): the
  protocol's `0.5 ||y - z||^2` is registered with `weight = w / 2`;
* `nll_probs` (a softmax output layer and the NLL of the probabilities) is registered as the
  categorical distribution of the output layer's logits `s_L`: the same function of theta, so
  the same loss, gradient, Hessian and Fisher (a reparameterization of the output
  distribution, Martens s9-s10), but kfac-jax's GGN is always taken at the registered
  (natural) parameters, so the protocol's GGN through the probabilities has no counterpart:
  `ggn`, `ggn_vp` and K-FAC kind "ggn" decline (`NotImplementedError`, reported as skipped);
* `poisson` and `gaussian_logvar` have no registration function in kfac-jax: every
  capability declines for them (docs/findings.md);
* the weight scales each per-example loss before its gradient is squared, so kfac-jax's
  empirical Fisher is `(w^2 / B) sum_b g_b g_b^T` = `w EF`: the adapter divides by `w`;
* `fisher_empirical` K-FAC "introduces an additional normalization of the 2nd-order
  statistics by the batch size" (BlockDiagonalCurvature docstring): its `S` is
  `(w^2 / B^2) sum_b Ds Ds^T`, the protocol's `(w / B) sum_b Ds Ds^T` times `c`; the adapter
  multiplies that `S` by `k = 1/c` and solves `(k K + lambda I)^{-1} v` as
  `k^{-1} (K + (lambda / k) I)^{-1} v` (for "factored" the identity holds exactly too, since
  `pi` absorbs `k`: `pi(A, k S) = pi(A, S) / sqrt(k)`).

These constants are the only changes; a disagreement beyond them is a finding
(docs/findings.md). Computation is in float64 (the methods run in a 64-bit context,
`verify.adapters._x64`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ngd_ref import Problem
from verify.adapters._jax_model import JaxModel, activation, jax_model
from verify.adapters._x64 import in_x64

__all__ = ["KfacJax"]

#: protocol loss -> kfac-jax registration (losses absent here have none in kfac-jax)
_REGISTERED = ("mse", "softmax_cross_entropy", "sigmoid_cross_entropy", "nll_probs")
#: K-FAC kind -> kfac-jax estimation mode
_MODES = {"fisher": "fisher_exact", "ggn": "ggn_exact", "empirical": "fisher_empirical"}


@dataclasses.dataclass(frozen=True)
class _Setup:
    """A problem in kfac-jax's terms.

    Attributes:
        model: the JAX model (Flax-layout params, canonical <-> ravel maps).
        func: `(params, (inputs, targets)) -> h`, with the layers and the loss registered.
        loss_only: the same with only the loss registered, for `ExplicitExactCurvature`,
            which tags all parameters as one generic block itself (a function with dense
            layers registered raises "Reusing variable in a second block" there).
        args: `(params, (inputs, targets))`, the function arguments kfac-jax traces.
        weight: `w = c B`, the registered loss weight.
    """

    model: JaxModel
    func: Callable[..., Any]
    loss_only: Callable[..., Any]
    args: tuple[Any, Any]
    weight: float


@in_x64
class KfacJax:
    """kfac-jax's curvature estimators as a port (float64)."""

    name = "kfac-jax"
    dtype = "float64"

    def __init__(self) -> None:
        import kfac_jax  # noqa: F401 -- fail at construction when absent

    # -- translation -------------------------------------------------------------------------
    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _setup(problem: Problem) -> _Setup:
        import jax
        import jax.numpy as jnp
        import kfac_jax

        if problem.loss not in _REGISTERED:
            raise NotImplementedError(f"kfac-jax has no loss registration for {problem.loss!r}")
        model = jax_model(problem)
        weight = problem.scale * problem.batch_size
        acts = [activation(layer.activation) for layer in problem.layers]
        last = len(acts) - 1

        def func(params, batch, register_layers=True):
            a, targets = batch
            for i, (layer, phi) in enumerate(zip(params, acts, strict=True)):
                s = a @ layer["kernel"] + layer["bias"]
                if register_layers:
                    s = kfac_jax.register_dense(s, a, layer["kernel"], layer["bias"])
                if i == last and problem.loss == "nll_probs":
                    # the softmax is the categorical distribution's link: register its logits
                    kfac_jax.register_categorical_predictive_distribution(s, targets, weight=weight)
                a = phi(s)
            if problem.loss == "mse":
                kfac_jax.register_squared_error_loss(a, targets, weight=weight / 2)
            elif problem.loss == "softmax_cross_entropy":
                kfac_jax.register_softmax_cross_entropy_loss(a, targets, weight=weight)
            elif problem.loss == "sigmoid_cross_entropy":
                kfac_jax.register_sigmoid_cross_entropy_loss(a, targets, weight=weight)
            return model.scale * jnp.sum(jax.vmap(model.per_example_loss)(targets, a))

        return _Setup(
            model,
            func,
            functools.partial(func, register_layers=False),
            (model.params, (model.inputs, model.targets)),
            weight,
        )

    @staticmethod
    def _decline_ggn(problem: Problem) -> None:
        if problem.loss == "nll_probs":
            raise NotImplementedError(
                "kfac-jax's GGN is taken at the registered logits; the "
                "protocol's nll_probs GGN (through the probabilities) has "
                "no counterpart (docs/findings.md)"
            )

    def _permutation(self, setup: _Setup) -> np.ndarray:
        """`P` with `canonical = P @ raveled`."""
        import jax.numpy as jnp

        n = setup.model.problem.n_params
        return np.stack([setup.model.from_raveled(jnp.asarray(e)) for e in np.eye(n)], axis=1)

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _implicit(problem: Problem):
        import jax
        import kfac_jax

        setup = KfacJax._setup(problem)
        exact = kfac_jax.ImplicitExactCurvature(setup.func)
        return setup, {
            "hessian": jax.jit(lambda v: exact.multiply_hessian(setup.args, v)),
            "ggn": jax.jit(lambda v: exact.multiply_ggn(setup.args, v)),
            "fisher": jax.jit(lambda v: exact.multiply_fisher(setup.args, v)),
        }

    def _product(self, problem: Problem, which: str, v) -> np.ndarray:
        setup, products = self._implicit(problem)
        return setup.model.canonical(products[which](setup.model.tree(np.asarray(v))))

    @staticmethod
    @functools.lru_cache(maxsize=128)
    def _explicit_fn(problem: Problem, mode: str):
        """Jit the dense matrix of `ExplicitExactCurvature` in `mode`, `ravel_pytree` order."""
        import jax
        import kfac_jax

        setup = KfacJax._setup(problem)
        estimator = kfac_jax.ExplicitExactCurvature(setup.loss_only, default_estimation_mode=mode)

        @jax.jit
        def dense(args):
            rng = jax.random.PRNGKey(0)
            state = estimator.init(rng, args, None, None)
            return estimator.to_dense_matrix(
                _one_exact_update(estimator, state, rng, args, problem.batch_size))

        return setup, dense

    def _explicit(self, problem: Problem, mode: str) -> np.ndarray:
        setup, dense = self._explicit_fn(problem, mode)
        perm = self._permutation(setup)
        return perm @ np.asarray(dense(setup.args), dtype=np.float64) @ perm.T

    @staticmethod
    @functools.lru_cache(maxsize=128)
    def _kfac(problem: Problem, kind: str):
        """Build the K-FAC estimator, jitted `factors(args)` and `solve(args, v, damping, exact)`.

        Both start from a fresh state and run one exact update in `kind`'s estimation mode.
        Also returns `k`, with protocol `S = k *` kfac-jax's `S` (module docstring).
        """
        import jax
        import kfac_jax

        setup = KfacJax._setup(problem)
        if kind not in _MODES:
            raise NotImplementedError(f"unknown K-FAC kind {kind!r}")
        estimator = kfac_jax.BlockDiagonalCurvature(
            setup.func, default_estimation_mode=_MODES[kind], auto_register_tags=False
        )

        def estimate(args):
            rng = jax.random.PRNGKey(0)
            state = estimator.init(rng, args, exact_powers_to_cache=-1, approx_powers_to_cache=-1)
            return _one_exact_update(estimator, state, rng, args, problem.batch_size)

        @jax.jit
        def factors(args):
            state = estimate(args)
            return [
                tuple(f.value for f in block_state.factors) for block_state in state.blocks_states
            ]

        @functools.partial(jax.jit, static_argnums=3)
        def solve(args, v, damping, exact):
            state = estimator.update_cache(
                estimate(args),
                identity_weight=damping,
                exact_powers=-1 if exact else None,
                approx_powers=None if exact else -1,
                eigenvalues=False,
                pmap_axis_name=None,
            )
            return estimator.multiply_inverse(
                state,
                v,
                identity_weight=damping,
                exact_power=exact,
                use_cached=True,
                pmap_axis_name=None,
            )

        estimate(setup.args)  # finalizes the estimator: its blocks exist from here on
        if any(block.fixed_scale() != 1.0 for block in estimator.blocks):
            raise NotImplementedError("a kfac-jax block carries a scale; dense blocks carry none")
        k = 1.0 / problem.scale if kind == "empirical" else 1.0
        return setup, factors, solve, k

    # -- capabilities ------------------------------------------------------------------------
    def loss(self, problem: Problem):
        """`h` from the registered losses: `sum_b w L_b / B`."""
        import kfac_jax

        setup = self._setup(problem)
        estimator = kfac_jax.BlockDiagonalCurvature(setup.func, auto_register_tags=False)
        return float(estimator.compute_func_from_registered(setup.args, problem.batch_size))

    def hvp(self, problem: Problem, v):
        """`H v` by `ImplicitExactCurvature.multiply_hessian`."""
        return self._product(problem, "hessian", v)

    def ggn_vp(self, problem: Problem, v):
        """`G v` by `ImplicitExactCurvature.multiply_ggn`."""
        self._decline_ggn(problem)
        return self._product(problem, "ggn", v)

    def fisher_vp(self, problem: Problem, v):
        """`F v` by `ImplicitExactCurvature.multiply_fisher`."""
        return self._product(problem, "fisher", v)

    def hessian(self, problem: Problem):
        """Dense H: one `multiply_hessian` per basis vector."""
        return np.stack([self.hvp(problem, e) for e in np.eye(problem.n_params)], axis=1)

    def ggn(self, problem: Problem):
        """Dense G: `ExplicitExactCurvature`, mode `ggn_exact`."""
        self._decline_ggn(problem)
        return self._explicit(problem, "ggn_exact")

    def fisher(self, problem: Problem):
        """Dense F: `ExplicitExactCurvature`, mode `fisher_exact`."""
        return self._explicit(problem, "fisher_exact")

    def empirical_fisher(self, problem: Problem):
        """Dense EF: `ExplicitExactCurvature`, mode `fisher_empirical`, divided by `w`."""
        return self._explicit(problem, "fisher_empirical") / self._setup(problem).weight

    def kfac_factors(self, problem: Problem, kind: str):
        """`[(A_l, S_l)]`: the dense blocks' factors (`S` times `k` for kind empirical)."""
        if kind == "ggn":
            self._decline_ggn(problem)
        setup, factors, _, k = self._kfac(problem, kind)
        return [
            (np.asarray(a, dtype=np.float64), k * np.asarray(s, dtype=np.float64))
            for a, s in factors(setup.args)
        ]

    def kfac_solve(self, problem: Problem, v, damping, method, kind="fisher"):
        """Damped K-FAC solve: cached `multiply_inverse`, exact ("eigen") or pi-adjusted."""
        if method not in ("eigen", "factored"):
            raise NotImplementedError(f"unknown damping method {method!r}")
        if kind == "ggn":
            self._decline_ggn(problem)
        setup, _, solve, k = self._kfac(problem, kind)
        out = solve(setup.args, setup.model.tree(np.asarray(v)), damping / k, method == "eigen")
        return setup.model.canonical(out) / k


def _one_exact_update(estimator, state, rng, args, batch_size: int):
    """Replace `state`'s curvature estimate by the one batch's (no EMA, no damping)."""
    return estimator.update_curvature_matrix_estimate(
        state, ema_old=0.0, ema_new=1.0, identity_weight=0.0, batch_size=batch_size, rng=rng,
        func_args=args)
