"""The model spec: what each loss, activation and layer kind *is*, declared once.

Every consumer -- the dense reference and its JAX twin, the tolerance policy, the identity
battery, the harness, the mutants, the fixtures -- reads the properties declared here instead
of comparing names. Adding a loss means one `Loss` member and one `LossSpec` row here, its
dense and JAX formulas (`ngd_ref/_losses.py`, `ngd_ref/_losses_jax.py`) and zoo entries; a
layer kind declares its parameter block (`weight_shape`, `n_params`) and its sizes
(`input_size`, `output_size`) the way `Layer` does below.

Sources: the losses are PROTOCOL section 2's output distributions r(y|z); "natural
parameters" is Martens s9 (F = G exactly when z is the natural parameter of an exponential
family); an indefinite `H_L` (gaussian_logvar's log-variance) makes G indefinite (Martens s3).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "ActivationSpec",
    "Layer",
    "Loss",
    "LossSpec",
    "Probabilities",
    "Reduction",
    "TargetKind",
    "activation_spec",
    "loss_spec",
]


class Loss(str, enum.Enum):
    """The losses of PROTOCOL section 2, i.e. the output distributions r(y|z)."""

    MSE = "mse"
    SOFTMAX_CROSS_ENTROPY = "softmax_cross_entropy"
    SIGMOID_CROSS_ENTROPY = "sigmoid_cross_entropy"
    POISSON = "poisson"
    NLL_PROBS = "nll_probs"
    GAUSSIAN_LOGVAR = "gaussian_logvar"

    @property
    def spec(self) -> LossSpec:
        """The declared properties of this loss."""
        return _LOSS_SPECS[self]

    @property
    def has_class_labels(self) -> bool:
        """Whether targets are `(B,)` integer class labels rather than `(B, C)` floats."""
        return self.spec.targets is TargetKind.CLASS_LABEL

    @property
    def outputs_are_natural_parameters(self) -> bool:
        """Whether z is the natural parameter of r(y|z), so that F = G (Martens s9)."""
        return self.spec.natural_parameters


class Reduction(str, enum.Enum):
    """How per-example losses are combined: h = c * sum_b L_b with c = 1/B or 1."""

    MEAN = "mean"
    SUM = "sum"


class TargetKind(enum.Enum):
    """What a target is (PROTOCOL section 1: `(B,)` labels or `(B, C)` floats)."""

    CLASS_LABEL = "class label in [0, C)"
    REAL = "real number"
    BINARY = "0 or 1"
    COUNT = "non-negative integer count"


class Probabilities(enum.Enum):
    """How a loss turns outputs into probabilities, where it does.

    Saturating probabilities (`p -> 0` or `1`) make the loss Hessian's closed forms
    (`diag(p) - p p^T`, `p (1 - p)`) cancel, so their computed values carry an absolute error of
    order `u ||p||`, not `u ||H_L||`: the tolerance policy reads this to size the magnitude
    of the output-space curvature.
    """

    NONE = "none"
    SOFTMAX = "softmax of the outputs"
    SIGMOID = "sigmoid of each output"
    OUTPUTS = "the outputs themselves"


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Declared properties of a loss (PROTOCOL section 2).

    Attributes:
        targets: what one target is.
        outputs_per_target: network outputs per target coordinate (2 for gaussian_logvar's
            `(mu, s)` halves, else 1; labels count as one target per example).
        natural_parameters: z is the natural parameter of r(y|z), so F = G (Martens s9).
        hessian_psd: `H_L(y, z)` is PSD at every target and output, so G is PSD (Martens s3).
        probabilities: how z maps to probabilities (the saturation handling).
        last_activation: the activation the last layer must have, or None for any.
        probability_form: the loss that takes these probabilities as outputs, when the
            loss is that loss composed with its `probabilities` map (softmax cross-entropy on
            logits is nll_probs on softmax probabilities).
        residual: a residual loss: targets equal to the outputs make `dL/dz = 0` (so H = G
            there, Martens s3), and `H_L` is the same constant matrix at every `(y, z)`.
    """

    targets: TargetKind
    outputs_per_target: int
    natural_parameters: bool
    hessian_psd: bool
    probabilities: Probabilities
    last_activation: str | None = None
    probability_form: Loss | None = None
    residual: bool = False


