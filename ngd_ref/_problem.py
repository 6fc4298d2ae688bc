"""The `Problem` of PROTOCOL section 1: a tiny network, a batch and a loss, framework-neutral.

A problem is validated once, where it is built; everything downstream trusts it. Arrays are
stored as read-only float64 copies (targets as int64 class labels for the categorical
losses), so no consumer -- the reference, a port under test -- can mutate a shared problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ngd_ref._spec import (
    Conv2d,
    Layer,
    Loss,
    Reduction,
    TargetKind,
    activation_spec,
    loss_spec,
)

__all__ = ["Problem", "ProblemError", "bind_layers"]


class ProblemError(ValueError):
    """A malformed problem; the message names the offending field and what to do instead."""


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


def _as_float_array(field: str, value: Any, ndim: int) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProblemError(
            f"{field}: expected numbers, got {type(value).__name__} ({exc})"
        ) from None
    if array.ndim != ndim:
        raise ProblemError(f"{field}: expected a {ndim}-d array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ProblemError(f"{field}: contains non-finite values (NaN or inf)")
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A supervised problem in framework-neutral form (PROTOCOL section 1).

    Network: `a_0 = x`; `s_l = W_l a_{l-1} + b_l`; `a_l = phi_l(s_l)`; output `z = a_L`.
    Parameters use the canonical layout: per layer, `vec([W_l b_l])` stacked column-major,
    so each layer's bias is the last `n_out` entries of its block.
    Objective: `h(theta) = c * sum_b L(y_b, f(x_b, theta))` with `c = 1/B` (mean) or 1 (sum).

    Attributes:
        name: Stable identifier, e.g. `mlp-3x4x3-tanh-softmax_cross_entropy-b3`.
        layers: Layers in order: `Conv2d` convolutions first (PROTOCOL s12), then dense
            `Layer`s; a convolution may be last.
        loss: One of `LOSSES`.
        reduction: `"mean"` or `"sum"`.
        params: `(n,)` float64, canonical layout.
        inputs: `(B, layers[0].input_size)` float64 (images flattened channel-major).
        targets: `(B,)` int64 labels for `softmax_cross_entropy`/`nll_probs`, else `(B, C)`
            float64 with `C` the number of targets per example.
        input_shape: `(C, H, W)` of an image input (PROTOCOL s12); None for dense-only
            problems. The problem's convolutions are bound to their input sizes
            (`Conv2d.input_hw`).

    Raises:
        ProblemError: naming the field, for any malformed input.
    """

    name: str
    layers: tuple[Layer, ...]
    loss: str
    params: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    reduction: str = "mean"
    input_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name:
            raise ProblemError(f"name: expected a non-empty string, got {self.name!r}")
        set_(self, "input_shape", _validate_input_shape(self.input_shape))
        set_(self, "layers", _validate_layers(self.layers, self.input_shape))
        try:
            loss = loss_spec(self.loss)
        except ValueError as exc:
            raise ProblemError(str(exc)) from None
        set_(self, "loss", loss.value)
        try:
            set_(self, "reduction", Reduction(self.reduction).value)
        except ValueError:
            raise ProblemError(
                f"reduction: expected 'mean' or 'sum', got {self.reduction!r}"
            ) from None
        last = self.layers[-1]
        required = loss.spec.last_activation
        if required is not None and last.activation != required:
            raise ProblemError(
                f"layers: loss {loss.value!r} takes {loss.spec.probabilities.value}; the last "
                f"layer's activation must be {required!r}, got {last.activation!r}"
            )
        per_target = loss.spec.outputs_per_target
        if last.output_size % per_target:
            raise ProblemError(
                f"layers: loss {loss.value!r} needs an output size divisible by {per_target} "
                f"({per_target} outputs per target), got n_out={last.output_size}"
            )
        params = _as_float_array("params", self.params, 1)
        n = sum(layer.n_params for layer in self.layers)
        if params.shape != (n,):
            raise ProblemError(
                f"params: expected {n} parameters for layers {_describe(self.layers)} "
                f"(sum of the layers' n_params), got {params.shape[0]}"
            )
        inputs = _as_float_array("inputs", self.inputs, 2)
        if inputs.shape[0] < 1 or inputs.shape[1] != self.layers[0].input_size:
            raise ProblemError(
                f"inputs: expected shape (B >= 1, {self.layers[0].input_size}), got {inputs.shape}"
            )
        set_(self, "params", _readonly(params))
        set_(self, "inputs", _readonly(inputs))
        set_(self, "targets",
             _readonly(_validate_targets(loss, self.targets, inputs.shape[0], last)))

    # -- derived sizes ---------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Number of parameters `n`."""
        return int(self.params.shape[0])

    @property
    def batch_size(self) -> int:
        """Number of examples `B`."""
        return int(self.inputs.shape[0])

    @property
    def output_dim(self) -> int:
        """Network output size `C` (twice the target size for `gaussian_logvar`)."""
        return self.layers[-1].output_size

    @property
    def dense_only(self) -> bool:
        """Whether every layer is dense (PROTOCOL s1), i.e. no convolution (s12)."""
        return not any(layer.is_convolution for layer in self.layers)

    @property
    def has_weight_sharing(self) -> bool:
        """Whether a layer has several output positions sharing its weights (T > 1, s12).

        Dense layers and convolutions whose kernel covers the padded input have one.
        """
        return any(layer.n_positions > 1 for layer in self.layers)

    @property
    def scale(self) -> float:
        """The reduction constant `c`: `1/B` for mean, `1` for sum."""
        return 1.0 / self.batch_size if self.reduction == Reduction.MEAN.value else 1.0

    # -- conversion ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Problem:
        """A validated copy with some fields changed (e.g. `params=...`)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the `problem` object of the fixture format, PROTOCOL s8)."""
        out = {
            "name": self.name,
            "layers": [_layer_entry(layer) for layer in self.layers],
            "loss": self.loss,
            "reduction": self.reduction,
            "params": self.params.tolist(),
            "inputs": self.inputs.tolist(),
            "targets": self.targets.tolist(),
        }
        if self.input_shape is not None:
            out["input_shape"] = list(self.input_shape)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Problem:
        """Build from the JSON form; numbers may be JSON numbers or decimal strings."""
        if not isinstance(data, Mapping):
            raise ProblemError(f"problem: expected an object, got {type(data).__name__}")
        required = ("name", "layers", "loss", "params", "inputs", "targets")
        missing = [key for key in required if key not in data]
        if missing:
            raise ProblemError(f"problem: missing field(s) {', '.join(missing)}")
        return cls(
            name=data["name"],
            layers=data["layers"],
            loss=data["loss"],
            reduction=data.get("reduction", "mean"),
            params=_parse_numbers("params", data["params"]),
            inputs=_parse_numbers("inputs", data["inputs"]),
            targets=_parse_numbers("targets", data["targets"]),
            input_shape=data.get("input_shape"),
        )

    def __repr__(self) -> str:
        return (
            f"Problem({self.name!r}, layers={_describe(self.layers)}, loss={self.loss!r}, "
            f"reduction={self.reduction!r}, n={self.n_params}, B={self.batch_size})"
        )


