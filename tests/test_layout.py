"""Canonical layout (PROTOCOL s1) and conversions from PyTorch and Flax/Haiku layouts."""

import numpy as np
import pytest

from ngd_ref import (
    Layer,
    ProblemError,
    flatten,
    from_flax,
    from_torch,
    layer_slices,
    to_flax,
    to_torch,
    unflatten,
)

LAYERS = (Layer(3, 2, "tanh"), Layer(2, 4, "identity"))


def test_bias_is_last_n_out_entries_of_column_major_block():
    w = np.arange(6.0).reshape(2, 3)
    b = np.array([10.0, 20.0])
    block = flatten([(w, b)])
    np.testing.assert_array_equal(block, [0, 3, 1, 4, 2, 5, 10, 20])
    np.testing.assert_array_equal(block[-2:], b)


def test_vec_identity_holds_in_this_layout():
    rng = np.random.default_rng(0)
    a, x, b = rng.normal(size=(2, 2)), rng.normal(size=(2, 3)), rng.normal(size=(3, 3))
    vec = lambda m: m.reshape(-1, order="F")  # noqa: E731
    np.testing.assert_allclose(vec(a @ x @ b), np.kron(b.T, a) @ vec(x), rtol=1e-13)


def test_round_trips():
    theta = np.arange(float(sum(s.stop - s.start for s in layer_slices(LAYERS))))
    np.testing.assert_array_equal(flatten(unflatten(LAYERS, theta)), theta)
    np.testing.assert_array_equal(from_torch(to_torch(LAYERS, theta)), theta)
    flax = to_flax(LAYERS, theta)
    assert flax[0]["kernel"].shape == (3, 2)
    np.testing.assert_array_equal(from_flax([(d["kernel"], d["bias"]) for d in flax]), theta)


def test_pytree_forms():
    theta = np.arange(20.0)
    torch_sd = {f"{i}.{k}": v for i, (w, b) in enumerate(to_torch(LAYERS, theta))
                for k, v in (("weight", w), ("bias", b))}
    np.testing.assert_array_equal(from_torch(torch_sd), theta)
    flax_tree = {"params": {f"Dense_{i}": d for i, d in enumerate(to_flax(LAYERS, theta))}}
    np.testing.assert_array_equal(from_flax(flax_tree), theta)
    haiku = {f"linear_{i}": {"w": d["kernel"], "b": d["bias"]}
             for i, d in enumerate(to_flax(LAYERS, theta))}
    np.testing.assert_array_equal(from_flax(haiku), theta)


def test_bad_layouts_name_the_problem():
    with pytest.raises(ProblemError, match="params"):
        unflatten(LAYERS, np.zeros(5))
    with pytest.raises(ProblemError, match="layer 0"):
        flatten([(np.zeros((2, 3)), np.zeros(3))])
    with pytest.raises(ProblemError, match="kernel"):
        from_flax({"Dense_0": {"weight": np.zeros((2, 2)), "bias": np.zeros(2)}})
