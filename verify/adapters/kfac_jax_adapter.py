"""`kfac-jax` (DeepMind, 0.0.8): exact curvature and K-FAC behind the protocol.

kfac-jax is used as its documentation tells a user to: the network is written in JAX with
every dense layer registered by `kfac_jax.register_dense(s, a, kernel, bias)`, every
convolution (PROTOCOL s12) by `kfac_jax.register_conv2d(s, image, kernel, bias, **params)`
with the `conv_general_dilated` parameters (NCHW images, HWIO kernels:
`verify.adapters._jax_conv`), and the loss
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
    kfac_factors           BlockDiagonalCurvature (DenseTwoKroneckerFactored blocks,
                           Conv2DTwoKroneckerFactored for convolutions: s12's expand), modes
                           fisher_exact / ggn_exact / fisher_empirical: the blocks' two factors
    kfac_solve             the same estimator, `update_cache` + `multiply_inverse(...,
                           use_cached=True)` with `exact_power=True` ("eigen": eigenbases of the
                           factors, Martens s10) or `False` (pi-adjusted factored damping,
                           seed 002 eq. (24)), as the optimizer does
    optimizer_trajectory   `kfac_jax.Optimizer` itself, method `kfac` only
                           (`verify/adapters/_kfac_jax_optimizer.py`)
    mc_kfac_factors        BlockDiagonalCurvature(num_samples=S) in mode fisher_gradients
                           (`estimator="targets"`: sampled targets, the same for every layer)
                           or fisher_curvature_prop (`"sketch"`: Rademacher vectors times the
                           loss's Fisher factor), `rng = PRNGKey(seed)`,
                           `should_vmap_samples=True` (the scan over draws, the default, is a
                           weighted moving average with the same keys and the same result)

Layout (no numbers touched): parameters are Flax-layout `[{"kernel": (n_in, n_out), "bias":
(n_out,)}]` (`verify.adapters._jax_model`); vectors and dense matrices go through
`ravel_pytree` order and `ngd_ref.from_flax`. A dense block's factors are over the array
`[kernel; bias]` of shape `(n_in + 1, n_out)` = `Wbar^T`, whose row-major vectorization is the
canonical `vec(Wbar)`; its input factor has the bias coordinate last, so `(A, S)` are the
protocol's (PROTOCOL s4) as they stand. A convolution's kernel is HWIO `(k_h, k_w, c_in,
c_out)`, `K[u, v, c, o] = W[o, (c,u,v)]`; its block flattens it to `(k_h k_w c_in, c_out)`, so
its `A` is over the patch in (kernel row, kernel column, channel) order, bias last, and is
permuted to the protocol's (channel, kernel row, kernel column) order.

Convolutions (PROTOCOL s12; docs/findings.md, kfac-jax findings 13-15): a
`Conv2DTwoKroneckerFactored` block normalizes both factors by `B T` (T output positions) and
carries `fixed_scale() = T`; its curvature is `fixed_scale * (A (x) S)`
(`CurvatureBlock.multiply_matpower`), which is s12's K-FAC-expand with `A_l = T A`,
`S_l = S`: the adapter returns `(fixed_scale * A, S)` for every block (dense blocks: scale 1),
and the solves are kfac-jax's own (the scale is applied inside `multiply_inverse`).
kfac-jax has no K-FAC-reduce: `approx="reduce"` on a convolutional problem is declined.

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
from verify.adapters._jax_conv import conv_preactivation, hwio_patch_order
from verify.adapters._jax_model import JaxModel, activation, jax_model
from verify.adapters._kfac_jax_optimizer import KfacJaxOptimizerMixin
from verify.adapters._x64 import in_x64

__all__ = ["KfacJax"]

#: protocol loss -> kfac-jax registration (losses absent here have none in kfac-jax)
_REGISTERED = ("mse", "softmax_cross_entropy", "sigmoid_cross_entropy", "nll_probs")
#: K-FAC kind -> kfac-jax estimation mode
_MODES = {"fisher": "fisher_exact", "ggn": "ggn_exact", "empirical": "fisher_empirical"}
#: s11 `mc_kfac_factors` estimator -> kfac-jax's sampled estimation mode
_SAMPLED_MODES = {"targets": "fisher_gradients", "sketch": "fisher_curvature_prop"}


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
class KfacJax(KfacJaxOptimizerMixin):
    """kfac-jax's curvature estimators and `Optimizer` as a port (float64)."""

    name = "kfac-jax"
    dtype = "float64"
    layer_kinds = ("dense", "conv2d")  # PROTOCOL s12: `register_conv2d`, NCHW / HWIO

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
            for i, (layer, prm, phi) in enumerate(zip(problem.layers, params, acts,
                                                       strict=True)):
                if layer.is_convolution:  # PROTOCOL s12, NCHW / HWIO (`_jax_conv`)
                    image, s, options = conv_preactivation(layer, prm["kernel"], prm["bias"], a)
                    if register_layers:
                        s = kfac_jax.register_conv2d(s, image, prm["kernel"], prm["bias"],
                                                     **options)
                    s = s.reshape(a.shape[0], -1)
                else:
                    s = a @ prm["kernel"] + prm["bias"]
                    if register_layers:
                        s = kfac_jax.register_dense(s, a, prm["kernel"], prm["bias"])
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
        Also returns `k`, with protocol `S = k *` kfac-jax's `S` (module docstring), and the
        estimator's blocks, one per layer (`_protocol_pairs` reads their `fixed_scale`).
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
        k = 1.0 / problem.scale if kind == "empirical" else 1.0
        return setup, factors, solve, k, _checked_blocks(problem, estimator.blocks)

    @staticmethod
    def _sampled_kfac(problem: Problem, estimator: str, num_samples: int, vmap: bool = True):
        """`(setup, factors)`: `factors(args, seed)` of a sampled mode with S draws per case.

        `vmap`: kfac-jax's `should_vmap_samples` (the draws vectorized and their statistics
        averaged; otherwise a `lax.scan` of S moving-average updates, far slower for large S).
        The jitted function depends on the problem's structure only (its arrays are `args`),
        so it is compiled once per structure: the harness hands every call a fresh copy of
        the problem (`verify.harness.fresh_problem`), and problems hash by identity.
        """
        return KfacJax._setup(problem), _compiled_sampled(problem, estimator, int(num_samples),
                                                          vmap)[0]

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

    def kfac_factors(self, problem: Problem, kind: str, approx: str = "expand"):
        """`[(A_l, S_l)]`: the blocks' factors (`_protocol_pairs`), `S` times `k` (empirical).

        `A` is times the block's `fixed_scale` (T for a convolution, in the protocol's patch
        order); `approx="reduce"` on a convolutional problem is declined (module docstring).
        """
        _decline_reduce(problem, approx)
        if kind == "ggn":
            self._decline_ggn(problem)
        setup, factors, _, k, blocks = self._kfac(problem, kind)
        return _protocol_pairs(problem, blocks, factors(setup.args), k)

    def kfac_solve(self, problem: Problem, v, damping, method, kind="fisher",
                   approx: str = "expand"):
        """Damped K-FAC solve: cached `multiply_inverse`, exact ("eigen") or pi-adjusted."""
        if method not in ("eigen", "factored"):
            raise NotImplementedError(f"unknown damping method {method!r}")
        _decline_reduce(problem, approx)
        if kind == "ggn":
            self._decline_ggn(problem)
        setup, _, solve, k, _ = self._kfac(problem, kind)
        out = solve(setup.args, setup.model.tree(np.asarray(v)), damping / k, method == "eigen")
        return setup.model.canonical(out) / k

    def mc_kfac_factors(self, problem: Problem, num_samples: int, seed: int,
                        estimator: str = "targets", approx: str = "expand"):
        """`[(A_l, S_l)]` of mode fisher_gradients / fisher_curvature_prop (s11).

        Mapped as `kfac_factors`' (`_protocol_pairs`, no constant on S).
        """
        _decline_reduce(problem, approx)
        setup = self._setup(problem)
        factors, curvature = _compiled_sampled(problem, estimator, int(num_samples), True)
        raw = factors(setup.args, int(seed))
        return _protocol_pairs(problem, _checked_blocks(problem, curvature.blocks), raw)


