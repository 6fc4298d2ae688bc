"""Where K-FAC's convolution approximations are exact (PROTOCOL s12), on the dense reference.

A convolution's exact diagonal block of `F`, `G` or `EF` is (Grosse & Martens 2016 s3;
Eschenhagen et al. 2023 s3), with patches `abar_{b,t}`, `J_{b,t} = dz/ds_{l,t}` and the
per-example output-space middle `middle_b` (`F_R`, `H_L` or `dL/dz dL/dz^T`):

    C_ll = c sum_b sum_{t,t'} (abar_{b,t} abar_{b,t'}^T) (x) (J_{b,t}^T middle_b J_{b,t'}).

`conv_block` evaluates this double sum (a route independent of the dense matrices' `J^T M J`).
Per layer, the regimes in which `A_l (x) S_l` equals it (each proved by substituting the
hypothesis into the double sum):

* `ONE_POSITION_ONE_EXAMPLE` (both approximations): `T = 1` (a dense layer, or a kernel
  covering the padded input) and `B = 1`: one term.
* `IDENTICAL_PATCHES_ONE_EXAMPLE` (reduce): `B = 1` and `abar_t = abar` for all t: the block is
  `c abar abar^T (x) Jb^T middle Jb` with `Jb = sum_t J_t`, reduce's product.
* `IDENTICALLY_FED_ONE_EXAMPLE` (reduce): `B = 1` and `J_t = J` for all t: the block is
  `c (sum_t abar_t)(sum_t abar_t)^T (x) J^T middle J = (mean abar)(mean abar)^T (x) c T^2 J^T
  middle J`, reduce's product.
* `NO_CROSS_POSITION_TERMS` (expand): the layer is the last, linear, and the loss is residual
  (mse: `H_L = F_R = I`) with kind fisher or ggn: `J_t = E_t` selects position t's outputs, so
  `J_t^T J_t' = delta_{tt'} I` and the block is `(c sum_b sum_t abar_t abar_t^T) (x) I`,
  expand's product `A_l (x) S_l` with `S_l = c B I`, at any B.

Always (both kinds of every loss): reduce's bias-bias entry block is exact, since the bias row
of every patch is 1: `A_bb = 1` and `S_l = c sum_b Jb^T middle Jb` is the exact bias block.
Expand's bias block `c sum_b sum_t J_t^T middle J_t` misses the cross-position terms.
"""

from __future__ import annotations

import enum

import numpy as np

from ngd_ref._problem import Problem
from ngd_ref._spec import Loss
from ngd_ref._validation import as_member
from ngd_ref.curvature._dense import dense
from ngd_ref.kfac._dense import KfacApprox, KfacKind, _middles

__all__ = ["ConvExactnessRegime", "conv_block", "conv_exactness_regimes", "conv_position_pieces"]


class ConvExactnessRegime(str, enum.Enum):
    """Per-layer hypotheses under which a K-FAC approximation equals the exact block (s12)."""

    ONE_POSITION_ONE_EXAMPLE = "one_position_one_example"
    IDENTICAL_PATCHES_ONE_EXAMPLE = "identical_patches_one_example"
    IDENTICALLY_FED_ONE_EXAMPLE = "identically_fed_one_example"
    NO_CROSS_POSITION_TERMS = "no_cross_position_terms"

    @property
    def approximations(self) -> tuple[KfacApprox, ...]:
        """The approximations this regime makes exact."""
        if self is ConvExactnessRegime.ONE_POSITION_ONE_EXAMPLE:
            return (KfacApprox.EXPAND, KfacApprox.REDUCE)
        if self is ConvExactnessRegime.NO_CROSS_POSITION_TERMS:
            return (KfacApprox.EXPAND,)
        return (KfacApprox.REDUCE,)


def conv_position_pieces(problem: Problem, index: int, kind: KfacKind | str
                         ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per example of layer `index` (float64): `(Abar (d+1, T), J (T, C, c_out), middle (C, C))`.

    `J[t] = J_{b,t} = dz/ds_{l,t}`; a dense layer is `T = 1`.
    """
    kind = as_member(KfacKind, kind, "kind")
    ref = dense(problem)
    layer = problem.layers[index]
    out = []
    for trace, jacs, middle in zip(ref.traces, ref.preactivation_jacobians,
                                   _middles(ref, kind), strict=True):
        cols = trace.abar[index]
        cols = cols if layer.is_convolution else cols[:, None]
        per_t = jacs[index].reshape(-1, jacs[index].shape[1] // layer.n_positions,
                                    layer.n_positions).transpose(2, 0, 1)
        out.append((cols, per_t, middle))
    return out


def conv_block(problem: Problem, index: int, kind: KfacKind | str, *,
               cross: bool = True) -> np.ndarray:
    """The double sum `c sum_b sum_{t,t'} abar_t abar_t'^T (x) J_t^T middle J_t'` (float64).

    With `cross=False` only the `t != t'` terms: what expand's bias block misses (module
    docstring) when restricted to the bias entries.
    """
    total = None
    for cols, per_t, middle in conv_position_pieces(problem, index, kind):
        positions = range(per_t.shape[0])
        for t in positions:
            for u in positions:
                if t == u and not cross:
                    continue
                term = np.kron(np.outer(cols[:, t], cols[:, u]), per_t[t].T @ middle @ per_t[u])
                total = term if total is None else total + term
    if total is None:
        cols, per_t, _ = conv_position_pieces(problem, index, kind)[0]
        size = cols.shape[0] * per_t.shape[2]
        return np.zeros((size, size))
    return problem.scale * total


def conv_exactness_regimes(problem: Problem, index: int,
                           kind: KfacKind | str) -> tuple[ConvExactnessRegime, ...]:
    """The regimes (module docstring) whose hypotheses layer `index` of `problem` satisfies.

    The hypotheses on patches and position Jacobians are checked exactly on the float64
    reference's values (equal entries), so rounding can only make a regime decline.
    """
    kind = as_member(KfacKind, kind, "kind")
    layer = problem.layers[index]
    regimes = []
    one = problem.batch_size == 1
    if one and layer.n_positions == 1:
        regimes.append(ConvExactnessRegime.ONE_POSITION_ONE_EXAMPLE)
    if one and layer.n_positions > 1:
        ((cols, per_t, _),) = conv_position_pieces(problem, index, kind)
        if np.all(cols == cols[:, :1]):
            regimes.append(ConvExactnessRegime.IDENTICAL_PATCHES_ONE_EXAMPLE)
        if np.all(per_t == per_t[:1]):
            regimes.append(ConvExactnessRegime.IDENTICALLY_FED_ONE_EXAMPLE)
    if (layer.is_convolution and layer.n_positions > 1 and index == len(problem.layers) - 1
            and layer.phi.linear and Loss(problem.loss).spec.residual
            and kind is not KfacKind.EMPIRICAL):
        regimes.append(ConvExactnessRegime.NO_CROSS_POSITION_TERMS)
    return tuple(regimes)
