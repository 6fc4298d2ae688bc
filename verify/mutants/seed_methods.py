"""The bugs of seed 004's second-order code, ported faithfully (PROTOCOL s9 and s5).

Each class is a `NumpyPort` with exactly one of the seed's mistakes, written the way a reader
porting the page's code to numpy would carry it over. `docs/methods.md` explains each and
which check catches it:

* `seed-lbfgs-overwritten-gradient` -- `lbfgs`: the first loop of the two-loop recursion
  rebinds `grad_z` (`grad_z = grad_z - alpha * dgs[i]`), and the new pair is then formed as
  `dg = grad(new_z) - grad_z` from the *overwritten* variable, i.e. `y = grad h(theta') - q`
  instead of `grad h(theta') - grad h(theta)`: off by `g - q = sum_i alpha_i y_i`. The
  direction and the step are right; only the stored pair is wrong, so the bug is only
  visible where `y` is formed. Caught by value by the `lbfgs_step` check (protocol
  extension), which compares `y` with the reference secant pair. (The in-place numpy
  rendering of the same loop, `q = g; q -= alpha * y`, is an input-aliasing bug; that one is
  `lbfgs-direction-in-place` in `verify.mutants._corpus`, caught because the harness hands
  `g` read-only.)
* `seed-lbfgs-no-gamma` -- `lbfgs`: "Starting guess for (H^-1 grad_z) is a constant scale",
  but the scale is never applied (`H_0 = I` whatever `gamma`).
* `seed-diagonal-vjp-ones` -- `diagonal_newton_descent`/`adahessian`: "diagonal of Hessian"
  via `vjp(grad)(ones)`, which is `H @ 1` (row sums), not `diag(H)`.
* `seed-hutchinson-ones-probe` -- the same vjp-with-ones used as a diagonal estimator: a
  Hutchinson estimator whose only probe is the all-ones vector (biased: returns `A @ 1`).
* `seed-lowrank-coupled-softmax` -- `gauss_newton`: `H_l = diag(p) - p p^T` built from the
  flattened `(B*C,)` probabilities couples different examples; the GGN's output Hessian is
  block diagonal.
* `seed-shampoo-inverse-square-root` -- the page's formula `L^{-1/2} G R^{-1/2}` (the code
  uses p = 4; a port following the text uses p = 2).
* `seed-inverse-root-relative-ridge` -- `matrix_inverse_pth_root` scales the ridge by the
  largest eigenvalue (`ridge_epsilon * max_ev`), so `(M + ridge I)^{-1/p}` is not computed.
* `seed-inverse-root-float32` -- `_INVERSE_PTH_ROOT_DATA_TYPE = jnp.float32`: the coupled
  Newton iteration runs in float32 to `error_tolerance=1e-6` inside a port that declares
  float64.
* `seed-adam-square-of-mean` -- Adam as a diagonal empirical Fisher: `g ** 2` of the
  *batch* gradient (square of the mean) in place of the mean of squared per-example gradients.
"""

from __future__ import annotations

import numpy as np

from verify.mutants import BugClass, NumpyPort, register_mutant

__all__: list[str] = []

_BOTH = ("float64", "float32")


@register_mutant("seed-lbfgs-overwritten-gradient", BugClass.SEED_METHODS,
                 "L-BFGS forms y = grad(new_z) - grad_z after the two-loop recursion rebound "
                 "grad_z to q (seed 004 `lbfgs`)",
                 capabilities=("lbfgs_step",), dtypes=_BOTH)
