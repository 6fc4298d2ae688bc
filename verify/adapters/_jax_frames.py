"""Frames: many small problems inside one padded "universal" MLP, so they share compilations.

An implementation detail of the `ngd-ref-jax` adapters (`verify.adapters.ngd_ref_jax`); the
harness does not know about it. Compiling `ngd_ref.jax`'s functions for every problem shape
costs seconds per problem, running them milliseconds, so problems are grouped into *frames*
by output size C (a group of `mse` problems whose last activation maps 0 to 0 joins the next
larger C: the extra outputs are exact zeros), and every problem of a frame is embedded in one
universal MLP:

* layers padded with zero weights (the function, and every derivative with respect to the
  problem's own parameters, is unchanged), missing layers replaced by identity layers;
* the activation of each layer chosen by one-hot parameter weights among those that occur
  there in the frame (each candidate is the library's own layer, `ngd_ref.jax.mlp_apply`);
* batches padded with weight-0 examples (`Batch.weights`);
* the loss chosen at run time: `_universal_loss` is a `JaxLoss` whose value and closed-form
  output products `lax.switch` over the library's per-loss functions (`get_jax_loss`) on an
  index the model copies from an extra input column to an extra output column (constant in
  the parameters, so its rows of `J` vanish).

Results are read off at each problem's own coordinates (`Embedded.index`); a curvature
operator is restricted to them by a mask (`P C P^T`), so a damped solve on the frame is the
problem's own solve with exact zeros elsewhere. With the frames planned from the whole zoo
there are 3 frames (C = 3, 4, 6); a problem the plan does not know joins the smallest frame
that holds it (`Frame.holds`), else gets a frame of its own.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ngd_ref import ACTIVATIONS, LOSSES, Loss, Problem, unflatten
from ngd_ref import jax as nj

__all__ = ["Embedded", "Frame", "FramePlan"]


@functools.cache
def _universal_apply(activations: tuple[tuple[str, ...], ...]) -> Callable[..., jax.Array]:
    """MLP whose layer-l activation is `sum_k mix_l[k] phi_k` over `activations[l]`.

    With a one-hot `mix_l` this is exactly the chosen `phi` (a layer with one candidate
    applies it directly). The affine map is the library's layer (`ngd_ref.jax.mlp_apply`
    with the identity), computed once per layer, and each candidate is the library's
    activation (`ngd_ref.jax.ACTIVATIONS_JAX`) of it: the same operations as the library's
    layer with that activation. The last input column (the loss index) is copied to an
    extra last output column. Only the activations that occur at a layer in the frame are
    candidates there: every candidate enlarges the compiled programs.
    """
    affine = nj.mlp_apply(("identity",))
    layers = [[nj.ACTIVATIONS_JAX[name] for name in names] for names in activations]

    def apply(params: dict[str, Any], inputs: jax.Array) -> jax.Array:
        a = inputs[:, :-1]
        for pair, mix, candidates in zip(params["layers"], params["mix"], layers, strict=True):
            s = affine([pair], a)
            a = (candidates[0](s) if len(candidates) == 1 else
                 sum(mix[k] * phi(s) for k, phi in enumerate(candidates)))
        return jnp.concatenate([a, inputs[:, -1:]], axis=1)

    return apply


def _target(loss: str, y: jax.Array) -> jax.Array:
    """Return the loss's own target from the universal `(C,)` float target."""
    if Loss(loss).has_class_labels:
        return y[0].astype(jnp.int32)
    return y[: y.shape[0] // 2] if Loss(loss) is Loss.GAUSSIAN_LOGVAR else y


def _branch(method: str, index: int, loss: str, switched: bool) -> Callable[..., jax.Array]:
    """`(chosen, y, z, *rest) -> JaxLoss.<method>` of `loss`, branch `index` of the switch.

    Under `vmap` (over examples) `lax.switch` evaluates every branch and selects; a branch
    that is not chosen gets `y = 0` and `z = 1/C` (valid for every loss: a label, a count, a
    probability vector), so no branch produces an inf/NaN that would leak into derivatives
    (`0 * inf`). The chosen branch sees its operands unchanged.
    """
    function = getattr(nj.get_jax_loss(loss), method)

    def run(chosen, y, z, *rest):
        own = chosen == index
        if switched:
            z = jnp.where(own, z, jnp.full_like(z, 1.0 / z.shape[0]))
        if method == "fisher_vp":  # F_R(z) does not depend on the target
            return function(z, *rest)
        y = jnp.where(own, y, jnp.zeros_like(y)) if switched else y
        return function(_target(loss, y), z, *rest)

    return run


@functools.cache
def _universal_loss(losses: tuple[str, ...]) -> nj.JaxLoss:
    """Build the `JaxLoss` over outputs `(z, k)` that is `losses[k]` (the library's functions).

    The model copies the loss index `k` into its last output, which does not depend on the
    parameters: its rows of `J` vanish, and the products below leave it out (0).
    """
    def switch(method: str, y, z, *rest):
        chosen = z[-1].astype(jnp.int32)
        branches = [_branch(method, k, loss, len(losses) > 1) for k, loss in enumerate(losses)]
        return jax.lax.switch(chosen, branches, chosen, y, z[:-1], *rest)

    def value(y, z):
        return switch("value", y, z)

    def hessian_vp(y, z, u):
        return jnp.concatenate([switch("hessian_vp", y, z, u[:-1]), jnp.zeros_like(u[-1:])])

    def fisher_vp(z, u):
        return jnp.concatenate([switch("fisher_vp", None, z, u[:-1]), jnp.zeros_like(u[-1:])])

    def sample(key, z):
        raise NotImplementedError("the frames' universal loss samples no targets")

    return nj.JaxLoss("universal:" + ",".join(losses), value, hessian_vp, fisher_vp, sample)


def _layer_activations(problem: Problem, depth: int) -> list[str]:
    """List the activation of each universal layer: own hidden, identity layers, own last."""
    own = [layer.activation for layer in problem.layers]
    return own[:-1] + ["identity"] * (depth - len(own)) + own[-1:]


@dataclasses.dataclass(frozen=True)
class Frame:
    """The universal architecture for C outputs: sizes, batch and candidate activations."""

    outputs: int
    depth: int
    n_in: int
    hidden: int
    batch: int
    activations: tuple[tuple[str, ...], ...]  # per layer, in `ACTIVATIONS` order
    losses: tuple[str, ...]                    # in `LOSSES` order

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> Frame:
        """The smallest frame holding every problem of `problems`."""
        depth = max(len(p.layers) for p in problems)
        widths = [w for p in problems
                  for w in [p.layers[0].n_in] + [lay.n_out for lay in p.layers[:-1]]]
        used = [set(names) for names in zip(*(_layer_activations(p, depth) for p in problems),
                                             strict=True)]
        return cls(max(p.output_dim for p in problems), depth,
                   max(p.layers[0].n_in for p in problems), max(widths),
                   max(p.batch_size for p in problems),
                   tuple(tuple(a for a in ACTIVATIONS if a in names) for names in used),
                   tuple(loss for loss in LOSSES if loss in {p.loss for p in problems}))

    @functools.cached_property
    def objective(self) -> nj.Objective:
        """The universal model and loss, `h = sum_b w_b L_b` (weights carry c and padding)."""
        return nj.Objective(_universal_apply(self.activations), _universal_loss(self.losses),
                            "sum")

    def holds(self, problem: Problem) -> bool:
        """Whether `problem` embeds in this frame as `Frame.of` would have planned it.

        Its outputs are the frame's (or fewer, when the extra ones are exact zeros, `_pads`),
        it is no deeper, wider or larger in batch, and its loss and the activation of each
        universal layer are among the frame's candidates.
        """
        widths = [problem.layers[0].n_in] + [layer.n_out for layer in problem.layers[:-1]]
        outputs_fit = problem.output_dim == self.outputs or (
            problem.output_dim < self.outputs and _pads(problem))
        return (problem.dense_only and outputs_fit and len(problem.layers) <= self.depth
                and problem.layers[0].n_in <= self.n_in and max(widths) <= self.hidden
                and problem.batch_size <= self.batch and problem.loss in self.losses
                and all(name in names for name, names in zip(
                    _layer_activations(problem, self.depth), self.activations, strict=True)))

    def shapes(self) -> list[tuple[int, int]]:
        """`(n_out, n_in)` per universal layer."""
        ins = [self.n_in] + [self.hidden] * (self.depth - 1)
        outs = [self.hidden] * (self.depth - 1) + [self.outputs]
        return list(zip(outs, ins, strict=True))


@dataclasses.dataclass(frozen=True)
class Embedded:
    """A problem inside its frame (float64 numpy leaves).

    Attributes:
        frame: the frame (`OwnFrame` for a problem in its own network, `own_embedding`).
        params: universal params (`{"layers": [(W, b), ...], "mix": [...]}`), or the own
            network's `[(W_l, b_l), ...]`.
        index: `(n,)` flat universal position of each canonical parameter.
        size: N, the number of universal parameters.
        inputs: `(B, n_in + 1)`; the last column is the loss index.
        targets: `(B, C)` universal float targets.
        weights: `(B,)`: c, then 0 for padding.
    """

    frame: Frame | OwnFrame
    params: dict[str, Any] | list[tuple[np.ndarray, np.ndarray]]
    index: np.ndarray
    size: int
    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    def flat(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Place a canonical vector at the problem's universal positions, `fill` elsewhere."""
        out = np.full(values.shape[:-1] + (self.size,), fill)
        out[..., self.index] = values
        return out

    def own(self, values: Any) -> np.ndarray:
        """The problem's canonical entries of a universal vector (last axis)."""
        return np.asarray(values)[..., self.index]

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """`(N,)`: 1 at the problem's own parameters, 0 elsewhere."""
        return self.flat(np.ones(self.index.shape[0]))


def embed(problem: Problem, frame: Frame) -> Embedded:
    """Embed `problem` in `frame` (see the module docstring)."""
    layers = [[np.zeros(shape), np.zeros(shape[0])] for shape in frame.shapes()]
    ids = [[np.full(shape, -1), np.full(shape[0], -1)] for shape in frame.shapes()]
    mix = [np.array([float(name == act) for name in names])
           for act, names in zip(_layer_activations(problem, frame.depth), frame.activations,
                                 strict=True)]
    own = len(problem.layers)
    positions = list(range(own - 1)) + [frame.depth - 1]
    for pos in range(own - 1, frame.depth - 1):  # identity layers carry the signal through
        out, inp = frame.shapes()[pos]
        layers[pos][0] = np.eye(out, inp)
    start = 0
    for layer, pos, (w, b) in zip(problem.layers, positions,
                                  unflatten(problem.layers, problem.params), strict=True):
        layers[pos][0][: layer.n_out, : layer.n_in] = w
        layers[pos][1][: layer.n_out] = b
        count = (layer.n_in + 1) * layer.n_out
        canon = np.arange(start, start + count).reshape(layer.n_in + 1, layer.n_out).T
        ids[pos][0][: layer.n_out, : layer.n_in] = canon[:, : layer.n_in]
        ids[pos][1][: layer.n_out] = canon[:, layer.n_in]
        start += count
    tree = {"layers": [tuple(pair) for pair in layers], "mix": mix}
    id_tree = {"layers": [tuple(pair) for pair in ids], "mix": [np.full(m.shape, -1) for m in mix]}
    flat_ids = np.concatenate([leaf.ravel() for leaf in jax.tree.leaves(id_tree)])
    index = np.empty(problem.n_params, dtype=np.int64)
    index[flat_ids[flat_ids >= 0]] = np.nonzero(flat_ids >= 0)[0]
    inputs = np.zeros((frame.batch, frame.n_in + 1))
    inputs[: problem.batch_size, : problem.layers[0].n_in] = problem.inputs
    inputs[:, -1] = frame.losses.index(problem.loss)
    targets = np.zeros((frame.batch, frame.outputs))
    if Loss(problem.loss).has_class_labels:
        targets[: problem.batch_size, 0] = problem.targets
    else:
        targets[: problem.batch_size, : problem.targets.shape[1]] = problem.targets
    weights = np.zeros(frame.batch)
    weights[: problem.batch_size] = problem.scale
    return Embedded(frame, tree, index, flat_ids.shape[0], inputs, targets, weights)


@dataclasses.dataclass(frozen=True)
class OwnFrame:
    """A problem's own network as its frame (weight sharing has no universal-MLP embedding).

    Attributes:
        objective: `h = sum_b w_b L_b` of `ngd_ref.jax.network_apply(problem.layers)` (the
            weights carry c), compiled once per architecture.
    """

    objective: nj.Objective


def own_embedding(problem: Problem) -> Embedded:
    """The problem in its own network (PROTOCOL s12 convolutions): params `[(W_l, b_l), ...]`.

    `index` maps the canonical `vec([W b])` entries to the positions of `ravel_pytree`.
    """
    objective = nj.Objective(nj.network_apply(problem.layers), problem.loss, "sum")
    params = [(np.asarray(w), np.asarray(b))
              for w, b in unflatten(problem.layers, problem.params)]
    ids, start = [], 0
    for layer in problem.layers:
        rows, cols = layer.weight_shape
        canon = np.arange(start, start + rows * cols).reshape(cols, rows).T
        ids += [canon[:, :-1].ravel(), canon[:, -1]]
        start += rows * cols
    flat_ids = np.concatenate(ids)
    index = np.empty(problem.n_params, dtype=np.int64)
    index[flat_ids] = np.arange(flat_ids.shape[0])
    weights = np.full(problem.batch_size, problem.scale)
    return Embedded(OwnFrame(objective), params, index, problem.n_params,
                    np.asarray(problem.inputs), np.asarray(problem.targets), weights)


def _pads(problem: Problem) -> bool:
    """Whether extra outputs `z = 0`, `y = 0` leave h and its derivatives unchanged.

    True for `mse` (a zero term, a block `H_L = F_R = I` uncoupled from the own outputs)
    when the last activation maps 0 to 0 elementwise (the padded rows get `phi(0)`).
    """
    phi = problem.layers[-1].phi
    return Loss(problem.loss) is Loss.MSE and phi.elementwise and phi.zero_at_zero


def _groups(problems: Sequence[Problem]) -> list[list[Problem]]:
    """Problems grouped by output size C; a group whose problems all `_pads` joins the next C.

    A frame costs ~2 s of tracing and compilation even when small.
    """
    by_outputs: dict[int, list[Problem]] = {}
    for problem in problems:
        by_outputs.setdefault(problem.output_dim, []).append(problem)
    sizes = sorted(by_outputs)
    for small, large in zip(sizes, sizes[1:], strict=False):
        if all(_pads(problem) for problem in by_outputs[small]):
            by_outputs[large] = by_outputs.pop(small) + by_outputs[large]
    return [group for _, group in sorted(by_outputs.items())]


def _key(problem: Problem) -> tuple[Any, ...]:
    """A content key: the harness hands the port a fresh copy of the problem on every call."""
    arrays = (problem.params, problem.inputs, problem.targets)
    return (problem.name, tuple(problem.layers), problem.loss, problem.reduction,
            *(np.asarray(a).tobytes() for a in arrays))


class FramePlan:
    """Which frame each problem lives in, and its embedding (cached by content).

    Args:
        problems: the problems the adapter will be asked about (grouped into frames);
            any other problem gets a frame of its own on first use.
    """

    def __init__(self, problems: Sequence[Problem] = ()) -> None:
        self._frames: dict[tuple[Any, ...], Frame] = {}
        groups = _groups([problem for problem in problems if problem.dense_only])
        #: the planned problems, in the caller's order (e.g. to compile their programs early)
        self.problems: list[Problem] = list(problems)
        for group in groups:
            frame = Frame.of(group)
            self._frames.update({_key(problem): frame for problem in group})
        self._embedded: dict[tuple[Any, ...], Embedded] = {}

    def _frame_holding(self, problem: Problem) -> Frame:
        """A frame already in use that holds an unplanned problem, else a new one of its own.

        The harness hands variants of a planned problem (other parameters, the reused-name
        twin): they share its frame and its compiled programs instead of each compiling
        its own (~2 s per kernel, and XLA's code pages accumulate over a long run).
        """
        known = sorted(self.frames, key=lambda frame: (frame.depth * frame.hidden * frame.batch,
                                                      dataclasses.astuple(frame)))
        return next((frame for frame in known if frame.holds(problem)), Frame.of([problem]))

    @property
    def frames(self) -> set[Frame]:
        """The distinct frames planned or created so far."""
        return set(self._frames.values())

    def embedded(self, problem: Problem) -> Embedded:
        """The problem embedded in its frame."""
        key = _key(problem)
        if key not in self._embedded and not problem.dense_only:
            self._embedded[key] = own_embedding(problem)
        elif key not in self._embedded:
            frame = self._frames.get(key) or self._frame_holding(problem)
            self._frames[key] = frame
            self._embedded[key] = embed(problem, frame)
        return self._embedded[key]
