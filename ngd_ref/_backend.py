"""A small array backend so the dense reference has one code path at any precision.

The dense formulas are written once against this interface. `FLOAT64` runs them in numpy
float64; `mp_backend(dps)` runs the very same code on numpy object arrays of `mpmath.mpf`
at `dps` significant decimal digits (numpy's `+`, `*`, `@`, `sum` work on object arrays;
only elementwise transcendental functions and linear solves need dispatch). That is what
lets mpmath *certify* the float64 reference rather than re-implement it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import mpmath
import numpy as np
import scipy.linalg
import scipy.special

__all__ = ["FLOAT64", "Backend", "mp_backend"]


@dataclasses.dataclass(frozen=True)
class Backend:
    """Elementwise functions, constructors and linear algebra at one precision.

    Attributes:
        name: `"float64"` or `"mpmath-<dps>"`.
        dps: decimal digits of the arithmetic (15.95 for float64).
    """

    name: str
    dps: float
    _exp: Callable[[Any], Any]
    _log: Callable[[Any], Any]
    _log1p: Callable[[Any], Any]
    _tanh: Callable[[Any], Any]
    _sqrt: Callable[[Any], Any]
    _convert: Callable[[Any], Any]

    @property
    def is_mp(self) -> bool:
        """Whether this is the multiple-precision (mpmath) backend."""
        return self.name != "float64"

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """Context in which this backend's arithmetic has its stated precision."""
        if self.is_mp:
            with mpmath.workdps(int(self.dps)):
                yield
        else:
            yield

    # -- construction ----------------------------------------------------------------------
    def asarray(self, x: Any) -> np.ndarray:
        """Convert numbers (float64 values are converted exactly) to this backend's arrays."""
        if self.is_mp:
            arr = np.asarray(x)
            out = np.empty(arr.shape, dtype=object)
            for index, value in np.ndenumerate(arr):
                out[index] = self._convert(value)
            return out
        return np.asarray(x, dtype=np.float64)

    def scalar(self, x: Any) -> Any:
        """A scalar of this backend (exact conversion from float64, int or decimal string)."""
        return self._convert(x)

    def zeros(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """An array of zeros."""
        return self.asarray(np.zeros(shape))

    def eye(self, n: int) -> np.ndarray:
        """The `n x n` identity."""
        return self.asarray(np.eye(n))

    # -- elementwise -----------------------------------------------------------------------
    def exp(self, x: Any) -> Any:
        """Elementwise exp."""
        return self._exp(x)

    def log(self, x: Any) -> Any:
        """Elementwise natural log."""
        return self._log(x)

    def log1p(self, x: Any) -> Any:
        """Elementwise log(1 + x)."""
        return self._log1p(x)

    def tanh(self, x: Any) -> Any:
        """Elementwise tanh."""
        return self._tanh(x)

    def sqrt(self, x: Any) -> Any:
        """Elementwise square root."""
        return self._sqrt(x)

    def sigmoid(self, x: Any) -> Any:
        """Logistic function 1 / (1 + exp(-x)), stable for large |x|."""
        if self.is_mp:
            return 1 / (1 + self.exp(-x))
        return scipy.special.expit(x)

    def softplus(self, x: Any) -> Any:
        """log(1 + exp(x)), stable for large |x|."""
        if self.is_mp:
            return self.log1p(self.exp(x))
        return np.logaddexp(0.0, x)

    def softmax(self, z: np.ndarray) -> np.ndarray:
        """Softmax over the last axis (max-shifted)."""
        shifted = z - np.max(z, axis=-1, keepdims=True)
        e = self.exp(shifted)
        return e / np.sum(e, axis=-1, keepdims=True)

    def log_softmax(self, z: np.ndarray) -> np.ndarray:
        """Log softmax over the last axis (max-shifted)."""
        shifted = z - np.max(z, axis=-1, keepdims=True)
        return shifted - self.log(np.sum(self.exp(shifted), axis=-1, keepdims=True))

    # -- linear algebra --------------------------------------------------------------------
    def solve(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Solve `a x = b` for a square nonsingular `a` (b a vector or a matrix).

        scipy's `LinAlgWarning` (an ill-conditioned `a`, `rcond < eps`) is not raised: a caller
        judges the solve by the condition number it computes itself (the harness's tolerances
        are `kappa` times the rounding, Higham 2002 Thm 7.2, and a system singular to the
        port's precision is reported as not checked), so the warning was only noise on the
        oracle's stderr. A singular `a` still raises `LinAlgError`.
        """
        if not self.is_mp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
                return scipy.linalg.solve(a, b)
        x = mpmath.lu_solve(mpmath.matrix(a.tolist()), mpmath.matrix(np.asarray(b).tolist()))
        return _from_mpmatrix(x, np.asarray(b).shape)

    def eigh(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric matrix."""
        if not self.is_mp:
            return np.linalg.eigh(a)
        values, vectors = mpmath.eigsy(mpmath.matrix(a.tolist()))
        n = a.shape[0]
        w = np.array([values[i] for i in range(n)], dtype=object)
        v = _from_mpmatrix(vectors, (n, n))
        order = np.argsort(w.astype(float), kind="stable")
        return w[order], v[:, order]

    def to_float64(self, x: Any) -> np.ndarray:
        """Round to float64 (for reporting and comparison)."""
        return np.asarray(np.asarray(x, dtype=object).astype(float) if self.is_mp else x,
                          dtype=np.float64)


def _from_mpmatrix(m: mpmath.matrix, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty((m.rows, m.cols), dtype=object)
    for i in range(m.rows):
        for j in range(m.cols):
            out[i, j] = m[i, j]
    return out.reshape(shape)


def _ufunc(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    vectorized = np.frompyfunc(fn, 1, 1)

    def apply(x: Any) -> Any:
        return vectorized(x) if isinstance(x, np.ndarray) else fn(x)

    return apply


def _mpf(x: Any) -> mpmath.mpf:
    if isinstance(x, np.integer):
        x = int(x)
    elif isinstance(x, np.floating):
        x = float(x)
    return mpmath.mpf(x)


FLOAT64 = Backend(
    name="float64",
    dps=float(np.finfo(np.float64).precision + 0.95),
    _exp=np.exp,
    _log=np.log,
    _log1p=np.log1p,
    _tanh=np.tanh,
    _sqrt=np.sqrt,
    _convert=np.float64,
)


def mp_backend(dps: int = 50) -> Backend:
    """The multiple-precision backend at `dps` decimal digits (use inside `.precision()`)."""
    if dps < 20:
        raise ValueError(f"dps: need at least 20 digits to certify float64, got {dps}")
    return Backend(
        name=f"mpmath-{dps}",
        dps=float(dps),
        _exp=_ufunc(mpmath.exp),
        _log=_ufunc(mpmath.log),
        _log1p=_ufunc(mpmath.log1p),
        _tanh=_ufunc(mpmath.tanh),
        _sqrt=_ufunc(mpmath.sqrt),
        _convert=_mpf,
    )
