"""Hypothesis strategies for valid `Problem`s, and the deterministic problems of `--fuzz N`.

`problems(...)` draws a loss, a depth, widths, hidden activations, a batch size, a reduction, a
parameter scale (the conditioning knob) and a data seed, and builds the problem with
`ngd_ref.zoo.make_problem`, so every value is a dyadic rational exact in float32 (PROTOCOL
s8's "exactly representable" promise extends to generated problems). Sizes are drawn with
`st.integers(min_value=1, ...)` and the scale exponent around 0, so hypothesis shrinks toward
one layer, width 1-2, one example and unit scale: a failing identity is reported on the
smallest network that breaks it.

Validity by construction: categorical losses get at least 2 classes, `gaussian_logvar` an
even output size, `nll_probs` a `softmax` last layer; everything else goes through `Problem`'s
own validation.

`generate(n, seed)` draws from the same parameter space with a numpy generator: the same
`(n, seed)` always gives the same problems (the `--fuzz N --seed S` of the CLI), cycling
through the losses so that even a small N covers several.

Profiles (`register_profiles()`): `ci` (few examples, derandomized, no deadline), `dev`
(more examples) and `fuzz` (many); select one with `settings.load_profile(name)` or
`HYPOTHESIS_PROFILE=<name>` in the test suite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ngd_ref import LOSSES, Loss, Problem
from ngd_ref._zoo import HIDDEN_ACTIVATIONS, make_problem
from verify._strategies_conv import conv_problems

__all__ = [
    "TRAJECTORY_FAMILIES",
    "ProblemSpace",
    "conv_problems",
    "draw_trajectory_setting",
    "generate",
    "generate_trajectory_settings",
    "problems",
    "register_profiles",
    "trajectory_settings",
]

REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class ProblemSpace:
    """The parameter space shared by `problems` and `generate`.

    Attributes:
        losses: losses to draw from.
        activations: hidden-layer activations to draw from.
        max_layers: at most this many layers (>= 1).
        max_width: widths of inputs and hidden layers in `[1, max_width]`; outputs in
            `[2, max_width]` (classes) or `2 * [1, max_width // 2]` (gaussian_logvar).
        max_batch: batch sizes in `[1, max_batch]`.
        reductions: subset of `("mean", "sum")`.
        conditioning: `(lo, hi)` integer exponents; parameters are scaled by `2^k`, `k` in
            `[lo, hi]`, on top of the `1/sqrt(fan_in)` initialization: larger k saturates
            activations and spreads the curvature spectrum.
    """

    losses: Sequence[str] = LOSSES
    activations: Sequence[str] = HIDDEN_ACTIVATIONS
    max_layers: int = 3
    max_width: int = 4
    max_batch: int = 4
    reductions: Sequence[str] = REDUCTIONS
    conditioning: tuple[int, int] = (-1, 1)

    def __post_init__(self) -> None:
        bad_losses = [loss for loss in self.losses if loss not in LOSSES]
        if not self.losses or bad_losses:
            raise ValueError(f"losses: expected a non-empty subset of {LOSSES}, "
                             f"got {self.losses!r}")
        bad_acts = [a for a in self.activations if a not in HIDDEN_ACTIVATIONS]
        if not self.activations or bad_acts:
            raise ValueError(f"activations: expected a non-empty subset of {HIDDEN_ACTIVATIONS}, "
                             f"got {self.activations!r}")
        for field, low in (("max_layers", 1), ("max_width", 2), ("max_batch", 1)):
            value = getattr(self, field)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{field}: expected an int >= {low}, got {value!r}")
        if not self.reductions or any(r not in REDUCTIONS for r in self.reductions):
            raise ValueError(f"reductions: expected a non-empty subset of {REDUCTIONS}, "
                             f"got {self.reductions!r}")
        lo, hi = self.conditioning
        if not (isinstance(lo, int) and isinstance(hi, int) and lo <= hi):
            raise ValueError(f"conditioning: expected integer exponents (lo, hi) with lo <= hi, "
                             f"got {self.conditioning!r}")


def _output_width(loss: str, drawn: int) -> int:
    """Map a drawn width in [1, max_width] to a valid output size for `loss`."""
    if loss == Loss.GAUSSIAN_LOGVAR.value:
        return 2 * max(1, drawn // 2)
    if Loss(loss).has_class_labels:
        return max(2, drawn)
    return drawn


def build(loss: str, widths: Sequence[int], hidden: Sequence[str], batch: int, reduction: str,
          scale_exponent: int, data_seed: int) -> Problem:
    """The problem for one point of the space (shared by `problems` and `generate`).

    Args:
        loss: the loss.
        widths: `(n_0, ..., n_L)`; the last entry is mapped by `_output_width`.
        hidden: activations of the `L - 1` hidden layers.
        batch: B.
        reduction: mean or sum.
        scale_exponent: parameters are multiplied by `2^scale_exponent` (exact).
        data_seed: seed of `make_problem`'s data.
    """
    sizes = (*widths[:-1], _output_width(loss, widths[-1]))
    last = "softmax" if loss == Loss.NLL_PROBS.value else "identity"
    activations = (*hidden, last)
    base = make_problem(tuple(sizes), activations, loss, batch, reduction=reduction, seed=data_seed)
    name = (f"gen-{'x'.join(map(str, sizes))}-{'-'.join(activations)}-{loss}-b{batch}-"
            f"{reduction}-k{scale_exponent}-s{data_seed}")
    return base.replace(name=name, params=base.params * 2.0**scale_exponent)


@st.composite
def _problems(draw, space: ProblemSpace) -> Problem:
    loss = draw(st.sampled_from(list(space.losses)))
    layers = draw(st.integers(min_value=1, max_value=space.max_layers))
    widths = draw(st.lists(st.integers(min_value=1, max_value=space.max_width),
                           min_size=layers + 1, max_size=layers + 1))
    hidden = draw(st.lists(st.sampled_from(list(space.activations)),
                           min_size=layers - 1, max_size=layers - 1))
    batch = draw(st.integers(min_value=1, max_value=space.max_batch))
    reduction = draw(st.sampled_from(list(space.reductions)))
    lo, hi = space.conditioning
    exponent = draw(st.integers(min_value=lo, max_value=hi)) if lo < hi else lo
    data_seed = draw(st.integers(min_value=0, max_value=2**16))
    return build(loss, widths, hidden, batch, reduction, exponent, data_seed)


def problems(*, losses: Sequence[str] = LOSSES, activations: Sequence[str] = HIDDEN_ACTIVATIONS,
             max_layers: int = 3, max_width: int = 4, max_batch: int = 4,
             reductions: Sequence[str] = REDUCTIONS,
             conditioning: tuple[int, int] = (-1, 1),
             conv: bool = False) -> st.SearchStrategy[Problem]:
    """A strategy of valid problems (see `ProblemSpace` for the arguments).

    Example:
        >>> from hypothesis import given
        >>> @given(problems(losses=["mse"], max_layers=2))
        ... def test_something(problem): ...

    Raises:
        ValueError: for an invalid argument, naming it.

    With `conv=True` the problems have convolutions (`verify._strategies_conv.conv_problems`;
    `max_layers`, `max_width`, `reductions` and `conditioning` do not apply); the default
    draws stay dense until every consumer handles convolutions.
    """
    if conv:  # PROTOCOL s12's convolutional problems (verify._strategies_conv)
        return conv_problems(losses=losses, activations=activations, max_batch=max_batch)
    lo, hi = conditioning
    space = ProblemSpace(tuple(losses), tuple(activations), max_layers, max_width, max_batch,
                         tuple(reductions), (lo, hi))
    return _problems(space)


def generate(n: int, seed: int, quick: bool = False) -> list[Problem]:
    """`n` deterministic problems from the default space (`quick`: at most 2 layers, width 3).

    Losses cycle through `LOSSES` (offset by the seed); the rest is drawn from
    `np.random.default_rng(seed)`.

    Raises:
        ValueError: if `n < 0`.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    space = ProblemSpace(max_layers=2, max_width=3, max_batch=3) if quick else ProblemSpace()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        loss = space.losses[(i + seed) % len(space.losses)]
        layers = int(rng.integers(1, space.max_layers + 1))
        widths = [int(w) for w in rng.integers(1, space.max_width + 1, layers + 1)]
        hidden = [str(a) for a in rng.choice(list(space.activations), layers - 1)]
        batch = int(rng.integers(1, space.max_batch + 1))
        reduction = str(rng.choice(list(space.reductions)))
        exponent = int(rng.integers(space.conditioning[0], space.conditioning[1] + 1))
        out.append(build(loss, widths, hidden, batch, reduction, exponent,
                         int(rng.integers(0, 2**16))))
    return out


