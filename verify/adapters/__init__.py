"""Built-in adapters (PROTOCOL s5-s6): short name -> `module:Class`.

* `ngd-ref-jax` -- the project's own JAX implementation (`NgdRefJaxFloat32`: the same in
  float32, as `ngd-ref-jax-float32`);
* `curvlinops`, `backpack`, `nngeometry`, `optax`, `kfac-jax` -- third-party libraries, each
  behind an optional extra (`pip install 'ngd-verify[kfac-jax]'`) and a tox environment.
  They translate problems into the library's terms and never adjust its numbers otherwise;
  see docs/findings.md.
* `numpy-port`, `numpy-port-float32` -- the correct numpy ports the mutation corpus is built
  on (`verify.mutants`), handy as a template for a new adapter.
"""

BUILTIN: dict[str, str] = {
    "ngd-ref-jax": "verify.adapters.ngd_ref_jax:NgdRefJax",
    "ngd-ref-jax-float32": "verify.adapters.ngd_ref_jax:NgdRefJaxFloat32",
    "curvlinops": "verify.adapters.curvlinops_adapter:Curvlinops",
    "backpack": "verify.adapters.backpack_adapter:Backpack",
    "nngeometry": "verify.adapters.nngeometry_adapter:Nngeometry",
    "optax": "verify.adapters.optax_adapter:Optax",
    "kfac-jax": "verify.adapters.kfac_jax_adapter:KfacJax",
    "numpy-port": "verify.mutants:NumpyPort",
    "numpy-port-float32": "verify.mutants:NumpyPort32",
}

#: built-in names of the protocol whose adapter does not exist yet, with the reason
UNAVAILABLE: dict[str, str] = {}

__all__ = ["BUILTIN", "UNAVAILABLE"]
