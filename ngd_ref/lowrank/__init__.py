"""Low-rank (output-space) Gauss-Newton solves via the push-through identity.

Sources: seed 004 "Generalized Gauss-Newton"; Grosse ch. 4 eq. (13), seed 002.

* `ngd_ref.lowrank._dense` -- the reference (numpy or mpmath); never imports JAX. Public
  names are re-exported by `ngd_ref.dense`.
* `ngd_ref.lowrank._jax` -- the JAX twin, re-exported by `ngd_ref.jax`.
"""
