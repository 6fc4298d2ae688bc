"""Verdicts on real libraries' convolutions (PROTOCOL s12, docs/findings.md), pinned.

Skipped where a library is absent (`tox -e curvlinops`, `tox -e backpack`). The problems are
`ngd_ref.zoo`'s convolutional ones: the quick zoo's (`zoo.QUICK_CONV`) and the K-FAC
regimes of s12 (a linear last convolution with mse: expand exact; a kernel covering the
input: T = 1; a tanh net at B = 1: neither approximation exact).
"""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import zoo
from verify import Status
from verify.harness import load_adapter, run_checks

#: two convolutions (padding, stride 2) under a dense softmax cross-entropy head, T = 25 and 4
PAD_STRIDE_CE = zoo.get("conv-1x4x4-2c-pad-stride-ce-b2")
#: a convolution as last layer (sigmoid) with sigmoid cross-entropy, reduction sum
LAST_SIGMOID_BCE = zoo.get("conv-2x3x3-2c-last-sigmoid-bce-b2")
#: 1x1 kernel, stride 2, poisson (no torch loss mapped: declined)
POISSON = zoo.get("conv-1x1-stride2-3x3x3-poisson-b2")
#: a linear last convolution with mse: no cross-position terms, expand is exact
LAST_LINEAR = zoo.get("conv-last-linear-1x4x3-pad-mse-b3")
#: the kernel covers the whole input: T = 1, expand = reduce = s4
FULL_KERNEL = zoo.get("conv-full-kernel-2x2x2-ce-b1")
#: tanh conv + tanh dense at B = 1: expand and reduce differ and neither is exact
NEITHER = zoo.get("conv-1x3x3-tanh-dense-tanh-mse-b1")

CURVLINOPS_SKIP = "curvlinops not installed (tox -e curvlinops)"
BACKPACK_SKIP = "backpack not installed (tox -e backpack)"


def _bad(report):
    return [f"{r.check} {r.problem}: {r.message}" for r in report.results
            if Status(r.status) in (Status.FAIL, Status.ERROR)]


def _verdicts(report) -> dict[tuple[str, str], set[Status]]:
    """`{(check, problem): statuses}` of a report (a check may have several results)."""
    out: dict[tuple[str, str], set[Status]] = {}
    for r in report.results:
        out.setdefault((r.check, r.problem), set()).add(Status(r.status))
    return out


def _tolerance(problem) -> float:
    from verify._tolerance import rounding_rtol

    return rounding_rtol("float64", length=problem.n_params, depth=len(problem.layers) + 2)


def _positions(layer) -> int:
    return layer.n_positions if layer.is_convolution else 1


# -- curvlinops -------------------------------------------------------------------------------
CURVLINOPS_CONV = ["hessian", "ggn", "empirical_fisher", "hvp", "ggn_vp", "empirical_fisher_vp",
                   "kfac_factors", "kfac_solve"]


@pytest.mark.parametrize("problem", [PAD_STRIDE_CE, LAST_SIGMOID_BCE, LAST_LINEAR, NEITHER],
                         ids=lambda p: p.name)
def test_curvlinops_conv_curvature_and_kfac_expand_and_reduce_pass(problem):
    """`nn.Conv2d`: H, G, EF and their products exact; `KFACLinearOperator(kfac_approx=...)`
    is s12's expand and reduce (every kind, factors and both damped solves)."""
    pytest.importorskip("curvlinops", reason=CURVLINOPS_SKIP)
    report = run_checks(load_adapter("curvlinops"), [problem], capabilities=CURVLINOPS_CONV)
    assert not _bad(report), _bad(report)[:3]
    verdicts = _verdicts(report)
    for kind in ("fisher", "ggn", "empirical"):
        for approx in ("expand", "reduce"):
            assert verdicts[(f"kfac_factors_{kind}_{approx}_product", problem.name)] == \
                {Status.PASS}
            assert Status.PASS in verdicts[(f"kfac_solve_eigen_{kind}_{approx}", problem.name)]
    assert verdicts[("kfac_factors_default_approx_product", problem.name)] == {Status.PASS}


def test_curvlinops_conv_expand_puts_one_over_t_into_a():
    """Convention: curvlinops' expand `A` is `sum_{b,t} abar abar^T / (B T)` (s12: `/ B`) and
    its `S` carries no `1/T`: the split `k = 1/T` on a convolution, 1 for reduce and dense."""
    pytest.importorskip("curvlinops", reason=CURVLINOPS_SKIP)
    from ngd_ref.dense import kfac_factors
    from verify._tolerance import compare
    from verify.adapters.curvlinops_adapter import Curvlinops

    problem, tol = PAD_STRIDE_CE, _tolerance(PAD_STRIDE_CE)
    for approx in ("expand", "reduce"):
        mine = Curvlinops().kfac_factors(problem, "ggn", approx)
        for (a, s), (a_ref, s_ref), layer in zip(mine, kfac_factors(problem, "ggn", approx=approx),
                                                 problem.layers, strict=True):
            k = 1.0 / _positions(layer) if approx == "expand" else 1.0
            assert compare(a, k * a_ref, tolerance=tol).passed
            assert compare(s, s_ref / k, tolerance=tol).passed


