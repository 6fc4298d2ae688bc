"""Shampoo: inverse p-th roots, the Shampoo direction and its polar-factor limit.

Sources: seed 004 "Shampoo"; Gupta, Koren & Singer 2018 (roots by eigendecomposition and by
the coupled Newton iteration of Guo & Higham 2006).

* `ngd_ref.shampoo._dense` -- the reference (numpy or mpmath); never imports JAX. Public
  names are re-exported by `ngd_ref.dense`.
* `ngd_ref.shampoo._jax` -- the JAX twin, re-exported by `ngd_ref.jax`.
"""
