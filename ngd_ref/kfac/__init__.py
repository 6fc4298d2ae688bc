"""K-FAC (Grosse ch. 4 s5, seed 002; PROTOCOL s4) in two twins kept side by side.

* `ngd_ref.kfac._dense` -- the exact reference: Kronecker factors from exact expectations
  (no sampling), the block-diagonal matrix, damped solves by eigendecomposition (eq. 23) and
  by factored Tikhonov damping (eq. 24), moving averages (eq. 25). Numpy or mpmath; never JAX.
  Public names are re-exported by `ngd_ref.dense`.
* `ngd_ref.kfac._jax` -- the same statistics in JAX (pullback sampling trick with zero dummies
  on the pre-activations, Grosse s5.8, plus exact and empirical variants) and damped solves.
* `ngd_ref.kfac._optimizer` -- the jit-compiled K-FAC optimizer (an optax-style `init`/`update`
  pair). Both JAX modules are re-exported by `ngd_ref.jax`.
"""
