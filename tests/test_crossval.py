"""The JAX cross-validation (`verify.crossval`: the harness on the ngd-ref-jax adapters).

* `ngd_ref.jax.cg_iterates` returns, bitwise, the iterates of `cg_solve(tol=0, maxiter=k)`.
* `crossvalidate` passes on a small subset of the zoo (two frames: a switched loss and a
  single one) with every capability it claims checked in both precisions, and a wrong
  product (G v scaled by 1 + 2^-10) makes exactly the `ggn_vp` reference checks fail, in
  both precisions -- the negative control.
* With `devices=2` the sharded adapters are checked too; a product wrong only when sharded
  fails exactly the sharded checks.
* The adapters share compilations across the problems of a frame.
"""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngd_ref import jax as nj
from ngd_ref import zoo
from verify import crossval
from verify.adapters.ngd_ref_jax import NgdRefJax
from verify.harness import TWIN_SUFFIX, load_adapter, run_checks

_PROBLEMS = ("mlp-3x4x3-tanh-mse-b1", "mlp-3x4x3-tanh-softmax_cross_entropy-b1",
             "mlp-3x4x4-tanh-gaussian_logvar-b1")


pytestmark = pytest.mark.usefixtures("x64")  # float64 JAX (a context), see conftest


def _system(n=8, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(np.geomspace(1, 1e2, n)) @ q.T
    return a, rng.standard_normal(n), rng.standard_normal(n)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", ["plain", "preconditioned", "x0"])
def test_cg_iterates_equal_cg_solve_with_maxiter_k(variant, dtype):
    a, b, x0 = _system()
    a, b, x0 = (jnp.asarray(t, dtype) for t in (a, b, x0))
    start = x0 if variant == "x0" else None
    precond = (lambda r: r / jnp.diag(a)) if variant == "preconditioned" else None

    def matvec(v):
        return a @ v

    iterates = jax.jit(lambda b: nj.cg_iterates(matvec, b, start, maxiter=10,
                                                precond=precond))(b)
    solved = jax.jit(jax.vmap(lambda k: nj.cg_solve(
        matvec, b, start, tol=0.0, maxiter=k, precond=precond, history=11).x))(jnp.arange(11))
    assert iterates.shape == (11, 8)
    # k past n = 8 too: converged iterates stay put
    np.testing.assert_array_equal(np.asarray(iterates), np.asarray(solved))


def test_cg_iterates_on_pytrees_and_validation():
    a, b, _ = _system(n=4)

    def matvec(t):
        y = jnp.asarray(a) @ jnp.concatenate([t["u"], t["w"]])
        return {"u": y[:2], "w": y[2:]}

    out = nj.cg_iterates(matvec, {"u": jnp.asarray(b[:2]), "w": jnp.asarray(b[2:])}, maxiter=4)
    np.testing.assert_allclose(np.concatenate([out["u"][4], out["w"][4]]),
                               np.linalg.solve(a, b), rtol=1e-9)
    assert np.array_equal(np.asarray(out["u"][0]), np.zeros(2))
    with pytest.raises(ValueError, match="maxiter"):
        nj.cg_iterates(matvec, {"u": jnp.zeros(2), "w": jnp.zeros(2)}, maxiter=-1)


def _failing(results):
    return sorted({(r.capability, r.check) for r in results if r.status.value != "pass"})


def test_crossvalidate_passes_on_a_subset():
    problems = [zoo.get(name) for name in _PROBLEMS]
    results = crossval.crossvalidate(problems)
    assert not _failing(results)
    assert len(results) > 0 and all(r.check.startswith("jax_") for r in results)
    for dtype in crossval.DTYPES:
        covered = {r.capability for r in results if r.check.endswith(f"_{dtype}")}
        assert covered == set(crossval.CAPABILITIES)
        checks = {r.check for r in results}
        for variant in ("cg_iterates", "cg_iterates_preconditioned", "cg_iterates_x0"):
            assert f"jax_{variant}_{dtype}" in checks
        for curvature in ("hessian", "ggn", "fisher", "empirical_fisher"):
            assert f"jax_damped_update_{curvature}_{dtype}" in checks
    assert {r.problem for r in results} == set(_PROBLEMS)
    assert crossval.count(problems) == len({(r.check.rsplit("_", 1)[-1], r.capability,
                                             r.problem) for r in results})


def _scaled_ggn_vp(monkeypatch, *, sharded_only: bool):
    """`ngd_ref.jax.curvature_products` (the adapters' products) with `G v` off by 2^-10."""
    honest = nj.curvature_products

    def wrong(objective, params, batch, v, curvatures, *, mesh=None):
        out = honest(objective, params, batch, v, curvatures, mesh=mesh)
        if "ggn" not in out or (sharded_only and mesh is None):
            return out
        return {**out, "ggn": jax.tree.map(lambda t: t * (1 + 2.0**-10), out["ggn"])}

    monkeypatch.setattr(nj, "curvature_products", wrong)


def test_crossvalidate_catches_a_wrong_product(monkeypatch):
    """Negative control: `ggn_vp` off by a relative 2^-10 fails, and so does the damped GGN
    update built from it (also on the reused-name twin); everything else passes."""
    _scaled_ggn_vp(monkeypatch, sharded_only=False)
    jax.clear_caches()  # the kernels must be traced again with the wrong product
    try:
        results = crossval.crossvalidate([zoo.get(_PROBLEMS[0])])
    finally:
        jax.clear_caches()
    assert _failing(results) == sorted(
        [("ggn_vp", f"jax_ggn_vp_matches_reference{twin}_{dtype}")
         for dtype in crossval.DTYPES for twin in ("", TWIN_SUFFIX)]
        + [("damped_update", f"jax_damped_update_ggn{twin}_{dtype}")
           for dtype in crossval.DTYPES for twin in ("", TWIN_SUFFIX)])


def test_sharded_crossvalidation_and_its_negative_control(monkeypatch):
    """`devices=2`: the sharded adapters pass; a product wrong only when sharded fails there.

    The negative control runs the harness on the sharded float64 adapter alone: its `ggn_vp`
    and its damped G-update (CG on the sharded product) fail, `fisher_vp` passes.
    """
    problems = [zoo.get(_PROBLEMS[0])]
    results = crossval.crossvalidate(problems, devices=2)
    assert not _failing(results)
    sharded = {r.capability for r in results if r.check.endswith("_sharded2")}
    assert sharded == set(crossval.SHARDED_CAPABILITIES)
    _scaled_ggn_vp(monkeypatch, sharded_only=True)
    jax.clear_caches()
    try:
        report = run_checks(load_adapter(NgdRefJax(problems, devices=2)), problems,
                            capabilities=("ggn_vp", "fisher_vp", "damped_update"))
    finally:
        jax.clear_caches()
    assert _failing(report.results) == sorted(
        (capability, check + twin) for capability, check in (
            ("damped_update", "damped_update_ggn"), ("ggn_vp", "ggn_vp_matches_reference"))
        for twin in ("", TWIN_SUFFIX))


def test_adapters_share_frames_across_problems():
    """Planned with the quick zoo, the adapter embeds its 7 problems in 2 frames."""
    problems = list(zoo.problems(quick=True))
    adapter = NgdRefJax(problems)
    assert len(adapter._plan.frames) == 2
    alone = NgdRefJax()
    alone.loss(problems[0])
    assert len(alone._plan.frames) == 1


def test_unplanned_variants_join_a_planned_frame():
    """A variant the harness hands (other parameters, the reused-name twin) joins the frame
    of its planned problem instead of compiling one of its own: a full `run` compiled one
    per variant until XLA ran out of memory maps ("LLVM compilation error: Cannot allocate
    memory") and the run died without a report."""
    problems = [p for p in zoo.problems(quick=True) if p.dense_only]
    adapter = NgdRefJax(problems)
    planned = adapter._plan.frames
    for problem in problems:
        variant = problem.replace(params=np.asarray(problem.params) * 1.5)
        assert adapter._plan.embedded(variant).frame in planned
    assert adapter._plan.frames == planned
    small = zoo.make_problem((2, 2), ("tanh",), "poisson", 1)  # no planned frame has poisson
    assert adapter._plan.embedded(small).frame not in planned


def _global_x64() -> bool:
    """JAX's global flag, as a thread without this test's (x64 fixture) context sees it."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(bool(jax.config.jax_enable_x64)))
    thread.start()
    thread.join()
    return seen[0]


def test_adapters_leave_jax_global_x64_flag_alone():
    """Importing and using the JAX adapters computes float64 inside, changes nothing outside."""
    import verify.adapters._jax_model  # noqa: F401
    import verify.adapters.optax_adapter  # noqa: F401

    assert not _global_x64()
    problem = zoo.get(_PROBLEMS[0])
    assert NgdRefJax().gradient(problem).dtype == np.float64
    assert not _global_x64()
