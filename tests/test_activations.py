"""Activation derivatives at saturation: both twins keep float64 accuracy where phi' is tiny."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref._activations import get_activation
from ngd_ref._activations_jax import ACTIVATIONS_JAX
from ngd_ref.dense import FLOAT64, mp_backend
from verify._tolerance import rounding_rtol

pytestmark = pytest.mark.usefixtures("x64")

#: Pre-activations from deep saturation (phi' ~ 1e-26) through 0; at |s| = 18 the textbook
#: forms `1 - a^2` and `a (1 - a)` have no correct digit left.
S = np.array([-30.0, -18.0, -3.0, 0.0, 0.5, 18.0, 30.0])
SMOOTH = ["tanh", "sigmoid", "softplus"]
#: Each derivative is a product of at most three correctly rounded factors (depth 3, no sums).
RTOL = rounding_rtol("float64", length=1, depth=3)


def _exact(name: str) -> tuple[np.ndarray, np.ndarray]:
    """`(phi'(S), phi''(S))` at 50 digits, rounded to float64."""
    act, bk = get_activation(name), mp_backend(50)
    with bk.precision():
        s = bk.asarray(S)
        d1, d2 = act.derivatives(bk, s, act.value(bk, s))
        return bk.to_float64(d1), bk.to_float64(d2)


@pytest.mark.parametrize("name", SMOOTH)
def test_dense_derivatives_are_accurate_at_saturation(name):
    act = get_activation(name)
    d1, d2 = act.derivatives(FLOAT64, S, act.value(FLOAT64, S))
    e1, e2 = _exact(name)
    np.testing.assert_allclose(d1, e1, rtol=RTOL, atol=0)
    np.testing.assert_allclose(d2, e2, rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", SMOOTH)
def test_jax_derivatives_are_accurate_at_saturation(name):
    """What HVPs and GGN products differentiate: first and second derivatives by autodiff."""
    f = ACTIVATIONS_JAX[name]
    s = jnp.asarray(S)
    e1, e2 = _exact(name)
    np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(f))(s)), e1, rtol=RTOL, atol=0)
    np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(jax.grad(f)))(s)), e2, rtol=RTOL,
                               atol=0)


def test_jax_softmax_jacobian_is_accurate_at_saturation():
    """`J_softmax u` at `p_max = 1 - 1e-13` against the dense pairwise form at 50 digits."""
    act, bk = get_activation("softmax"), mp_backend(50)
    s, u = np.array([30.0, 0.0, -2.0]), np.array([0.3, -1.0, 2.0])
    with bk.precision():
        sm = bk.asarray(s)
        exact = bk.to_float64(act.jacobian_apply(bk, sm, act.value(bk, sm), bk.asarray(u)))
    got = jax.jvp(ACTIVATIONS_JAX["softmax"], (jnp.asarray(s),), (jnp.asarray(u),))[1]
    np.testing.assert_allclose(np.asarray(got), exact, rtol=RTOL, atol=0)