_LOSS_SPECS: dict[Loss, LossSpec] = {
    Loss.MSE: LossSpec(TargetKind.REAL, 1, True, True, Probabilities.NONE, residual=True),
    Loss.SOFTMAX_CROSS_ENTROPY: LossSpec(TargetKind.CLASS_LABEL, 1, True, True,
                                         Probabilities.SOFTMAX, probability_form=Loss.NLL_PROBS),
    Loss.SIGMOID_CROSS_ENTROPY: LossSpec(TargetKind.BINARY, 1, True, True, Probabilities.SIGMOID),
    Loss.POISSON: LossSpec(TargetKind.COUNT, 1, True, True, Probabilities.NONE),
    Loss.NLL_PROBS: LossSpec(TargetKind.CLASS_LABEL, 1, False, True, Probabilities.OUTPUTS,
                             last_activation="softmax"),
    Loss.GAUSSIAN_LOGVAR: LossSpec(TargetKind.REAL, 2, False, False, Probabilities.NONE),
}

LOSSES: tuple[str, ...] = tuple(loss.value for loss in Loss)


def loss_spec(name: str | Loss) -> Loss:
    """The `Loss` called `name` (its properties are `.spec`).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return Loss(name)
    except ValueError:
        raise ValueError(
            f"loss: unknown loss {name!r}; expected one of {', '.join(LOSSES)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """Declared properties of an activation phi (PROTOCOL section 1).

    Attributes:
        name: the protocol's name.
        elementwise: phi acts on each coordinate separately (softmax does not).
        linear: phi is the identity (`phi'' = 0`, no kink).
        smooth: phi is twice differentiable everywhere (ReLU has a kink at 0).
        curved: `phi''` is not identically zero (false for identity and ReLU), so layers below
            carry second-order terms in the Hessian (Martens s3's decomposition).
        zero_at_zero: `phi(0) = 0` (an output that is 0 whatever the input stays 0).
        last_layer_only: allowed only as the last layer's activation.
    """

    name: str
    elementwise: bool = True
    linear: bool = False
    smooth: bool = True
    curved: bool = True
    zero_at_zero: bool = False
    last_layer_only: bool = False


_ACTIVATION_SPECS: dict[str, ActivationSpec] = {
    spec.name: spec
    for spec in (
        ActivationSpec("identity", linear=True, curved=False, zero_at_zero=True),
        ActivationSpec("tanh", zero_at_zero=True),
        ActivationSpec("sigmoid"),
        ActivationSpec("relu", smooth=False, curved=False, zero_at_zero=True),
        ActivationSpec("softplus"),
        ActivationSpec("softmax", elementwise=False, last_layer_only=True),
    )
}

ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATION_SPECS)


def activation_spec(name: str) -> ActivationSpec:
    """The declared properties of the activation called `name`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return _ACTIVATION_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation: unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


class Layer(NamedTuple):
    """A dense layer `a = phi(W a_prev + b)` with `W` of shape `(n_out, n_in)`.

    A layer kind owns its parameter block: `weight_shape` is the shape of `Wbar = [W b]`,
    stored as `vec(Wbar)` (column-major) in the canonical layout (PROTOCOL section 1), and
    `input_size`/`output_size` are the flattened sizes it maps between.
    """

    n_in: int
    n_out: int
    activation: str

    @property
    def input_size(self) -> int:
        """Size of the (flattened) input `a_prev`."""
        return self.n_in

    @property
    def output_size(self) -> int:
        """Size of the (flattened) output `a`."""
        return self.n_out

    @property
    def weight_shape(self) -> tuple[int, int]:
        """Shape of `Wbar = [W b]`: `(n_out, n_in + 1)`."""
        return (self.n_out, self.n_in + 1)

    @property
    def n_params(self) -> int:
        """Entries of `vec(Wbar)`."""
        rows, cols = self.weight_shape
        return rows * cols

    @property
    def phi(self) -> ActivationSpec:
        """The declared properties of this layer's activation."""
        return activation_spec(self.activation)
