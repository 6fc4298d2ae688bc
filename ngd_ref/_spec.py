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
import functools
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "ActivationSpec",
    "Conv2d",
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


class _LayerKind:
    """What every layer kind derives from its `weight_shape` and `activation`."""

    __slots__ = ()
    activation: str
    #: True for `Conv2d` (a `Literal` in each kind, so a check on it narrows the type)
    is_convolution: bool

    if TYPE_CHECKING:  # each kind defines it (a property)

        @property
        def weight_shape(self) -> tuple[int, int]: ...

    @property
    def n_params(self) -> int:
        """Entries of `vec(Wbar)`."""
        rows, cols = self.weight_shape
        return rows * cols

    @property
    def phi(self) -> ActivationSpec:
        """The declared properties of this layer's activation."""
        return activation_spec(self.activation)


class _DenseFields(NamedTuple):
    n_in: int
    n_out: int
    activation: str


class Layer(_DenseFields, _LayerKind):
    """A dense layer `a = phi(W a_prev + b)` with `W` of shape `(n_out, n_in)`.

    A layer kind owns its parameter block: `weight_shape` is the shape of `Wbar = [W b]`,
    stored as `vec(Wbar)` (column-major) in the canonical layout (PROTOCOL section 1), and
    `input_size`/`output_size` are the flattened sizes it maps between. Fields: `n_in`,
    `n_out`, `activation` (PROTOCOL s1).
    """

    __slots__ = ()

    #: A dense layer has one position (T = 1): its patch is its whole input.
    is_convolution: Literal[False] = False
    n_positions = 1

    @property
    def patch_size(self) -> int:
        """Entries of the (non-homogeneous) patch: the whole input `n_in`."""
        return self.n_in

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



class _Conv2dFields(NamedTuple):
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    activation: str


class Conv2d(_Conv2dFields, _LayerKind):
    """A 2-D convolution (PROTOCOL s12): `(c_in, H, W) -> (c_out, H', W')`, zero padding.

    `H' = (H + 2 p_h - k_h) // s_h + 1` (W' alike); a cross-correlation (no kernel flip):
    `s[o, i, j] = sum_{c,u,v} W[o, (c,u,v)] xp[c, i s_h + u, j s_w + v] + b[o]`, `xp` the
    input padded with zeros. The homogeneous patch at position `t = (i, j)` (row-major over
    `(H', W')`) is the `c_in k_h k_w` entries `xp[c, i s_h + u, j s_w + v]` in
    (channel, kernel row, kernel column) row-major order -- an im2col / `unfold` patch --
    followed by 1, so `S = Wbar Abar` with `Wbar = [W b]` of shape
    `(c_out, c_in k_h k_w + 1)` (stored as `vec(Wbar)`, column-major, like a dense layer's) and
    `Abar` the `(c_in k_h k_w + 1, T)` patch matrix, `T = H' W'`. Inputs and outputs are
    flattened channel-major (row-major over `(C, H, W)`).

    The six protocol fields are the tuple; the input's spatial size `input_hw` is an attribute
    that `Problem` sets (from `input_shape` and the layers before), so `input_size`,
    `output_size`, `output_hw` and `patch_index` are known on a problem's layers. Adapters
    recognise a convolution by its `kernel` field (PROTOCOL s12).
    """

    #: `(H, W)` of this layer's input; None until bound (`with_input`, or by a `Problem`).
    input_hw: tuple[int, int] | None = None
    is_convolution: Literal[True] = True

    def __new__(cls, c_in: int, c_out: int, kernel, stride=(1, 1), padding=(0, 0),
                activation: str = "identity", *, input_hw=None) -> Conv2d:
        self = super().__new__(cls, c_in, c_out, kernel, stride, padding, activation)
        if input_hw is not None:
            self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        return self

    def _replace(self, **changes) -> Conv2d:
        """A copy with some fields changed, still bound to the same input size."""
        return Conv2d(*super()._replace(**changes), input_hw=self.input_hw)

    def with_input(self, input_hw: tuple[int, int]) -> Conv2d:
        """This convolution bound to an input of spatial size `input_hw = (H, W)`."""
        return Conv2d(*self, input_hw=input_hw)

    def _hw(self) -> tuple[int, int]:
        if self.input_hw is None:
            raise ValueError("Conv2d: the input's spatial size is unknown; use a problem's "
                             "layers or Conv2d(..., input_hw=(H, W))")
        return self.input_hw

    @property
    def output_hw(self) -> tuple[int, int]:
        """`(H', W')` with `H' = (H + 2 p_h - k_h) // s_h + 1` (W' alike)."""
        height, width = ((size + 2 * pad - k) // step + 1 for size, pad, k, step in
                         zip(self._hw(), self.padding, self.kernel, self.stride, strict=True))
        return height, width

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(c_in, H, W)`."""
        return (self.c_in, *self._hw())

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """`(c_out, H', W')`."""
        return (self.c_out, *self.output_hw)

    @property
    def n_positions(self) -> int:
        """`T = H' W'`, the output positions sharing the weights."""
        height, width = self.output_hw
        return height * width

    @property
    def patch_size(self) -> int:
        """`c_in k_h k_w`, the entries of a (non-homogeneous) patch."""
        return self.c_in * self.kernel[0] * self.kernel[1]

    @property
    def input_size(self) -> int:
        """`c_in H W`, the flattened input."""
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        """`c_out H' W'`, the flattened output."""
        return self.c_out * self.n_positions

    @property
    def weight_shape(self) -> tuple[int, int]:
        """Shape of `Wbar = [W b]`: `(c_out, c_in k_h k_w + 1)`."""
        return (self.c_out, self.patch_size + 1)


    @functools.cached_property
    def patch_index(self) -> np.ndarray:
        """The im2col index map, `(c_in k_h k_w, T)` ints into the flattened input.

        Entry `[(c, u, v), (i, j)]` is the flat index of `x[c, i s_h + u - p_h, j s_w + v - p_w]`,
        or `input_size` where that falls in the zero padding: gathering from the input with a
        zero appended (`patches`) gives the patch matrix on any array type (float64 or
        numpy object arrays of mpmath numbers); its adjoint is a scatter-add (`patches_adjoint`).
        """
        height, width = self._hw()
        (k_h, k_w), (s_h, s_w), (p_h, p_w) = self.kernel, self.stride, self.padding
        out_h, out_w = self.output_hw
        c, u, v = np.meshgrid(np.arange(self.c_in), np.arange(k_h), np.arange(k_w),
                              indexing="ij")
        i, j = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
        rows = i.reshape(1, -1) * s_h + u.reshape(-1, 1) - p_h
        cols = j.reshape(1, -1) * s_w + v.reshape(-1, 1) - p_w
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        flat = c.reshape(-1, 1) * height * width + rows * width + cols
        index = np.where(inside, flat, self.input_size)
        index.setflags(write=False)
        return index