def _decline_reduce(problem: Problem, approx: str) -> None:
    """kfac-jax's convolution block is s12's expand; reduce has no counterpart (declined)."""
    if approx not in ("expand", "reduce"):
        raise NotImplementedError(f"unknown K-FAC approximation {approx!r}")
    if approx == "reduce" and not problem.dense_only:
        raise NotImplementedError(
            "kfac-jax's Conv2DTwoKroneckerFactored is K-FAC-expand (KFC); it has no "
            "K-FAC-reduce (docs/findings.md)")


def _checked_blocks(problem: Problem, blocks) -> tuple:
    """The estimator's blocks, checked to be one Kronecker block of the layer's kind per layer.

    Raises:
        NotImplementedError: another block structure (then the factors have no mapping here).
    """
    import kfac_jax

    kinds = [kfac_jax.Conv2DTwoKroneckerFactored if layer.is_convolution
             else kfac_jax.DenseTwoKroneckerFactored for layer in problem.layers]
    blocks = tuple(blocks)
    if len(blocks) != len(kinds) or not all(
            type(block) is kind for block, kind in zip(blocks, kinds, strict=True)):
        raise NotImplementedError(f"kfac-jax built blocks {[type(b).__name__ for b in blocks]} "
                                  f"for layers {[layer.kind for layer in problem.layers]}")
    return blocks


