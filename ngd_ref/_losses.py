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
import threading
from typing import Any

import mpmath
import numpy as np
import scipy.special

from ngd_ref._backend import FLOAT64, Backend
from ngd_ref._spec import Loss, loss_spec

__all__ = ["CategoricalLoss", "OutputLoss", "OutputMoments", "ScoreRule", "get_loss"]


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


@dataclasses.dataclass(frozen=True)
class ScoreRule:
    """A weighted point set reproducing `E_{y ~ r(.|z)}[p(dL/dz)]` for polynomials `p`.

    `E[p(u)] = sum_i weights[i] p(scores[i])` holds exactly for every polynomial `p` of degree
    `<= degree` in the score `u = dL/dz(y, z)` (for `is_support`, for every function: the rule
    is the distribution itself). Used for the exact moments of the sampled estimators
    (PROTOCOL s11), which are quadratic in `u`; their fourth moments need degree 8.

    Attributes:
        weights: `(N,)` nonnegative, summing to 1.
        scores: `(N, C)` the score `dL/dz` at each node.
        degree: the polynomial degree (in `u`) the rule integrates exactly.
        is_support: the nodes are the support of `y ~ r(.|z)` with their probabilities.
        atom_bound: for `is_support=False`, a bound on `P(f(y) = x)` for any `x` and any
            nonconstant polynomial `f` of degree <= 2 in `u`: 0 for the continuous outputs;
            `2 max_k P(y_c = k)` (over the coordinates) for Poisson.
        magnitudes: `(N, C)` float64 `MAG(dL/dz)` at each node (`OutputLoss.grad_magnitude`
            of the node's target: the score's closed form on absolute values, which sizes a
            port's rounding where the score cancels), or None for `|scores|`.
    """

    weights: np.ndarray
    scores: np.ndarray
    degree: int
    is_support: bool
    atom_bound: float = 0.0
    magnitudes: np.ndarray | None = None


