"""Diagonal curvature: exact diagonals, Hutchinson's estimator, AdaHessian/Adam moments.

Sources: seed 004 "Diagonal Newton", "AdaHessian", "Adagrad and Adam"; Martens s7, seed 003.

* `ngd_ref.diagonal._dense` -- the reference (numpy or mpmath); never imports JAX. Public
  names are re-exported by `ngd_ref.dense`.
* The JAX twin has no module of its own: the exact diagonals (`ggn_diag`, `fisher_diag`,
  `empirical_fisher_diag`, `hessian_diag`) and Hutchinson's estimator are in
  `ngd_ref.curvature._jax`, re-exported by `ngd_ref.jax`.
"""
