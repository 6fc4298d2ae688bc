"""Diagonal curvature: exact diagonals, Hutchinson's estimator, AdaHessian/Adam moments.

Sources: seed 004 "Diagonal Newton", "AdaHessian", "Adagrad and Adam"; Martens s7, seed 003.

* `ngd_ref.diagonal._dense` -- the reference (numpy or mpmath); never imports JAX. Public
  names are re-exported by `ngd_ref.dense`.
* `ngd_ref.diagonal._jax` -- the JAX twin, re-exported by `ngd_ref.jax`.
"""