def _describe(layers: Sequence[Layer | Conv2d]) -> str:
    sizes = [str(layers[0].input_size)] + [str(layer.output_size) for layer in layers]
    return "x".join(sizes) + " " + "/".join(layer.activation for layer in layers)


def _parse_numbers(field: str, value: Any) -> np.ndarray:
    """Nested lists of numbers or decimal strings -> float64 array (never unpickles)."""
    try:
        return np.asarray(
            value if not _contains_str(value) else _map_nested(value, float), dtype=np.float64
        )
    except (TypeError, ValueError) as exc:
        raise ProblemError(f"{field}: expected numbers or decimal strings ({exc})") from None


def _contains_str(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, list | tuple) and value:
        return _contains_str(value[0])
    return False


def _map_nested(value: Any, fn: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_map_nested(item, fn) for item in value]
    return fn(value)


#: The tag of a convolution in the fixture format (PROTOCOL s12).
CONV2D_TAG = "conv2d"


def _layer_entry(layer: Layer | Conv2d) -> list:
    """A layer in the fixture format: `[n_in, n_out, act]` or s12's `["conv2d", ...]` entry."""
    if layer.is_convolution:
        return [CONV2D_TAG, layer.c_in, layer.c_out, list(layer.kernel), list(layer.stride),
                list(layer.padding), layer.activation]
    return list(layer)