def test_curvlinops_conv_swapped_approx_fails():
    """Negative control: a port answering reduce for expand (and back) fails both checks where
    the approximations differ, and passes where T = 1 makes them equal."""
    pytest.importorskip("curvlinops", reason=CURVLINOPS_SKIP)
    from verify.adapters.curvlinops_adapter import Curvlinops

    class Swapped(Curvlinops):
        name = "curvlinops-swapped-approx"

        def kfac_factors(self, problem, kind, approx="expand"):
            other = {"expand": "reduce", "reduce": "expand"}[approx]
            return super().kfac_factors(problem, kind, other)

    report = run_checks(load_adapter(Swapped()), [NEITHER, FULL_KERNEL],
                        capabilities=["kfac_factors"])
    verdicts = _verdicts(report)
    for approx in ("expand", "reduce"):
        assert Status.FAIL in verdicts[(f"kfac_factors_ggn_{approx}_product", NEITHER.name)]
        assert verdicts[(f"kfac_factors_ggn_{approx}_product", FULL_KERNEL.name)] == \
            {Status.PASS}


def _mislaid(flip_kernel: bool):
    """curvlinops with one layout mistake: HWC-flattened images, or flipped kernels (a true
    convolution instead of s12's cross-correlation)."""
    import copy

    import torch

    from verify.adapters.curvlinops_adapter import Curvlinops

    class Mislaid(Curvlinops):
        name = "curvlinops-flipped-kernel" if flip_kernel else "curvlinops-hwc-inputs"

        @staticmethod
        def _setup(problem):
            model, loss_func, _, [(x, y)], factors = Curvlinops._setup(problem)
            model = copy.deepcopy(model)  # the cached setup stays intact
            if flip_kernel:
                with torch.no_grad():
                    for module in model:
                        if isinstance(module, torch.nn.Conv2d):
                            module.weight.copy_(torch.flip(module.weight, dims=(2, 3)))
            else:
                channels, height, width = problem.input_shape
                x = x.reshape(x.shape[0], height, width, channels).permute(0, 3, 1, 2)
            return model, loss_func, list(model.parameters()), [(x, y)], factors

    return Mislaid()


@pytest.mark.parametrize("flip_kernel", [False, True], ids=["hwc-inputs", "flipped-kernel"])
def test_curvlinops_conv_layout_mistakes_fail(flip_kernel):
    """Negative controls for the translation: pixel-major (HWC) image flattening, or a kernel
    flip, fails the GGN product on a 2-channel 3x3 input."""
    pytest.importorskip("curvlinops", reason=CURVLINOPS_SKIP)
    report = run_checks(load_adapter(_mislaid(flip_kernel)), [LAST_SIGMOID_BCE],
                        capabilities=["ggn_vp"])
    assert Status.FAIL in _verdicts(report)[("ggn_vp_matches_reference", LAST_SIGMOID_BCE.name)]


def test_curvlinops_conv_declines_poisson():
    pytest.importorskip("curvlinops", reason=CURVLINOPS_SKIP)
    report = run_checks(load_adapter("curvlinops"), [POISSON], capabilities=["ggn", "kfac_factors"])
    assert {Status(r.status) for r in report.results if r.problem != "*"} == {Status.SKIP}


# -- BackPACK ---------------------------------------------------------------------------------
BACKPACK_CONV = ["loss", "gradient", "hessian_diag", "ggn_diag", "ggn", "ggn_vp", "fisher",
                 "fisher_vp", "empirical_fisher", "empirical_fisher_vp", "empirical_fisher_diag",
                 "per_example_gradients"]


@pytest.mark.parametrize("problem", [PAD_STRIDE_CE, LAST_SIGMOID_BCE, NEITHER],
                         ids=lambda p: p.name)
def test_backpack_conv_diagonals_ggn_and_batch_grad_pass(problem):
    """`nn.Conv2d` with tanh / relu / sigmoid: `DiagHessian`, `DiagGGNExact`, `SqrtGGNExact`,
    `BatchGrad`, `SumGradSquared` all pass."""
    pytest.importorskip("backpack", reason=BACKPACK_SKIP)
    report = run_checks(load_adapter("backpack"), [problem], capabilities=BACKPACK_CONV)
    assert not _bad(report), _bad(report)[:3]
    passed = {r.capability for r in report.results if Status(r.status) is Status.PASS}
    assert passed == set(BACKPACK_CONV)


@pytest.mark.parametrize("problem", [PAD_STRIDE_CE, LAST_SIGMOID_BCE, LAST_LINEAR, NEITHER],
                         ids=lambda p: p.name)
