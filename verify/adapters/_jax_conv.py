"""PROTOCOL s12 convolutions in the layout a JAX user writes: NCHW images, HWIO kernels.

Shared layout maps of the JAX adapters (`verify.adapters._jax_model`, the `kfac-jax` adapter).
A convolution is `jax.lax.conv_general_dilated` with dimension numbers
`("NCHW", "HWIO", "NCHW")` (Haiku's `Conv2D(data_format="NCHW")`; the kernel layout Flax and
Haiku use), zero padding `[(p_h, p_h), (p_w, p_w)]`, no dilation, one feature group: the
cross-correlation of PROTOCOL s12,

    s[o, i, j] = sum_{c,u,v} W[o, (c,u,v)] xp[c, i s_h + u, j s_w + v] + b[o],

with the kernel `K[u, v, c, o] = W[o, (c,u,v)]`, i.e. `W.reshape(c_out, c_in, k_h, k_w)`
transposed to `(k_h, k_w, c_in, c_out)`. NCHW keeps the protocol's channel-major flattening of
every activation (a dense layer or the loss reads `s.reshape(B, -1)` as it stands); the
kernel must be HWIO for kfac-jax's `Conv2DTwoKroneckerFactored` (docs/findings.md). These are
permutations: no number is touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ngd_ref import Conv2d

__all__ = ["DIMENSION_NUMBERS", "conv_options", "conv_preactivation", "hwio_kernel",
           "hwio_patch_order", "weight_matrix"]

#: (image, kernel, output) layouts of every convolution the JAX adapters build
DIMENSION_NUMBERS = ("NCHW", "HWIO", "NCHW")


def hwio_kernel(layer: Conv2d, weight: np.ndarray) -> np.ndarray:
    """`W (c_out, c_in k_h k_w)` (PROTOCOL s12) -> the HWIO kernel `(k_h, k_w, c_in, c_out)`."""
    return np.asarray(weight).reshape(layer.c_out, layer.c_in, *layer.kernel).transpose(2, 3, 1, 0)


def weight_matrix(layer: Conv2d, kernel: Any) -> np.ndarray:
    """The inverse of `hwio_kernel`: an HWIO kernel -> `W (c_out, c_in k_h k_w)`."""
    return np.asarray(kernel).transpose(3, 2, 0, 1).reshape(layer.c_out, -1)


def hwio_patch_order(layer: Conv2d) -> np.ndarray:
    """`P` with `P[j]` the protocol patch index of row j of an HWIO kernel's matrix.

    kfac-jax flattens a kernel to the matrix `(k_h k_w c_in, c_out)` (its `parameters_specs`)
    and its patch moments likewise in (kernel row, kernel column, channel) order, bias last;
    the protocol's patch is (channel, kernel row, kernel column), bias last. A factor `A_jax`
    over the former is `A[P][:, P]` of the protocol's `A`, so `A = A_jax[Q][:, Q]` with
    `Q = argsort(P)`.
    """
    c_in, (k_h, k_w) = layer.c_in, layer.kernel
    u, v, c = np.meshgrid(np.arange(k_h), np.arange(k_w), np.arange(c_in), indexing="ij")
    order = (c * k_h * k_w + u * k_w + v).reshape(-1)
    return np.concatenate([order, [c_in * k_h * k_w]])


def conv_options(layer: Conv2d, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """The keyword arguments of `jax.lax.conv_general_dilated` for `layer` (module docstring).

    `image_shape` is the batch's `(B, c_in, H, W)`. These are exactly the parameters of the
    `conv_general_dilated` equation, which `kfac_jax.register_conv2d` takes as its keyword
    arguments (kfac-jax's own graph matcher passes the equation's parameters).
    """
    import jax

    kernel_shape = (*layer.kernel, layer.c_in, layer.c_out)
    return dict(
        window_strides=tuple(int(s) for s in layer.stride),
        padding=tuple((int(p), int(p)) for p in layer.padding),
        lhs_dilation=(1, 1),
        rhs_dilation=(1, 1),
        dimension_numbers=jax.lax.conv_dimension_numbers(tuple(image_shape), kernel_shape,
                                                         DIMENSION_NUMBERS),
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
    )


def conv_preactivation(layer: Conv2d, kernel: Any, bias: Any, a: Any
                       ) -> tuple[Any, Any, dict[str, Any]]:
    """One convolution's pre-activation (PROTOCOL s12) on NCHW images.

    Returns:
        `(image, s, options)`: the flattened input `a (B, c_in H W)` as an NCHW image, the
        pre-activation `s (B, c_out, H', W')` and the `conv_options` used.
    """
    import jax

    image = a.reshape(a.shape[0], *layer.input_shape)
    options = conv_options(layer, image.shape)
    s = jax.lax.conv_general_dilated(image, kernel, **options) + bias[None, :, None, None]
    return image, s, options
