"""Damped Newton and the |H| trust-region variant.

Sources: seed 004 "Regularized Newton" and "Trust Region Newton"; Grosse ch. 4 eqs. (1)-(6),
seed 002.

* `ngd_ref.newton._dense` -- the exact reference on any `Backend` (numpy float64 or mpmath);
  never imports JAX. Public names are re-exported by `ngd_ref.dense`.
* `ngd_ref.newton._jax` -- the JAX twin (`jax.hessian` + `eigh`), re-exported by `ngd_ref.jax`.
"""