class OutputLoss(abc.ABC):
    """Per-example loss `L(y, z)` and its output distribution `r(y|z)`."""

    name: str

    @abc.abstractmethod
    def value(self, bk: Backend, y, z: np.ndarray):
        """`L(y, z)`."""

    @abc.abstractmethod
    def grad(self, bk: Backend, y, z: np.ndarray) -> np.ndarray:
        """`dL/dz`, shape `(C,)`."""

    def grad_magnitude(self, y, z: np.ndarray) -> np.ndarray:
        """`MAG(dL/dz)`, float64 `(C,)`: the gradient's closed form on absolute values.

        Where the closed form is a difference (`p - e_y`, `p - y`, `rate - y`, `z - y`) a
        correct port's value carries an absolute error of order `u` times the sum of the
        absolute terms, not `u |dL/dz|` (a saturated sigmoid with `y = 1` has `p - y ~ 0`);
        the tolerance policy sizes gradient-based magnitudes with this. Default: `|dL/dz|`.
        """
        return np.abs(np.asarray(self.grad(FLOAT64, y, np.asarray(z, dtype=np.float64)),
                                 dtype=np.float64))

    def log_range(self, y, z: np.ndarray) -> float:
        """The largest `|log|` of a magnitude the loss's own derivatives form (float64).

        A port's dtype must hold every intermediate of `L`, `dL/dz` and `d^2L/dz^2`; the
        exponentials' arguments are bounded by the outputs (`exp(z)`, a softmax's spread) and
        need no term here. Default 0: the derivatives form nothing beyond the outputs' range.
        """
        return 0.0

    @abc.abstractmethod
    def hessian(self, bk: Backend, y, z: np.ndarray) -> np.ndarray:
        """`d^2 L / dz^2`, shape `(C, C)`."""

    @abc.abstractmethod
    def moments(self, bk: Backend, z: np.ndarray) -> OutputMoments:
        """Exact expectations over `y ~ r(.|z)`."""

    @abc.abstractmethod
    def kl(self, bk: Backend, z1: np.ndarray, z2: np.ndarray):
        """`KL(r(.|z1) || r(.|z2))` in closed form."""

    @abc.abstractmethod
    def score_rule(self, bk: Backend, z: np.ndarray, degree: int) -> ScoreRule:
        """Exact rule for `E_{y ~ r(.|z)}` of polynomials of degree `<= degree` in `dL/dz`."""

    @abc.abstractmethod
    def score_rule_nodes(self, outputs: int, degree: int) -> int:
        """The nodes `score_rule` enumerates for an `outputs`-entry z (callers budget on it)."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, z: np.ndarray, size: int) -> np.ndarray:
        """`size` independent targets `y ~ r(.|z)` (float64 `z`), in the problem's format.

        Returns `(size,)` int class labels for the categorical losses, else `(size, C_y)`.
        """


# ---------------------------------------------------------------------------------------------
# Categorical outputs
# ---------------------------------------------------------------------------------------------
class CategoricalLoss(OutputLoss):
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

    def score_rule(self, bk: Backend, z: np.ndarray, degree: int) -> ScoreRule:
        """The C classes with their probabilities: exact for every integrand."""
        p = self.probabilities(bk, z)
        scores = np.stack([self.grad(bk, k, z) for k in range(z.shape[0])])
        z64 = np.asarray(bk.to_float64(z), dtype=np.float64)
        magnitudes = np.stack([self.grad_magnitude(k, z64) for k in range(z.shape[0])])
        return ScoreRule(np.asarray(p), scores, degree, True, magnitudes=magnitudes)

    def score_rule_nodes(self, outputs: int, degree: int) -> int:
        """The C classes."""
        return outputs

    def sample(self, rng, z, size):
        p = np.asarray(self.probabilities(FLOAT64, np.asarray(z, dtype=float)))
        return rng.choice(p.shape[0], size=size, p=p / np.sum(p))


class _SoftmaxCrossEntropy(CategoricalLoss):
    name = "softmax_cross_entropy"

    def grad_magnitude(self, y, z):
        p = FLOAT64.softmax(np.asarray(z, dtype=np.float64))
        p[int(y)] += 1.0  # |p - e_y| <= p + e_y
        return p

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


class _NllProbs(CategoricalLoss):
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

    def log_range(self, y, z):
        """`2 |log z_y|`: the Hessian's `z_y^2` underflows (and `1 / z_y^2` overflows) beyond it.

        Campaign seed 16's `gen-2x2-softmax-nll_probs-b3-mean-k0-s12339` reached `z_y ~ 1e-20`
        on a damped-Newton trajectory: a correct float32 port's `z_y^2` is 0 there.
        """
        return 2 * abs(math.log(max(float(z[int(y)]), np.finfo(np.float64).tiny)))


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
        mean_u: Any = 0  # arrays after the first node
        mean_uu: Any = 0
        mean_h: Any = 0
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

    # -- sampled estimators (PROTOCOL s11) -------------------------------------------------
    #: polynomial degree of the score `dL/dz` in the target y
    score_degree_in_y: int = 1

    def coordinate_rule(self, bk: Backend, zeta: np.ndarray,
                        points: int) -> tuple[np.ndarray, np.ndarray]:
        """Gauss rule with `points` nodes per coordinate for `y_c ~ r(.|zeta_c)`: `(Q, C_y)` each.

        A `points`-node Gauss rule integrates polynomials of degree `<= 2 points - 1` in `y_c`
        exactly (Golub and Welsch 1969); `_Bernoulli` overrides it with its 2-point support.
        """
        raise NotImplementedError

    def score_rule(self, bk: Backend, z: np.ndarray, degree: int) -> ScoreRule:
        """Tensor product of per-coordinate Gauss rules (the coordinates are independent).

        A polynomial of degree `<= degree` in the score has degree `<= degree * d` in each
        `y_c` (`d = score_degree_in_y`), so `ceil((degree d + 1) / 2)` nodes per coordinate make
        the product rule exact; `N = points^{C_y}` nodes in all.
        """
        zeta = self._zeta(z)
        nodes, weights = self.coordinate_rule(bk, zeta, self._rule_points(degree))
        q, cy = nodes.shape
        grid = np.indices((q,) * cy).reshape(cy, -1)  # (C_y, N): node index per coordinate
        y = np.stack([nodes[grid[c], c] for c in range(cy)], axis=1)  # (N, C_y)
        w = np.prod(np.stack([weights[grid[c], c] for c in range(cy)], axis=1), axis=1)
        zeta_nodes = np.broadcast_to(zeta[:, None, :], (zeta.shape[0],) + y.shape)
        scores = self.terms(bk, y, zeta_nodes)[1]  # (k, N, C_y)
        scores = scores.transpose(1, 0, 2).reshape(y.shape[0], -1)
        z64 = np.asarray(bk.to_float64(z), dtype=np.float64)
        y64 = np.asarray(bk.to_float64(y), dtype=np.float64)
        magnitudes = np.asarray(self.grad_magnitude(y64, z64))  # elementwise closed forms
        if magnitudes.shape != scores.shape:  # one that is not: node by node
            magnitudes = np.stack([self.grad_magnitude(node, z64) for node in y64])
        return ScoreRule(w, scores, degree, self.is_support_rule, self.atom_bound(zeta),
                         magnitudes)

    #: whether `coordinate_rule` is the distribution's support itself
    is_support_rule: bool = False

    def _rule_points(self, degree: int) -> int:
        """Gauss nodes per coordinate: `ceil((degree d + 1) / 2)` (see `score_rule`)."""
        return -(-(degree * self.score_degree_in_y + 1) // 2)

    def score_rule_nodes(self, outputs: int, degree: int) -> int:
        """`N = Q^{C_y}`, the nodes `score_rule` enumerates for an `outputs`-entry z."""
        one = self._zeta(np.zeros(self.block_size))  # one coordinate: Q nodes
        per_coordinate = self.coordinate_rule(FLOAT64, one, self._rule_points(degree))[0]
        return per_coordinate.shape[0] ** (outputs // self.block_size)

    def atom_bound(self, zeta: np.ndarray) -> float:
        """See `ScoreRule.atom_bound`: 0 for continuous outputs."""
        return 0.0


def _golub_welsch(bk: Backend, alpha: list, beta: list) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the Gauss rule of the three-term recurrence `(alpha_k, beta_k)`.

    Monic orthogonal polynomials `p_{k+1} = (x - alpha_k) p_k - beta_k p_{k-1}` of a
    probability measure; the nodes are the eigenvalues of the Jacobi matrix (diagonal alpha,
    off-diagonal sqrt(beta)), the weights the squared first eigenvector components (Golub and
    Welsch 1969). Exact for polynomials of degree `<= 2 len(alpha) - 1`.
    """
    n = len(alpha)
    jacobi = bk.zeros((n, n))
    for k in range(n):
        jacobi[k, k] = alpha[k]
        if k:
            jacobi[k, k - 1] = jacobi[k - 1, k] = bk.sqrt(beta[k])
    values, vectors = bk.eigh(jacobi)
    return values, vectors[0] * vectors[0]