class LbfgsOverwrittenGradient(NumpyPort):
    """Seed 004's `lbfgs`, line for line: the raw gradient is lost before `y` is formed."""

    def lbfgs_step(self, problem, s_list, y_list, lr, gamma=1.0):
        """One iteration whose `y` is `grad h(theta') - q`, `q` the first loop's output."""
        z = self._cast(problem.params)
        grad_z = self.gradient(problem)
        pairs = [(self._cast(s), self._cast(y)) for s, y in zip(s_list, y_list, strict=True)]
        alphas = []
        for dz, dg in reversed(pairs):                     # newest first, as the seed's lists
            alpha = (dz @ grad_z) / (dz @ dg)
            grad_z = grad_z - alpha * dg                   # rebinds grad_z: the gradient is gone
            alphas.append(alpha)
        hz = self._dt(gamma) * grad_z
        for (dz, dg), alpha in zip(pairs, reversed(alphas), strict=True):
            beta = (dg @ hz) / (dz @ dg)
            hz = hz + (alpha - beta) * dz
        new_z = z - self._dt(lr) * hz
        dg = self.gradient(problem.replace(params=new_z.astype(np.float64))) - grad_z
        return new_z, new_z - z, dg


@register_mutant("seed-lbfgs-no-gamma", BugClass.SEED_METHODS,
                 "L-BFGS ignores the initial scale: H_0 = I instead of gamma I (seed 004 `lbfgs`)",
                 capabilities=("lbfgs_direction",), dtypes=_BOTH)
class LbfgsNoGamma(NumpyPort):
    """The seed's two-loop recursion starts from `Hz = grad_z`, i.e. `gamma = 1` always."""

    def lbfgs_direction(self, g, s_list, y_list, gamma=1.0):
        """`H_k g` with `H_0 = I` regardless of `gamma`."""
        return super().lbfgs_direction(g, s_list, y_list, gamma=1.0)


@register_mutant("seed-diagonal-vjp-ones", BugClass.SEED_METHODS,
                 "diag(H) computed as vjp(grad)(ones) = H @ 1, the row sums "
                 "(seed 004 `diagonal_newton_descent`, `adahessian`)",
                 capabilities=("hessian_diag",), dtypes=_BOTH)
class DiagonalVjpOnes(NumpyPort):
    """`vgrad(lambda x: vgrad(loss_fn, x), z)`: a Hessian-vector product with the ones vector."""

    def hessian_diag(self, problem):
        """`H @ 1` (what the seed's `vgrad` computes)."""
        return self.hvp(problem, np.ones(problem.n_params, self._dt))


@register_mutant("seed-hutchinson-ones-probe", BugClass.SEED_METHODS,
                 "diagonal estimator probing only with the ones vector: returns A @ 1 "
                 "(seed 004 `vgrad` used as AdaHessian's diagonal)",
                 capabilities=("hutchinson_diag",), dtypes=_BOTH)
class HutchinsonOnesProbe(NumpyPort):
    """Hutchinson with the constant probe `z = 1` in place of Rademacher probes."""

    def hutchinson_diag(self, matvec, n, num_samples, seed):
        """`1 * matvec(1)`, averaged over identical probes."""
        ones = np.ones(n, self._dt)
        total = sum(ones * self._cast(matvec(ones)) for _ in range(num_samples))
        return total / self._dt(num_samples)


@register_mutant("seed-lowrank-coupled-softmax", BugClass.SEED_METHODS,
                 "output-space GGN solve with one softmax Hessian over the flattened batch, "
                 "coupling examples (seed 004 `gauss_newton`)",
                 capabilities=("lowrank_ggn_update",), dtypes=_BOTH)
class LowrankCoupledSoftmax(NumpyPort):
    """`H_l = diag(p) - p p^T` with `p` the flattened `(B*C,)` probabilities."""

    def lowrank_ggn_update(self, problem, damping):
        """`-J^T (c H_l J J^T + lam I)^{-1} c r` with the seed's coupled `H_l` (softmax CE)."""
        if problem.loss != "softmax_cross_entropy":
            return super().lowrank_ggn_update(problem, damping)
        examples = list(self._examples(problem))
        c = self._dt(self._scale(problem))
        jac = np.concatenate([j for _, j, _, _ in examples])                    # (BC, n)
        probs = np.concatenate([self._softmax(z) for _, _, z, _ in examples])   # flattened
        residuals = np.concatenate([self._loss_grad(problem, z, y) for _, _, z, y in examples])
        h_l = np.diag(probs) - np.outer(probs, probs)
        eye = np.eye(jac.shape[0], dtype=self._dt)
        system = c * (h_l @ (jac @ jac.T)) + self._dt(damping) * eye
        return -(jac.T @ np.linalg.solve(system, c * residuals))