def test_backpack_conv_kflr_is_expand_a_with_reduce_s(problem):
    """Finding: BackPACK's conv `KFLR` weight block is `A_w(expand) (x) S(reduce)` -- expand's
    patch covariance with the GGN's square root summed over positions (`Jb = sum_t J_{b,t}`)
    -- and its bias block is reduce's (the exact GGN bias block). Where cross-position terms
    vanish (`LAST_LINEAR`) that is `T` times expand, the factor BackPACK's docstring names
    ("differs from the KFC paper by a factor of |T|"); elsewhere neither s12 approximation."""
    pytest.importorskip("backpack", reason=BACKPACK_SKIP)
    from ngd_ref.dense import kfac_factors
    from verify._tolerance import compare
    from verify.adapters.backpack_adapter import Backpack

    tol = _tolerance(problem)
    for kind in ("fisher", "ggn"):
        blocks = Backpack().kfac_factors_separate(problem, kind)
        for ((a_w, s_w), (a_b, s_b)), (a_e, s_e), (a_r, s_r), layer in zip(
                blocks, kfac_factors(problem, kind, approx="expand"),
                kfac_factors(problem, kind, approx="reduce"), problem.layers, strict=True):
            weight, bias = np.kron(a_w, s_w), np.kron(a_b, s_b)
            assert compare(weight, np.kron(a_e[:-1, :-1], s_r), tolerance=tol).passed
            assert compare(bias, np.kron(a_r[-1:, -1:], s_r), tolerance=tol).passed
            t = _positions(layer)
            expand_w = np.kron(a_e[:-1, :-1], s_e)
            if problem is LAST_LINEAR:
                assert compare(weight, t * expand_w, tolerance=tol).passed
            if t > 1:  # neither expand (off by T at least) nor, where patches differ, reduce
                assert not compare(weight, expand_w, tolerance=tol).passed
                assert not compare(weight, np.kron(a_r[:-1, :-1], s_r), tolerance=tol).passed


def test_backpack_conv_kflr_verdict_is_fail_for_expand_and_skip_for_reduce():
    """Through the harness: `kfac_factors_separate` expand's weight block fails on a `T > 1`
    convolution, its bias block passes only without cross-position terms (`LAST_LINEAR`),
    both pass at `T = 1`; reduce is declined (skip: BackPACK has none), which ends the
    capability on that problem (kind ggn is checked by hand above)."""
    pytest.importorskip("backpack", reason=BACKPACK_SKIP)
    report = run_checks(load_adapter("backpack"), [LAST_LINEAR, NEITHER, FULL_KERNEL],
                        capabilities=["kfac_factors_separate"])
    verdicts = _verdicts(report)
    check = "kfac_factors_separate_fisher_expand"
    assert Status.FAIL in verdicts[(f"{check}_weight", LAST_LINEAR.name)]
    assert verdicts[(f"{check}_bias", LAST_LINEAR.name)] == {Status.PASS}
    assert Status.FAIL in verdicts[(f"{check}_weight", NEITHER.name)]
    assert Status.FAIL in verdicts[(f"{check}_bias", NEITHER.name)]
    assert verdicts[(f"{check}_weight", FULL_KERNEL.name)] == {Status.PASS}
    assert verdicts[(f"{check}_bias", FULL_KERNEL.name)] == {Status.PASS}
    for problem in (LAST_LINEAR, NEITHER, FULL_KERNEL):
        assert verdicts[("kfac_factors_separate_fisher_reduce", problem.name)] == {Status.SKIP}


def test_backpack_conv_kfac_mc_shares_kflrs_input_factor():
    """BackPACK's MC `KFAC` on a convolution: its `A_w` is KFLR's exactly (the same unfolded
    input covariance); its sampled `S` is *not checked* (s12's sampled K-FAC moments are not
    implemented, PROTOCOL s12 / docs/protocol.md)."""
    pytest.importorskip("backpack", reason=BACKPACK_SKIP)
    from backpack.extensions import KFAC

    from verify.adapters.backpack_adapter import Backpack

    port = Backpack()
    kflr = port.kfac_factors_separate(PAD_STRIDE_CE, "ggn")
    kfac = port._separate(port._backward(PAD_STRIDE_CE, KFAC(mc_samples=2), seed=0), "kfac")
    for ((a_mc, _), _), ((a_w, _), _) in zip(kfac, kflr, strict=True):
        np.testing.assert_array_equal(a_mc, a_w)


def test_backpack_conv_declines_poisson_and_leaves_the_default_dtype():
    pytest.importorskip("backpack", reason=BACKPACK_SKIP)
    import torch

    previous = torch.get_default_dtype()
    report = run_checks(load_adapter("backpack"), [POISSON, LAST_LINEAR],
                        capabilities=["ggn_diag"])
    verdicts = _verdicts(report)
    assert verdicts[("ggn_diag_matches_reference", POISSON.name)] == {Status.SKIP}
    assert verdicts[("ggn_diag_matches_reference", LAST_LINEAR.name)] == {Status.PASS}
    assert torch.get_default_dtype() is previous
