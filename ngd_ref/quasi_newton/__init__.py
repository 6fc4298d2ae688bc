"""Quasi-Newton methods: BFGS and L-BFGS.

Sources: seed 004 "BFGS"; Grosse ch. 4 s2, seed 002; Nocedal & Wright, *Numerical
Optimization*, 2nd ed., eqs. (6.17), (6.19) and Algorithm 7.4.

* `ngd_ref.quasi_newton._dense` -- the reference (numpy or mpmath arrays); never imports JAX.
  Public names are re-exported by `ngd_ref.dense`.
* `ngd_ref.quasi_newton._jax` -- the JAX twin, re-exported by `ngd_ref.jax`.
"""
