"""Conjugate gradient (CG) and preconditioned CG, the solver of Hessian-free optimization.

`_dense.py` is the reference: plain numpy arithmetic (`+ - * / @` and `np.sum` only), so the
very same code runs in float64 and on numpy object arrays of mpmath numbers, together with
`krylov_optimal_iterate`, an independent direct computation of what CG's k-th iterate must
be (Grosse ch. 4 s4, seed 002: "its k-th iterate is the optimal point within the
k-dimensional Krylov subspace"). `_jax.py` is the jit-able twin on pytrees
(`jax.lax.while_loop`). They are re-exported from `ngd_ref.dense` and `ngd_ref.jax`.
"""
