"""The dense reference's fast conv paths (issue 17's conv figure) against their definitions.

`weighted_patches_adjoint(layer, W, G)` is `patches_adjoint(layer, W^T G)` (PROTOCOL s12);
in float64 a convolution's is one sparse product, on mpmath object arrays the two steps as
written. Both are checked against the adjoint identity
`<G, W patches(a)> = <a, weighted_patches_adjoint(W, G)>` evaluated in mpmath, with a
negative control (the kernel flipped). The forward trace computes `Wbar dAbar` only on the
columns where `dAbar` can be nonzero; the Jacobian columns of the layers after each layer
must be exact zeros in `ds`, and the matrices still match the mpmath run of the same code.
"""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import Conv2d, Layer
from ngd_ref._layout import layer_slices
from ngd_ref._patches import patches, patches_adjoint, weighted_patches_adjoint
from ngd_ref.dense import FLOAT64, dense, mp_backend
from verify._bench_dense import conv_bench_problem
from verify._policy import tolerance_policy
from verify._tolerance import compare, rounding_rtol

LAYERS = [Conv2d(2, 3, (3, 3), (1, 1), (1, 1), "tanh", input_hw=(5, 4)),
          Conv2d(2, 3, (2, 3), (2, 1), (0, 1), "tanh", input_hw=(5, 6)),
          Layer(7, 4, "tanh")]
MP = mp_backend(30)


def _draw(layer: Layer | Conv2d, rest: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(layer.patch_size * 100 + layer.n_positions)
    w = rng.standard_normal((layer.weight_shape[0], layer.patch_size))
    g = rng.standard_normal((layer.weight_shape[0], layer.n_positions, rest))
    a = rng.standard_normal((layer.input_size, rest))
    return w, g, a


@pytest.mark.parametrize("layer", LAYERS, ids=["conv-pad", "conv-stride", "dense"])
def test_weighted_patches_adjoint_is_the_adjoint(layer):
    """`<G, W P(a)>` = `<a, weighted_patches_adjoint(W, G)>` per trailing column, both backends.

    The left side is evaluated in mpmath from `patches` alone; a flipped kernel must fail.
    """
    w, g, a = _draw(layer, rest=3)
    with MP.precision():
        wm, gm, am = MP.asarray(w), MP.asarray(g), MP.asarray(a)
        forward = np.einsum("ok,ktm->otm", wm, patches(layer, am, MP))
        exact = MP.to_float64((gm * forward).sum(axis=(0, 1)))
        on_mp = MP.to_float64((am * weighted_patches_adjoint(layer, wm, gm, MP)).sum(axis=0))
    tolerance = rounding_rtol("float64", length=layer.patch_size * layer.n_positions, depth=2)
    on_float = (a * weighted_patches_adjoint(layer, w, g, FLOAT64)).sum(axis=0)
    magnitude = float(np.abs(g).sum() * np.abs(w).max() * np.abs(a).max())
    assert compare(on_float, exact, tolerance=tolerance, magnitude=magnitude).passed
    assert compare(on_mp, exact, tolerance=tolerance, magnitude=magnitude).passed
    # the definition as written, in float64
    direct = patches_adjoint(layer, (w.T @ g.reshape(w.shape[0], -1)).reshape(
        layer.patch_size, layer.n_positions, -1), FLOAT64)
    assert compare(weighted_patches_adjoint(layer, w, g, FLOAT64), direct,
                   tolerance=tolerance).passed
    flipped = (a * weighted_patches_adjoint(layer, w[:, ::-1], g, FLOAT64)).sum(axis=0)
    assert not compare(flipped, exact, tolerance=tolerance, magnitude=magnitude).passed


def test_forward_tangents_are_exact_zeros_after_each_layer():
    """Layer l's `ds` has no dependence on the parameters of layers after it (exact zeros)."""
    problem = conv_bench_problem()
    trace = dense(problem).traces[0]
    slices = layer_slices(problem.layers)
    for index, sl in enumerate(slices):
        assert not np.any(trace.ds[index][:, sl.stop:])
        assert np.any(trace.ds[index][:, sl])
        assert not np.any(trace.dabar[index][..., sl.start:])


def test_conv_bench_matrices_certified_by_mpmath_of_a_small_twin():
    """A small conv net of the bench's architecture: float64 H, G, F agree with mpmath."""
    from ngd_ref import zoo

    problem = zoo.make_conv_problem((1, 4, 4), (Conv2d(1, 2, (3, 3), (1, 1), (1, 1), "tanh"),
                                                Conv2d(2, 2, (3, 3), (1, 1), (1, 1), "tanh"),
                                                Layer(32, 3, "identity")),
                                    "softmax_cross_entropy", 2, name="bench-twin-1x4x4-b2")
    policy = tolerance_policy(problem, "float64")
    ref, mp = dense(problem), dense(problem, MP)
    for name in ("hessian", "ggn", "fisher"):
        assert compare(getattr(ref, name), MP.to_float64(getattr(mp, name)),
                       tolerance=policy.rtol).passed, name