def register_profiles() -> None:
    """Register the hypothesis profiles `ci`, `dev` and `fuzz` (idempotent)."""
    slow = [HealthCheck.too_slow]
    settings.register_profile("ci", max_examples=8, derandomize=True, deadline=None,
                              suppress_health_check=slow)
    settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=slow)
    settings.register_profile("fuzz", max_examples=300, deadline=None, suppress_health_check=slow)


# -- optimizer trajectories (PROTOCOL s10): method x hyperparameters x batch sequences ----------
#: every grid value is exact in float32 (PROTOCOL s10); dampings and Shampoo's eps are powers of
#: two times the problem's own scale, so the draws stay meaningful at any conditioning
_LRS = (0.125, 0.25, 0.5, 1.0, 1.5)
_EMAS = (0.0, 0.5, 0.75, 0.875)
_FACTORS = (1.5, 2.0, 4.0)
_WARM = (0.0, 0.5, 0.875, 1.0)
_BETA2 = (0.0, 0.5, 0.875, 0.9375)
#: the harness's families of `optimizer_trajectory` (one per method and K-FAC step rule)
TRAJECTORY_FAMILIES = ("damped_newton", "hessian_free", "kfac_fixed", "kfac_rescaled",
                       "kfac_momentum_qm", "shampoo", "lbfgs")


