"""Curvature matrices and curvature-vector products.

`_dense.py` is the exact, framework-free reference (numpy/mpmath); `_jax.py` is its scalable
JAX twin. They are re-exported from `ngd_ref.dense` and `ngd_ref.jax` respectively, so that
importing the reference never imports JAX.
"""