def _protocol_pairs(problem: Problem, blocks: tuple, raw, k: float = 1.0) -> list:
    """kfac-jax's block factors -> PROTOCOL s4 / s12 (expand) `(A_l, S_l)` (layout, constants).

    A kfac-jax block's curvature is `fixed_scale * (A (x) S)` (`CurvatureBlock.multiply_matpower`
    scales by `self.scale`); a dense block's `fixed_scale` is 1 and a convolution's
    (`Conv2DTwoKroneckerFactored.fixed_scale`) is its number of output positions T, while
    both of its factors are normalized by `B T` (`compute_inputs_stats`,
    `compute_outputs_stats`): `A_l = T A`, `S_l = S` (docs/findings.md). A convolution's
    `A` is over the HWIO patch order and is permuted to the protocol's
    (`verify.adapters._jax_conv.hwio_patch_order`).
    """
    out = []
    for layer, block, (a, s) in zip(problem.layers, blocks, raw, strict=True):
        a = float(block.fixed_scale()) * np.asarray(a, dtype=np.float64)
        if layer.is_convolution:
            order = np.argsort(hwio_patch_order(layer))
            a = a[np.ix_(order, order)]
        out.append((a, k * np.asarray(s, dtype=np.float64)))
    return out



#: jitted sampled-mode factors and their estimator by (structure, estimator, S, vmap); oldest
#: evicted past 64
_COMPILED: dict[tuple, tuple[Callable, Any]] = {}


def _compiled_sampled(problem: Problem, estimator: str, num_samples: int, vmap: bool):
    """The jitted sampled-mode factors of `problem`'s structure (compiled once per key).

    Returns:
        `(factors, estimator)`: the function and the estimator whose blocks its factors are
        (the blocks exist from the first call on).
    """
    import jax
    import kfac_jax

    key = (problem.layers, problem.loss, problem.reduction, problem.batch_size,
           problem.input_shape, estimator, num_samples, vmap)
    if key in _COMPILED:
        return _COMPILED[key]

    setup = KfacJax._setup(problem)
    if estimator not in _SAMPLED_MODES:
        raise NotImplementedError(f"unknown mc_kfac_factors estimator {estimator!r}")
    curvature = kfac_jax.BlockDiagonalCurvature(
        setup.func, default_estimation_mode=_SAMPLED_MODES[estimator],
        auto_register_tags=False, num_samples=num_samples, should_vmap_samples=vmap)

    @jax.jit
    def factors(args, seed):
        state = curvature.init(jax.random.PRNGKey(0), args, exact_powers_to_cache=-1,
                               approx_powers_to_cache=-1)
        state = _one_exact_update(curvature, state, jax.random.PRNGKey(seed), args,
                                  problem.batch_size)
        return [tuple(f.value for f in block.factors) for block in state.blocks_states]

    if len(_COMPILED) >= 64:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = factors, curvature
    return factors, curvature


def _one_exact_update(estimator, state, rng, args, batch_size: int):
    """Replace `state`'s curvature estimate by the one batch's (no EMA, no damping)."""
    return estimator.update_curvature_matrix_estimate(
        state, ema_old=0.0, ema_new=1.0, identity_weight=0.0, batch_size=batch_size, rng=rng,
        func_args=args)
