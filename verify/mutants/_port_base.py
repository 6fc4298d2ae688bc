"""The primitives `NumpyPort` defines and its mixins build on, declared for the type checker.

`TrajectoryPort`, `SampledPortMixin` and `ConvHessianMixin` are mixins of `NumpyPort`: their
methods call the port's own precision, layer geometry, forward pass, loss derivatives and
linear algebra. `PortPrimitives` declares those members (only while type checking: at run time
the class is empty, so the method resolution order finds `NumpyPort`'s definitions and nothing
here can shadow them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

__all__ = ["PortPrimitives"]


class PortPrimitives:
    """The members of `NumpyPort` that its mixins use (signatures only)."""

    if TYPE_CHECKING:
        dtype: str

        @property
        def _dt(self) -> type[np.floating[Any]]: ...

        def _cast(self, array: Any) -> np.ndarray: ...

        def _scale(self, problem: Any) -> float: ...

        def _geometry(self, problem: Any) -> tuple[Any, ...]: ...

        def _layer_offsets(self, problem: Any) -> list[int]: ...

        def _wbar(self, problem: Any, theta: np.ndarray, index: int) -> np.ndarray: ...

        def _vec(self, matrix: np.ndarray) -> np.ndarray: ...

        def _act(
            self, name: str, s: np.ndarray
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

        def _pre_activation_cotangents(
            self, activation: str, s: Any, a: Any, g_a: Any, dg_a: Any, ds: Any, da: Any
        ) -> tuple[np.ndarray, np.ndarray]: ...

        def _loss_grad(self, problem: Any, z: Any, y: Any) -> np.ndarray: ...

        def _loss_hessian(self, problem: Any, z: Any, y: Any) -> np.ndarray: ...

        @staticmethod
        def _softmax(s: np.ndarray) -> np.ndarray: ...

        def _backward(
            self, problem: Any, theta: Any, trace: Any, g_out: np.ndarray
        ) -> list[np.ndarray]: ...

        def _traces(self, problem: Any) -> Iterator[tuple[Any, Any, Any]]: ...

        def _examples(self, problem: Any) -> Iterator[tuple[Any, np.ndarray, Any, Any]]: ...

        def _output_fisher(self, problem: Any, z: Any) -> np.ndarray: ...

        def _per_example_gradients(self, problem: Any) -> np.ndarray: ...

        def _damped_matrix(self, matrix: np.ndarray, damping: float) -> np.ndarray: ...

        def _kron_solve(
            self, a: Any, s: Any, v_block: Any, damping: Any, method: Any
        ) -> np.ndarray: ...

        def loss(self, problem: Any) -> Any: ...

        def gradient(self, problem: Any) -> np.ndarray: ...

        def kfac_factors(
            self, problem: Any, kind: Any, approx: Any = "expand"
        ) -> list[tuple[np.ndarray, np.ndarray]]: ...

        def _factors_with(
            self, problem: Any, kind: Any, approx: Any
        ) -> list[tuple[np.ndarray, np.ndarray]]: ...

        def cg(
            self,
            matvec: Callable[[np.ndarray], np.ndarray],
            b: Any,
            x0: Any = None,
            tol: float = 1e-10,
            maxiter: int | None = None,
            precond: Any = None,
        ) -> Any: ...

        def lbfgs_direction(
            self, g: Any, s_list: Any, y_list: Any, gamma: float = 1.0
        ) -> np.ndarray: ...

        def inverse_root(self, M: Any, p: Any, ridge: float = 0.0) -> np.ndarray: ...