def _positive_int(field: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ProblemError(f"{field}: expected a {kind} int, got {value!r}")
    return int(value)


def _int_pair(field: str, value: Any, minimum: int) -> tuple[int, int]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ProblemError(f"{field}: expected an (h, w) pair of ints, got {value!r}")
    return (_positive_int(f"{field}[0]", value[0], minimum),
            _positive_int(f"{field}[1]", value[1], minimum))


def _validate_input_shape(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise ProblemError(f"input_shape: expected (C, H, W) or None, got {value!r}")
    channels, height, width = (_positive_int(f"input_shape[{i}]", v) for i, v in enumerate(value))
    return channels, height, width


def _conv_fields(layer: Any) -> tuple | None:
    """The six s12 fields of a convolution entry (a `kernel` field or a fixture entry)."""
    if hasattr(layer, "kernel"):
        try:
            return (layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.padding,
                    layer.activation)
        except AttributeError as exc:
            raise ProblemError(f"expected the Conv2d fields ({exc})") from None
    if (isinstance(layer, Sequence) and not isinstance(layer, str) and layer
            and isinstance(layer[0], str) and layer[0] == CONV2D_TAG):
        if len(layer) != 7:
            raise ProblemError(f"expected [{CONV2D_TAG!r}, c_in, c_out, kernel, stride, padding, "
                               f"activation], got {layer!r}")
        return tuple(layer[1:])
    return None


def _validate_conv(index: int, fields: tuple, previous: Layer | Conv2d | None,
                   input_shape: tuple[int, int, int] | None) -> Conv2d:
    where = f"layers[{index}]"
    c_in, c_out, kernel, stride, padding, activation = fields
    c_in, c_out = _positive_int(f"{where}.c_in", c_in), _positive_int(f"{where}.c_out", c_out)
    kernel = _int_pair(f"{where}.kernel", kernel, 1)
    stride = _int_pair(f"{where}.stride", stride, 1)
    padding = _int_pair(f"{where}.padding", padding, 0)
    if previous is None:
        if input_shape is None:
            raise ProblemError("input_shape: a problem with convolutions needs the image shape "
                               "(C, H, W) of its inputs, got None")
        channels, hw = input_shape[0], input_shape[1:]
        source = "input_shape[0]"
    elif previous.is_convolution:
        channels, hw = previous.c_out, previous.output_hw
        source = "the previous convolution's c_out"
    else:
        raise ProblemError(f"{where}: a convolution must come first or after another "
                           f"convolution (PROTOCOL s12), got one after a dense layer")
    if c_in != channels:
        raise ProblemError(f"{where}.c_in: expected {channels} ({source}), got {c_in}")
    for axis, (size, pad, k) in enumerate(zip(hw, padding, kernel, strict=True)):
        if size + 2 * pad < k:
            raise ProblemError(f"{where}.kernel: kernel[{axis}] = {k} exceeds the padded input "
                               f"size {size} + 2 * {pad}")
    conv = Conv2d(c_in, c_out, kernel, stride, padding, str(activation), input_hw=hw)
    return conv


def _validate_layers(layers: Any,
                     input_shape: tuple[int, int, int] | None = None) -> tuple[Layer | Conv2d, ...]:
    if not isinstance(layers, Sequence) or isinstance(layers, str) or not layers:
        raise ProblemError(f"layers: expected a non-empty sequence of Layer, got {layers!r}")
    checked: list[Layer | Conv2d] = []
    for index, layer in enumerate(layers):
        try:
            fields = _conv_fields(layer)
        except ProblemError as exc:
            raise ProblemError(f"layers[{index}]: {exc}") from None
        current: Layer | Conv2d
        if fields is not None:
            current = _validate_conv(index, fields, checked[-1] if checked else None,
                                     input_shape)
        else:
            current = _validate_dense(index, layer, checked[-1] if checked else None,
                                      input_shape)
        activation = current.activation
        try:
            phi = activation_spec(activation)
        except ValueError as exc:
            raise ProblemError(f"layers[{index}].{exc}") from None
        if phi.last_layer_only and (index != len(layers) - 1 or current.is_convolution):
            where = "on a last dense layer" if current.is_convolution else "on the last layer"
            raise ProblemError(
                f"layers[{index}].activation: {activation!r} is allowed only {where}"
            )
        checked.append(current)
    return tuple(checked)


def bind_layers(layers: Sequence[Any],
                input_shape: tuple[int, int, int] | None = None) -> tuple[Layer | Conv2d, ...]:
    """Validated layers, each convolution bound to its input's spatial size (PROTOCOL s12).

    Raises:
        ProblemError: naming the layer and field, as `Problem` does.
    """
    return _validate_layers(layers, _validate_input_shape(input_shape))


def _validate_dense(index: int, layer: Any, previous: Layer | Conv2d | None,
                    input_shape: tuple[int, int, int] | None) -> Layer:
    try:
        n_in, n_out, activation = layer
    except (TypeError, ValueError):
        raise ProblemError(
            f"layers[{index}]: expected (n_in, n_out, activation), got {layer!r}"
        ) from None
    n_in = _positive_int(f"layers[{index}].n_in", n_in)
    n_out = _positive_int(f"layers[{index}].n_out", n_out)
    if previous is not None and n_in != previous.output_size:
        what = "c_out H' W' of the previous convolution, flattened channel-major" \
            if previous.is_convolution else "the previous layer's n_out"
        raise ProblemError(f"layers[{index}].n_in: expected {previous.output_size} ({what}), "
                           f"got {n_in}")
    if previous is None and input_shape is not None and n_in != int(np.prod(input_shape)):
        raise ProblemError(f"layers[{index}].n_in: expected {int(np.prod(input_shape))} "
                           f"(C H W of input_shape {input_shape}), got {n_in}")
    return Layer(n_in, n_out, str(activation))


def _validate_targets(loss: Loss, targets: Any, batch: int, last: Layer) -> np.ndarray:
    kind = loss.spec.targets
    if kind is TargetKind.CLASS_LABEL:
        raw = _as_float_array("targets", targets, 1)
        if raw.shape != (batch,):
            raise ProblemError(f"targets: expected {batch} class labels, got shape {raw.shape}")
        if np.any(raw != np.round(raw)) or np.any(raw < 0) or np.any(raw >= last.output_size):
            raise ProblemError(
                f"targets: class labels must be integers in [0, {last.output_size}), "
                f"got {raw.tolist()}"
            )
        return raw.astype(np.int64)
    n_targets = last.output_size // loss.spec.outputs_per_target
    array = _as_float_array("targets", targets, 2)
    if array.shape != (batch, n_targets):
        raise ProblemError(f"targets: expected shape ({batch}, {n_targets}), got {array.shape}")
    if kind is TargetKind.BINARY and not np.all((array == 0) | (array == 1)):
        raise ProblemError(f"targets: {loss.value} targets must be {kind.value}")
    if kind is TargetKind.COUNT and (np.any(array < 0) or np.any(array != np.round(array))):
        raise ProblemError(f"targets: {loss.value} targets must be {kind.value}s")
    return array