def _standard_normal_rule(bk: Backend, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule for N(0, 1): probabilists' Hermite recurrence `alpha_k = 0, beta_k = k`."""
    return _golub_welsch(bk, [bk.scalar(0)] * points, [bk.scalar(k) for k in range(points)])


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

    def grad_magnitude(self, y, z):
        return np.abs(np.asarray(z, dtype=np.float64)) + np.abs(np.asarray(y, dtype=np.float64))

    def terms(self, bk, y, zeta):
        r = zeta - y
        ones = 0 * r + 1
        return 0.5 * r * r, r, ones[None]

    def rule(self, bk, zeta):
        return _gauss_hermite(bk, zeta[0], 0 * zeta[0] + 1)

    def coordinate_rule(self, bk, zeta, points):
        xi, w = _standard_normal_rule(bk, points)
        return zeta[0][None, :] + xi[:, None] + 0 * zeta[0], w[:, None] + 0 * zeta[0]

    def sample(self, rng, z, size):
        return np.asarray(z, dtype=float) + rng.standard_normal((size, z.shape[0]))

    def kl(self, bk, z1, z2):
        d = z1 - z2
        return 0.5 * np.sum(d * d)


class _SigmoidCrossEntropy(_Separable):
    """`softplus(z) - y z`: Bernoulli with logit z (natural parameter)."""

    name = "sigmoid_cross_entropy"

    def grad_magnitude(self, y, z):
        return FLOAT64.sigmoid(np.asarray(z, dtype=np.float64)) + np.asarray(y, dtype=np.float64)

    def terms(self, bk, y, zeta):
        p = bk.sigmoid(zeta)
        # p (1 - p) as sigmoid(z) sigmoid(-z): no cancellation when p saturates at 1.
        return bk.softplus(zeta) - y * zeta, p - y, (p * bk.sigmoid(-zeta))[None]

    def rule(self, bk, zeta):
        p = bk.sigmoid(zeta[0])
        return np.stack([0 * p, 0 * p + 1]), np.stack([1 - p, p]), 0.0

    is_support_rule = True

    def coordinate_rule(self, bk, zeta, points):
        """The support {0, 1} itself, exact for every integrand."""
        nodes, weights, _ = self.rule(bk, zeta)
        return nodes, weights

    def sample(self, rng, z, size):
        p = scipy.special.expit(np.asarray(z, dtype=float))
        return (rng.random((size, p.shape[0])) < p).astype(float)

    def kl(self, bk, z1, z2):
        p1, p2 = bk.sigmoid(z1), bk.sigmoid(z2)
        return np.sum(p1 * (bk.log(p1) - bk.log(p2)) + (1 - p1) * (bk.log(1 - p1) - bk.log(1 - p2)))


class _Poisson(_Separable):
    """`exp(z) - y z + log(y!)`: Poisson with log-rate z (natural parameter)."""

    name = "poisson"

    def grad_magnitude(self, y, z):
        return np.exp(np.asarray(z, dtype=np.float64)) + np.asarray(y, dtype=np.float64)

    def terms(self, bk, y, zeta):
        rate = bk.exp(zeta)
        log_factorial = _log_factorials(bk, y)
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

    def coordinate_rule(self, bk, zeta, points):
        """Gauss-Charlier rules: `alpha_k = k + rate`, `beta_k = k rate` (all cumulants = rate).

        No truncation: the rule reproduces the Poisson moments up to degree `2 points - 1`.
        """
        rates = bk.exp(zeta[0])
        columns = [_golub_welsch(bk, [k + lam for k in range(points)],
                                 [k * lam for k in range(points)]) for lam in rates]
        return (np.stack([c[0] for c in columns], axis=1),
                np.stack([c[1] for c in columns], axis=1))

    def atom_bound(self, zeta):
        """1: not derived for Poisson (the seed-dependence test is then not applied)."""
        return 1.0

    def sample(self, rng, z, size):
        return rng.poisson(np.exp(np.asarray(z, dtype=float)), size=(size, z.shape[0])).astype(
            float)


_POISSON_SERIES_MAX_RATE = 64.0


_LOG_FACTORIALS: dict[str, list[object]] = {}
_LOG_FACTORIALS_LOCK = threading.Lock()


def _log_factorials(bk: Backend, y) -> np.ndarray:
    """`log y! = log 2 + log 3 + ... + log y` of every target, summed left to right in `bk`.

    The partial sums are kept per backend (they depend on the target only), so each is
    computed once: the same numbers as the sum written out, without its O(y) cost per call.
    Returns a flat array, one entry per target.
    """
    ks = np.rint(np.asarray(y, dtype=np.float64)).astype(np.int64).reshape(-1)
    with _LOG_FACTORIALS_LOCK:
        sums = _LOG_FACTORIALS.setdefault(bk.name, [bk.scalar(0), bk.scalar(0)])
        if ks.size and ks.max() >= len(sums):
            with bk.precision():
                for i in range(len(sums), int(ks.max()) + 1):
                    sums.append(sums[-1] + bk.log(bk.scalar(i)))
        return bk.asarray([sums[k] for k in ks.tolist()])


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
    log_weight = -rate
    for count in ks:
        weights.append(bk.exp(log_weight))
        log_weight = log_weight + log_rate - bk.log(bk.scalar(int(count) + 1))
    return nodes, np.stack(weights), worst_tail


class _GaussianLogvar(_Separable):
    """Heteroscedastic Gaussian, z = (mu, s): `0.5 (y-mu)^2 e^-s + 0.5 s + 0.5 log 2 pi`.

    s is a log-variance, not a natural parameter, so F != G and `H_L` is indefinite at
    observed targets (its determinant is `-0.5 (y - mu)^2 e^{-2s}`).
    """

    name = "gaussian_logvar"

    def grad_magnitude(self, y, z):
        mu, s = self._zeta(np.asarray(z, dtype=np.float64))
        reach = (np.abs(mu) + np.abs(np.asarray(y, dtype=np.float64))) * np.exp(-0.5 * s)
        return np.concatenate([reach * np.exp(-0.5 * s), 0.5 + 0.5 * reach * reach])
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

    score_degree_in_y = 2

    def coordinate_rule(self, bk, zeta, points):
        xi, w = _standard_normal_rule(bk, points)
        std = bk.exp(0.5 * zeta[1])
        return zeta[0][None, :] + xi[:, None] * std[None, :], w[:, None] + 0 * zeta[0]

    def sample(self, rng, z, size):
        mu, s = np.split(np.asarray(z, dtype=float), 2)
        return mu + np.exp(0.5 * s) * rng.standard_normal((size, mu.shape[0]))

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
