"""The reference's solves are quiet on ill-conditioned systems (campaign stderr noise)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

from ngd_ref.dense import FLOAT64


def _ill_conditioned() -> np.ndarray:
    return np.array([[1.0, 1.0], [1.0, 1.0 + 1e-17 + 2.0**-52]])


def test_reference_solve_raises_no_linalg_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = FLOAT64.solve(_ill_conditioned(), np.array([1.0, 2.0]))
    assert np.all(np.isfinite(x))


def test_a_warning_outside_the_reference_solve_is_still_raised():
    # the filter is local to the reference's solve: the same call outside it still warns
    with pytest.warns(scipy.linalg.LinAlgWarning):
        scipy.linalg.solve(_ill_conditioned(), np.array([1.0, 2.0]))
    with pytest.warns(scipy.linalg.LinAlgWarning):
        FLOAT64.solve(np.eye(2), np.ones(2))
        warnings.warn("a port's own", scipy.linalg.LinAlgWarning, stacklevel=1)