@register_mutant("seed-shampoo-inverse-square-root", BugClass.SEED_METHODS,
                 "Shampoo with exponent -1/2 (the page's formula L^{-1/2} G R^{-1/2}), not -1/4",
                 capabilities=("shampoo_direction",), dtypes=_BOTH)
class ShampooInverseSquareRoot(NumpyPort):
    """`(L + eps I)^{-1/2} G (R + eps I)^{-1/2}`."""

    def shampoo_direction(self, G, L, R, eps):
        """Apply the seed text's exponent -1/2."""
        return self.inverse_root(L, 2, eps) @ self._cast(G) @ self.inverse_root(R, 2, eps)


@register_mutant("seed-inverse-root-relative-ridge", BugClass.SEED_METHODS,
                 "inverse root with the ridge scaled by the largest eigenvalue "
                 "(seed 004 `matrix_inverse_pth_root`: ridge_epsilon * max_ev)",
                 capabilities=("inverse_root", "shampoo_direction"), dtypes=_BOTH)
class InverseRootRelativeRidge(NumpyPort):
    """`(M + ridge * lambda_max(M) I)^{-1/p}`."""

    def inverse_root(self, M, p, ridge=0.0):
        """Use the seed's relative ridge (`max(max_ev, 1e-16)` as in the page)."""
        lam_max = max(float(np.linalg.eigvalsh(self._cast(M))[-1]), 1e-16)
        return super().inverse_root(M, p, ridge * lam_max)


@register_mutant("seed-inverse-root-float32", BugClass.SEED_METHODS,
                 "coupled Newton inverse root run in float32 to error 1e-6 inside a float64 port "
                 "(seed 004 `_INVERSE_PTH_ROOT_DATA_TYPE = jnp.float32`)",
                 capabilities=("inverse_root", "shampoo_direction"))
class InverseRootFloat32(NumpyPort):
    """The seed's `matrix_inverse_pth_root` (coupled Newton, float32, max-abs error 1e-6)."""

    def inverse_root(self, M, p, ridge=0.0):
        """Coupled Newton in float32 with the seed's stopping rule, returned as float64."""
        f32 = np.float32
        a = np.asarray(M, f32) + f32(ridge) * np.eye(len(M), dtype=f32)
        eye = np.eye(len(M), dtype=f32)
        z = f32((1 + p) / (2 * np.linalg.norm(a)))
        m, h = a * z, eye * f32(z ** (1.0 / p))
        error = float(np.max(np.abs(m - eye)))
        for _ in range(100):
            if error <= 1e-6:
                break
            t = f32(1 + 1.0 / p) * eye - m / f32(p)
            new_m = np.linalg.matrix_power(t, p) @ m
            new_error = float(np.max(np.abs(new_m - eye)))
            if new_error > 1.2 * error:
                break
            m, h, error = new_m, h @ t, new_error
        return h.astype(np.float64)


@register_mutant("seed-adam-square-of-mean", BugClass.SEED_METHODS,
                 "diagonal empirical Fisher as the square of the batch gradient (Adam's g**2) "
                 "instead of the mean of squared per-example gradients",
                 capabilities=("empirical_fisher_diag",), dtypes=_BOTH)
class AdamSquareOfMean(NumpyPort):
    """`(grad h)^2` in place of `c sum_b g_b^2`."""

    def empirical_fisher_diag(self, problem):
        """Return the square of the mean gradient."""
        return self.gradient(problem) ** 2