def _power_of_two(value: float) -> float:
    return float(2.0 ** round(np.log2(value))) if np.isfinite(value) and value > 0 else 1.0


def draw_trajectory_setting(choose, problem: Problem, family: str) -> tuple[str, dict]:
    """One `(method, hyper)` of `family` for `problem`, each choice made by `choose(options)`.

    `choose` picks one element of a sequence (a hypothesis `draw(sampled_from(...))` or a
    numpy generator), so `trajectory_settings` and `generate_trajectory_settings` draw from
    the same space. The damping is `2^k ||C||_2` (k in [-6, 0]) for the chosen curvature,
    Shampoo's eps `2^k ||g||^2`, a numeric L-BFGS gamma `2^k / ||G||_2` (k in [-2, 2]).
    """
    from ngd_ref.dense import DenseCurvature

    ref = DenseCurvature(problem)
    natural = Loss(problem.loss).outputs_are_natural_parameters

    def scale(curvature: str) -> float:
        return _power_of_two(float(np.linalg.norm(ref.matrix(curvature), 2)))

    def adapt() -> dict:
        return dict(adapt_damping=choose((True, False)), damping_every=choose((1, 2, 3)),
                    damping_factor=choose(_FACTORS))

    shift = choose(tuple(2.0**k for k in range(-6, 1)))
    if family == "damped_newton":
        curvature = choose(("hessian", "ggn", "fisher", "empirical_fisher"))
        return "damped_newton", dict(curvature=curvature, lr=choose(_LRS),
                                     damping=scale(curvature) * shift, **adapt())
    if family == "hessian_free":
        curvature = choose(("ggn", "fisher") if natural else ("fisher",))
        return "hessian_free", dict(curvature=curvature, lr=choose(_LRS),
                                    damping=scale(curvature) * shift,
                                    cg_iters=choose((1, 2, 3, 4)),
                                    cg_warm_start=choose(_WARM), **adapt())
    if family.startswith("kfac_"):
        kind = choose(("fisher", "empirical", "ggn") if natural else ("fisher", "empirical"))
        curvature = {"fisher": "fisher", "empirical": "empirical_fisher", "ggn": "ggn"}[kind]
        return "kfac", dict(kind=kind, ema=choose(_EMAS), ema_bias_correction=choose((True, False)),
                            stats_every=choose((1, 2, 3)), inverse_every=choose((1, 2, 3, 4)),
                            damping=scale(curvature) * shift,
                            damping_method=choose(("eigen", "factored")),
                            step_rule=family.removeprefix("kfac_"), lr=choose(_LRS),
                            momentum=choose((0.0, 0.5, 0.875)), **adapt())
    if family == "shampoo":
        g2 = _power_of_two(float(ref.gradient @ ref.gradient))
        return "shampoo", dict(lr=choose(_LRS[:3]), eps=g2 * choose((0.0625, 0.25, 1.0, 4.0)),
                               beta2=choose(_BETA2), root_every=choose((1, 2, 3)))
    if family == "lbfgs":
        gamma = choose(("scaled", *(2.0**k / scale("ggn" if natural else "fisher")
                                    for k in range(-2, 3))))
        return "lbfgs", dict(lr=choose(_LRS), memory=choose((0, 1, 2, 3, 4)), gamma=gamma)
    raise ValueError(f"family: expected one of {', '.join(TRAJECTORY_FAMILIES)}, got {family!r}")


@st.composite
def trajectory_settings(draw, problem: Problem, families: Sequence[str] = TRAJECTORY_FAMILIES,
                        max_steps: int = 6):
    """A strategy of `(family, method, hyper, batches)` for `problem` (PROTOCOL s10).

    Batches: `K` in `[1, max_steps]` batches of the problem's B, drawn as the problem's inputs
    plus dyadic noise (multiples of 1/16) and its targets rolled, from a drawn seed.
    """
    family = draw(st.sampled_from(list(families)))
    method, hyper = draw_trajectory_setting(lambda options: draw(st.sampled_from(list(options))),
                                            problem, family)
    steps = draw(st.integers(min_value=1, max_value=max_steps))
    seed = draw(st.integers(min_value=0, max_value=2**16))
    rng = np.random.default_rng(seed)
    batches = [(problem.inputs, problem.targets)]
    for k in range(1, steps):
        noise = np.round(rng.normal(size=problem.inputs.shape) * 4) / 16
        batches.append((problem.inputs + noise, np.roll(problem.targets, k, axis=0)))
    return family, method, hyper, batches


def generate_trajectory_settings(problem: Problem, family: str, n: int,
                                 seed: int) -> list[tuple[str, dict]]:
    """`n` deterministic `(method, hyper)` draws of `family` for `problem` (the space above).

    The harness appends them to its fixed candidate settings (`--fuzz` problems get settings
    no fixed list contains); the same `(problem, family, n, seed)` gives the same draws.
    """
    rng = np.random.default_rng([seed, sum(map(ord, problem.name)), sum(map(ord, family))])

    def choose(options):
        return options[int(rng.integers(len(options)))]

    return [draw_trajectory_setting(choose, problem, family) for _ in range(n)]
