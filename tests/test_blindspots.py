"""Issue 14: the inputs that close the v1 oracle's blind spots, and the checks they feed."""

from __future__ import annotations

import numpy as np
import pytest

from ngd_ref import zoo
from verify._report import Status
from verify.harness import run_capability
from verify.harness._inputs import TWIN_SUFFIX, probe_vectors, reused_name_twin
from verify.harness._updates import indefinite_damping
from verify.mutants import MUTANTS, NumpyPort, NumpyPort32, load_corpus
from verify.mutants._run import run_mutant

load_corpus()
QUICK = zoo.problems(quick=True)

#: blind-spot mutant -> the check (prefix) that must kill it on the quick zoo
KILLED_BY = {
    "hvp-vector-to-f32": "hvp_matches_reference",
    "gradient-params-to-f32": "gradient_matches_reference" + TWIN_SUFFIX,
    "kfac-factors-inputs-to-f32": "kfac_factors_fisher_product" + TWIN_SUFFIX,
    "kfac-solve-default-kind-ggn": "kfac_solve_default_kind",
    "cg-scipy-default-tol": "cg_converges_defaults",
    "lbfgs-default-gamma-half": "lbfgs_direction_default_gamma",
    "inverse-root-default-ridge": "inverse_root_default_ridge",
    "cg-stops-relative-to-r0": "cg_converges_x0",
    "cg-restarts-every-10": "cg_iterates_spread",
    "cg-checks-after-step": "cg_iterates_exact_x0",
    "cg-precond-drops-x0": "cg_iterates_preconditioned_x0",
    "damped-update-cholesky-retry": "damped_update_indefinite",
    "forward-cached-by-name": "gradient_matches_reference" + TWIN_SUFFIX,
    "ggn-cached-by-shape": "ggn_matches_reference" + TWIN_SUFFIX,
    "bfgs-powell-damped": "bfgs_update_generic_pair",
    "inverse-root-repeated-sqrt": "inverse_root",
    "shampoo-recomputes-statistics": "shampoo_direction_accumulated",
    "hutchinson-sample-variance-divisor": "hutchinson_diag_diagonal_operator",
    "poisson-drops-log-factorial": "loss_matches_reference",
    "hessian-drops-deep-curvature": "hessian_matches_reference",
}
CASES = [name for name in MUTANTS if name.removesuffix("-float32") in KILLED_BY]


def test_every_blind_spot_mutant_is_listed():
    module = "verify.mutants._corpus_blindspots"
    names = {m.name.removesuffix("-float32") for m in MUTANTS.values()
             if m.adapter_class.__module__ == module}
    assert names == set(KILLED_BY)


@pytest.mark.parametrize("name", CASES)
def test_blind_spot_mutant_is_killed_by_its_check(name):
    outcome = run_mutant(MUTANTS[name])
    assert outcome.killed
    assert outcome.evidence.check == KILLED_BY[name.removesuffix("-float32")]


def test_probes_are_full_precision_for_float64_and_dyadic_for_float32():
    rng = np.random.default_rng(0)
    (v64,) = probe_vectors(rng, 50, 1, "float64")
    (v32,) = probe_vectors(rng, 50, 1, "float32")
    assert np.all(v32 * 64 == np.round(v32 * 64))
    assert np.array_equal(v32.astype(np.float32).astype(np.float64), v32)
    rounded = v64.astype(np.float32).astype(np.float64)
    assert np.linalg.norm(rounded - v64) / np.linalg.norm(v64) > 1e-9


@pytest.mark.parametrize("problem", QUICK[:4], ids=lambda p: p.name)
def test_twin_keeps_the_name_and_changes_the_data(problem):
    twin64, twin32 = reused_name_twin(problem, "float64"), reused_name_twin(problem, "float32")
    for twin in (twin64, twin32):
        assert twin.name == problem.name and twin.layers == problem.layers
        assert twin.params.shape == problem.params.shape
        assert not np.array_equal(twin.params, problem.params)
    assert np.array_equal(twin32.params.astype(np.float32).astype(np.float64), twin32.params)
    for values in (twin64.params, twin64.inputs):
        assert not np.array_equal(values.astype(np.float32).astype(np.float64), values)


def test_indefinite_damping_leaves_an_indefinite_nonsingular_system():
    matrix = np.diag([-3.0, -1.0, 2.0, 5.0])
    damping = indefinite_damping(matrix)
    values = np.linalg.eigvalsh(matrix + damping * np.eye(4))
    assert damping >= 0 and values[0] < 0 < values[-1]
    # the widest admissible gap is (-3, -1): lambda = 2 puts it around 0, 1 from both ends
    assert damping == pytest.approx(2.0) and np.min(np.abs(values)) == pytest.approx(1.0)
    assert indefinite_damping(np.diag([0.0, 1.0])) is None


def test_quick_zoo_closes_its_blind_zone():
    poisson = [p for p in QUICK if p.loss == "poisson"]
    assert any(np.any(p.targets > 1) for p in poisson)
    shapes = [(p.loss, p.reduction, p.params.shape, p.inputs.shape, p.targets.shape)
              for p in QUICK]
    assert len(set(shapes)) < len(shapes)
    deep = [p for p in QUICK if len(p.layers) >= 3
            and all(layer.activation in ("tanh", "sigmoid", "softplus")
                    for layer in p.layers[:-1])]
    assert deep


@pytest.mark.parametrize("port", [NumpyPort, NumpyPort32], ids=lambda c: c.name)
def test_new_checks_pass_for_correct_ports_on_the_deep_curved_problem(port):
    problem = zoo.get("deep-curved-2x3x3x2-mse-b4")
    for capability in ("hessian", "damped_update", "cg", "hutchinson_diag", "bfgs_update"):
        results = run_capability(port(), capability, problem, dtype=port.dtype)
        bad = [r for r in results if Status(r.status) in (Status.FAIL, Status.ERROR)]
        assert not bad, bad[0].message
        assert any(Status(r.status) is Status.PASS for r in results)
