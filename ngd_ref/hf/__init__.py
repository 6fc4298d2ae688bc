"""Hessian-free optimization (Grosse ch. 4 s4, seed 002): the damped quadratic model and its tools.

* `ngd_ref.hf._dense` -- the exact dense reference on any `Backend` (numpy float64 or mpmath);
  never imports JAX. Public names are re-exported by `ngd_ref.dense`:
  `hf_quadratic_model` (eq. 12), `reduction_ratio` (eq. 14), `levenberg_marquardt` (s4.1),
  `optimal_step_size` (eq. 26), `momentum_subspace_step` (eq. 27), `SubspaceStep`.
* `ngd_ref.hf._jax` -- the JAX twin with the same names (curvature-vector products instead
  of dense matrices).
"""
