"""The losses of PROTOCOL section 2 as output distributions r(y|z), on any backend.

Each loss gives, for one example, the value `L(y, z) = -log r(y|z)` (up to the constants
stated in the protocol), its gradient `dL/dz`, its Hessian `H_L = d^2L/dz^2`, and the exact
expectations over `y ~ r(.|z)` that define the true Fisher (Martens s5, s9):

    E[dL/dz]                     -- zero for a normalized density in natural coordinates,
    E[d^2L/dz^2]                 -- the "expected Hessian" form of the output Fisher,
    F_R = E[dL/dz dL/dz^T]       -- the "score outer product" form.

Expectations are exact, never sampled:
    * categorical (`softmax_cross_entropy`, `nll_probs`): enumeration of the C classes;
    * Bernoulli (`sigmoid_cross_entropy`): enumeration of {0, 1} per output;
    * Gaussian (`mse`, `gaussian_logvar`): 3-point Gauss-Hermite quadrature per output, exact
      because every integrand is a polynomial of degree <= 4 in y (the rule is exact to 5);
    * Poisson: the series over y = 0..K, truncated where a proven bound puts the tail below
      the working precision (see `_poisson_rule`); above rate 64, where the series would need
      hundreds of terms and its rounding grows like `rate * u`, the closed forms
      `E[dL/dz] = 0`, `E[H_L] = F_R = diag(rate)`.
The separable losses exploit independence across outputs: cross-output covariances are
products of means, so no product grid over outputs is needed.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import mpmath
import numpy as np

from ngd_ref._backend import Backend
from ngd_ref._spec import Loss, loss_spec

__all__ = ["OutputLoss", "OutputMoments", "get_loss"]


@dataclasses.dataclass(frozen=True)
class OutputMoments:
    """Exact expectations over `y ~ r(.|z)` for one example (all in output space).

    Attributes:
        mean_grad: `E[dL/dz]`, shape `(C,)`.
        mean_hessian: `E[d^2 L / dz^2]`, shape `(C, C)`.
        fisher: `F_R = E[dL/dz dL/dz^T]`, shape `(C, C)`.
        tail_bound: proven bound on what a truncated series left out (0 if none).
    """

    mean_grad: np.ndarray
    mean_hessian: np.ndarray
    fisher: np.ndarray
    tail_bound: float = 0.0


class OutputLoss(abc.ABC):
    """Per-example loss `L(y, z)` and its output distribution `r(y|z)`."""

    name: str

    @abc.abstractmethod
    def value(self, bk: Backend, y, z: np.ndarray):
        """`L(y, z)`."""

    @abc.abstractmethod
    def grad(self, bk: Backend, y, z: np.ndarray) -> np.ndarray:
        """`dL/dz`, shape `(C,)`."""

    @abc.abstractmethod
    def hessian(self, bk: Backend, y, z: np.ndarray) -> np.ndarray:
        """`d^2 L / dz^2`, shape `(C, C)`."""

    @abc.abstractmethod
    def moments(self, bk: Backend, z: np.ndarray) -> OutputMoments:
        """Exact expectations over `y ~ r(.|z)`."""

    @abc.abstractmethod
    def kl(self, bk: Backend, z1: np.ndarray, z2: np.ndarray):
        """`KL(r(.|z1) || r(.|z2))` in closed form."""


# ---------------------------------------------------------------------------------------------
# Categorical outputs
# ---------------------------------------------------------------------------------------------
class _Categorical(OutputLoss):
    """Categorical r(y|z) = p(z)[y]; expectations by enumerating the C classes."""

    @abc.abstractmethod
    def probabilities(self, bk: Backend, z: np.ndarray) -> np.ndarray:
        """Class probabilities `p(z)`."""

    def moments(self, bk: Backend, z: np.ndarray) -> OutputMoments:
        p = self.probabilities(bk, z)
        c = z.shape[0]
        grads = [self.grad(bk, k, z) for k in range(c)]
        mean_grad = sum(p[k] * grads[k] for k in range(c))
        mean_hessian = sum(p[k] * self.hessian(bk, k, z) for k in range(c))
        fisher = sum(p[k] * np.multiply.outer(grads[k], grads[k]) for k in range(c))
        return OutputMoments(mean_grad, mean_hessian, fisher)

    def kl(self, bk: Backend, z1: np.ndarray, z2: np.ndarray):
        p1, p2 = self.probabilities(bk, z1), self.probabilities(bk, z2)
        return np.sum(p1 * (bk.log(p1) - bk.log(p2)))


class _SoftmaxCrossEntropy(_Categorical):
    name = "softmax_cross_entropy"

    def probabilities(self, bk, z):
        return bk.softmax(z)

    def value(self, bk, y, z):
        return -bk.log_softmax(z)[int(y)]

    def grad(self, bk, y, z):
        p = bk.softmax(z)
        g = p.copy()
        g[int(y)] = -_complements(p)[int(y)]
        return g

    def hessian(self, bk, y, z):
        p = bk.softmax(z)
        h = -np.multiply.outer(p, p)
        diagonal = p * _complements(p)
        for i in range(p.shape[0]):
            h[i, i] = diagonal[i]
        return h


def _complements(p: np.ndarray) -> np.ndarray:
    """`1 - p_i` as `sum_{j != i} p_j` (equal because `sum_j p_j = 1`).

    With a saturated softmax (`p_y ~ 1`) the direct `p_y - 1` (the gradient's y-th entry) and
    `p_i - p_i^2` (the Hessian's diagonal) cancel, losing a factor `1 / (1 - p_y)` of relative
    accuracy; the sum of the other probabilities keeps the accuracy of `p` itself.
    """
    return np.array([np.sum(np.delete(p, i)) for i in range(p.shape[0])], dtype=p.dtype)


class _NllProbs(_Categorical):
    """`-log z[y]` on probabilities z: z is not a natural parameter (F != G, Martens s9)."""

    name = "nll_probs"

    def probabilities(self, bk, z):
        return z

    def value(self, bk, y, z):
        return -bk.log(z[int(y)])

    def grad(self, bk, y, z):
        g = bk.zeros(z.shape)
        g[int(y)] = -1 / z[int(y)]
        return g

    def hessian(self, bk, y, z):
        h = bk.zeros((z.shape[0], z.shape[0]))
        h[int(y), int(y)] = 1 / (z[int(y)] * z[int(y)])
        return h


# ---------------------------------------------------------------------------------------------
# Separable outputs: L = sum_c l(y_c, z_block(c)), independent coordinates
# ---------------------------------------------------------------------------------------------
class _Separable(OutputLoss):
    """Losses that are sums over target coordinates c of `l(y_c, zeta_c)`.

    `zeta_c` is the coordinate's parameter block: `k = 1` output (`z_c`) or, for
    `gaussian_logvar`, `k = 2` outputs `(mu_c, s_c) = (z_c, z_{c + C/2})`. All methods work
    on all coordinates at once: `zeta` has shape `(k, C_y)`.
    """

    block_size: int = 1

    @abc.abstractmethod
    def terms(self, bk: Backend, y: np.ndarray, zeta: np.ndarray):
        """Per-coordinate `(l, dl/dzeta (k, C_y), d^2l/dzeta^2 (k, k, C_y))`."""

    @abc.abstractmethod
    def rule(self, bk: Backend, zeta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Exact quadrature for `y_c ~ r(.|zeta_c)`: nodes and weights `(Q, C_y)`, tail bound."""

    def _zeta(self, z: np.ndarray) -> np.ndarray:
        return z.reshape(self.block_size, -1)

    def _assemble_hessian(self, bk: Backend, blocks: np.ndarray) -> np.ndarray:
        """`(k, k, C_y)` per-coordinate blocks -> `(C, C)` with `C = k C_y`."""
        k, _, cy = blocks.shape
        h = bk.zeros((k * cy, k * cy))
        for i in range(k):
            for j in range(k):
                h[i * cy + np.arange(cy), j * cy + np.arange(cy)] = blocks[i, j]
        return h

    def value(self, bk, y, z):
        return np.sum(self.terms(bk, y, self._zeta(z))[0])

    def grad(self, bk, y, z):
        return self.terms(bk, y, self._zeta(z))[1].reshape(-1)

    def hessian(self, bk, y, z):
        return self._assemble_hessian(bk, self.terms(bk, y, self._zeta(z))[2])

    def moments(self, bk, z):
        zeta = self._zeta(z)
        nodes, weights, tail = self.rule(bk, zeta)
        mean_u = 0
        mean_uu = 0
        mean_h = 0
        for yq, wq in zip(nodes, weights, strict=True):
            _, u, h = self.terms(bk, yq, zeta)
            mean_u = mean_u + wq * u
            mean_uu = mean_uu + wq * u[:, None, :] * u[None, :, :]
            mean_h = mean_h + wq * h
        mean_grad = mean_u.reshape(-1)
        # Independent coordinates: Cov across coordinates factorizes into products of means.
        fisher = np.multiply.outer(mean_grad, mean_grad)
        within = self._assemble_hessian(bk, mean_uu - mean_u[:, None, :] * mean_u[None, :, :])
        return OutputMoments(mean_grad, self._assemble_hessian(bk, mean_h), fisher + within, tail)


def _gauss_hermite(bk: Backend, mean: np.ndarray, std: np.ndarray):
    """3-point Gauss-Hermite rule for N(mean, std^2): exact for polynomials of degree <= 5."""
    root3 = bk.sqrt(bk.scalar(3))
    nodes = np.stack([mean - root3 * std, mean, mean + root3 * std])
    w = [bk.scalar(1) / 6, bk.scalar(2) / 3, bk.scalar(1) / 6]
    weights = np.stack([w[0] + 0 * mean, w[1] + 0 * mean, w[2] + 0 * mean])
    return nodes, weights, 0.0


class _Mse(_Separable):
    """`0.5 (y - z)^2`: Gaussian with unit variance and mean z (natural parameter)."""

    name = "mse"

    def terms(self, bk, y, zeta):
        r = zeta - y
        ones = 0 * r + 1
        return 0.5 * r * r, r, ones[None]

    def rule(self, bk, zeta):
        return _gauss_hermite(bk, zeta[0], 0 * zeta[0] + 1)

    def kl(self, bk, z1, z2):
        d = z1 - z2
        return 0.5 * np.sum(d * d)


class _SigmoidCrossEntropy(_Separable):
    """`softplus(z) - y z`: Bernoulli with logit z (natural parameter)."""

    name = "sigmoid_cross_entropy"

    def terms(self, bk, y, zeta):
        p = bk.sigmoid(zeta)
        # p (1 - p) as sigmoid(z) sigmoid(-z): no cancellation when p saturates at 1.
        return bk.softplus(zeta) - y * zeta, p - y, (p * bk.sigmoid(-zeta))[None]

    def rule(self, bk, zeta):
        p = bk.sigmoid(zeta[0])
        return np.stack([0 * p, 0 * p + 1]), np.stack([1 - p, p]), 0.0

    def kl(self, bk, z1, z2):
        p1, p2 = bk.sigmoid(z1), bk.sigmoid(z2)
        return np.sum(p1 * (bk.log(p1) - bk.log(p2)) + (1 - p1) * (bk.log(1 - p1) - bk.log(1 - p2)))


class _Poisson(_Separable):
    """`exp(z) - y z + log(y!)`: Poisson with log-rate z (natural parameter)."""

    name = "poisson"

    def terms(self, bk, y, zeta):
        rate = bk.exp(zeta)
        log_factorial = bk.asarray([_log_factorial(bk, v) for v in np.asarray(y).reshape(-1)])
        value = rate - y * zeta + log_factorial.reshape(np.shape(y))
        return value, rate - y, rate[None]

    def rule(self, bk, zeta):
        return _poisson_rule(bk, bk.exp(zeta[0]))

    def moments(self, bk, z):
        rate = bk.exp(z)
        if max(float(r) for r in rate) <= _POISSON_SERIES_MAX_RATE:
            return super().moments(bk, z)
        # The series needs ~2 rate terms and its rounding grows with its length (~rate * u);
        # beyond the threshold use the closed forms E[rate - y] = 0, E[H_L] = Var[y] = rate.
        diag = np.diag(rate)
        return OutputMoments(0 * rate, diag, diag.copy(), 0.0)

    def kl(self, bk, z1, z2):
        r1, r2 = bk.exp(z1), bk.exp(z2)
        return np.sum(r1 * (z1 - z2) - r1 + r2)


_POISSON_SERIES_MAX_RATE = 64.0


def _log_factorial(bk: Backend, y) -> object:
    k = int(round(float(y)))
    return sum((bk.log(bk.scalar(i)) for i in range(2, k + 1)), bk.scalar(0))


def _poisson_rule(bk: Backend, rate: np.ndarray):
    """Truncated Poisson series with a proven tail bound.

    The integrands are polynomials of degree <= 2 in y, bounded by `(1 + rate)^2 (1 + y^2)`.
    For `k >= K >= 2 rate + 2`, the terms `T_k = p(k) (1 + k^2)` satisfy
    `T_{k+1} / T_k = rate/(k+1) * (1+(k+1)^2)/(1+k^2) <= 1/2`, so the tail after K is at most
    `2 T_{K+1}`. K grows until that bound (times `(1 + rate)^2`) is below 10^-(digits + 5).
    Returns nodes and weights of shape `(K+1, C_y)` and the tail bound actually achieved.
    """
    digits = bk.dps
    rates = [float(r) for r in rate]
    k_max = 0
    worst_tail = 0.0
    for lam in rates:
        k = max(int(2 * lam + 2), 4)
        while True:
            # log of 2 * p(k+1) * (1 + (k+1)^2) * (1 + lam)^2, in float (a bound, not a value)
            log_p = -lam + (k + 1) * math.log(lam) - math.lgamma(k + 2) if lam > 0 else -math.inf
            log_bound = math.log(2) + log_p + math.log1p((k + 1) ** 2) + 2 * math.log1p(lam)
            if log_bound < -(digits + 5) * math.log(10):
                break
            k += 8
        k_max = max(k_max, k)
        worst_tail = max(worst_tail, math.exp(log_bound))
    ks = np.arange(k_max + 1)
    nodes = np.stack([bk.asarray(np.full(rate.shape, float(k))) for k in ks])
    # p(k) = exp(-rate + k log(rate) - log k!) in log space: exp(-rate) alone underflows
    # in float64 once rate > ~745 (z > 6.6) and would zero every weight.
    weights = []
    log_rate = bk.log(rate)
    log_p = -rate
    for k in ks:
        weights.append(bk.exp(log_p))
        log_p = log_p + log_rate - bk.log(bk.scalar(int(k) + 1))
    return nodes, np.stack(weights), worst_tail


class _GaussianLogvar(_Separable):
    """Heteroscedastic Gaussian, z = (mu, s): `0.5 (y-mu)^2 e^-s + 0.5 s + 0.5 log 2 pi`.

    s is a log-variance, not a natural parameter, so F != G and `H_L` is indefinite at
    observed targets (its determinant is `-0.5 (y - mu)^2 e^{-2s}`).
    """

    name = "gaussian_logvar"
    block_size = 2

    def terms(self, bk, y, zeta):
        mu, s = zeta[0], zeta[1]
        r = y - mu
        inv_var = bk.exp(-s)
        log_2pi = bk.log(2 * mpmath.pi) if bk.is_mp else math.log(2 * math.pi)
        value = 0.5 * r * r * inv_var + 0.5 * s + 0.5 * log_2pi
        grad = np.stack([-r * inv_var, 0.5 - 0.5 * r * r * inv_var])
        hess = np.stack([np.stack([inv_var, r * inv_var]),
                         np.stack([r * inv_var, 0.5 * r * r * inv_var])])
        return value, grad, hess

    def rule(self, bk, zeta):
        return _gauss_hermite(bk, zeta[0], bk.exp(0.5 * zeta[1]))

    def kl(self, bk, z1, z2):
        mu1, s1 = self._zeta(z1)
        mu2, s2 = self._zeta(z2)
        d = mu1 - mu2
        return np.sum(0.5 * (s2 - s1 + (bk.exp(s1) + d * d) * bk.exp(-s2) - 1))


_LOSSES: dict[str, OutputLoss] = {
    loss.name: loss
    for loss in (_Mse(), _SoftmaxCrossEntropy(), _SigmoidCrossEntropy(), _Poisson(), _NllProbs(),
                 _GaussianLogvar())
}


def get_loss(name: str | Loss) -> OutputLoss:
    """The dense formulas of the loss called `name`.

    Raises:
        ValueError: for an unknown name, listing the known ones (as the JAX twin's
            `get_jax_loss`).
    """
    return _LOSSES[loss_spec(name).value]
