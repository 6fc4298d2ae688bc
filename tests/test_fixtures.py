"""Golden fixtures: shipped files verify, regenerate byte for byte; bad files fail clearly."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import mpmath
import numpy as np
import pytest

from ngd_ref import ACTIVATIONS, LOSSES
from verify._fixture_format import dumps, expected_shapes, format_decimal, leaf_name
from verify._fixture_gen import FIXTURE_SPECS, STORED_DIGITS
from verify._report import Status
from verify._tolerance import unit_roundoff
from verify.cli import main
from verify.fixtures import (
    FIXTURE_DIR,
    FixtureError,
    load_fixture,
    load_fixture_problems,
    load_fixtures,
    regenerate_fixtures,
    verify_fixture,
)

SHIPPED = sorted(FIXTURE_DIR.glob("*.json"))
SMALLEST = FIXTURE_DIR / "linear-2x2-mse-b2.json"


@pytest.fixture(scope="module")
def fixtures():
    return load_fixtures()


# -- what is shipped ---------------------------------------------------------------------------
def test_shipped_set_matches_the_specs():
    assert len(SHIPPED) >= 12
    assert {path.stem for path in SHIPPED} == {spec.name for spec in FIXTURE_SPECS}


COVERAGE = [
    *[(f"loss={loss}", lambda p, loss=loss: p.loss == loss) for loss in LOSSES],
    *[(f"activation={act}", lambda p, act=act: any(layer.activation == act for layer in p.layers))
      for act in ACTIVATIONS],
    ("reduction=mean", lambda p: p.reduction == "mean"),
    ("reduction=sum", lambda p: p.reduction == "sum"),
    ("one example", lambda p: p.batch_size == 1),
    ("several examples", lambda p: p.batch_size > 1),
    ("deep linear network", lambda p: len(p.layers) > 2
     and all(layer.activation == "identity" for layer in p.layers)),
    ("ReLU network", lambda p: sum(layer.activation == "relu" for layer in p.layers) >= 2),
]


@pytest.mark.parametrize("what, holds", COVERAGE, ids=[c[0] for c in COVERAGE])
def test_coverage(fixtures, what, holds):
    assert any(holds(f.problem) for f in fixtures), f"no fixture with {what}"


def test_each_fixture_is_small_certified_and_complete(fixtures):
    for fixture in fixtures:
        assert fixture.problem.n_params <= 60, fixture.name
        assert 20 <= fixture.digits <= STORED_DIGITS - 1, fixture.name
        shapes = expected_shapes(fixture.problem, fixture.arguments.cg.iterations)
        assert list(fixture.expected) == list(shapes)
        assert fixture.path.stem == fixture.name


def test_inputs_are_exact_in_float64_and_float32(fixtures):
    for fixture in fixtures:
        p, args = fixture.problem, fixture.arguments
        for label, array in [("params", p.params), ("inputs", p.inputs), ("vector", args.vector),
                             ("cg.matrix", args.cg.matrix), ("cg.rhs", args.cg.rhs),
                             ("cg.x0", args.cg.x0), ("damping", np.array(args.damping))]:
            assert np.array_equal(array.astype(np.float32), array), (fixture.name, label)


def test_expected_strings_carry_at_least_20_significant_digits():
    data = json.loads(SMALLEST.read_text())
    fixture = load_fixture(SMALLEST)
    for path in fixture.expected:
        node = data["expected"]
        for part in path:
            node = node[part]
        for text in np.asarray(node, dtype=object).flat:
            mantissa = text.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
            assert text == "0" or len(mantissa) >= 20, (leaf_name(path), text)


def test_load_fixture_problems_returns_the_spec_problems():
    problems = load_fixture_problems()
    specs = {spec.name: spec.problem() for spec in FIXTURE_SPECS}
    assert len(problems) == len(SHIPPED)
    for problem in problems:
        assert np.array_equal(problem.params, specs[problem.name].params)
        assert np.array_equal(problem.inputs, specs[problem.name].inputs)


# -- verification ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_float64_reference_reproduces_every_stored_value(path):
    results = verify_fixture(load_fixture(path), full=False)
    failed = [r for r in results if r.status is not Status.PASS]
    assert not failed, failed[0].message
    assert len(results) > 25


@pytest.mark.parametrize("name", ["linear-2x2-mse-b2", "relu-2x4x4x3-softmax_xent-b3"])
def test_mpmath_recomputation_certifies_the_digits(name):
    results = verify_fixture(load_fixture(FIXTURE_DIR / f"{name}.json"), full=True)
    (mp,) = [r for r in results if r.check == "mpmath_recomputation"]
    assert mp.status is Status.PASS, mp.message


def _tampered(tmp_path: Path, edit) -> Path:
    data = json.loads(SMALLEST.read_text())
    edit(data)
    path = tmp_path / SMALLEST.name
    path.write_text(json.dumps(data))
    return path


def _perturb_digits(values, index, relative):
    """Change a stored decimal string by `relative`, keeping STORED_DIGITS digits."""
    with mpmath.workdps(50):
        values[index] = format_decimal(mpmath.mpf(values[index]) * (1 + mpmath.mpf(relative)),
                                       STORED_DIGITS)


def _scale_entry(data, factor, *path):
    node = data["expected"]
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = repr(float(node[path[-1]]) * factor)


NEGATIVE = [
    # (id, edit, check that must fail)
    ("hessian off by 1e-7", lambda d: _scale_entry(d, 1 + 1e-7, "hessian", 0, 0),
     "float64_recomputation"),
    ("kfac A off by 1e-7", lambda d: _scale_entry(d, 1 + 1e-7, "kfac_factors", "ggn", 0, "A", 0, 1),
     "float64_recomputation"),
    ("cg iterate off by 1e-7", lambda d: _scale_entry(d, 1 + 1e-7, "cg", "iterates", 2, 0),
     "float64_recomputation"),
    # invisible to float64, caught by the 50-digit recomputation
    ("gradient off by 1e-19", lambda d: _perturb_digits(d["expected"]["gradient"], 0, 1e-19),
     "mpmath_recomputation"),
    ("tolerance loosened", lambda d: d["tolerance"]["hessian"].__setitem__("float64", 1e-3),
     "tolerance_record"),
    ("condition understated", lambda d: d["tolerance"]["damped_update.ggn"].__setitem__(
        "condition", 1.0), "tolerance_record"),
]


@pytest.mark.parametrize("edit, check", [n[1:] for n in NEGATIVE], ids=[n[0] for n in NEGATIVE])
def test_verify_catches_a_wrong_stored_value(tmp_path, edit, check):
    results = verify_fixture(load_fixture(_tampered(tmp_path, edit)), full=check.startswith("mp"))
    assert [r.check for r in results if r.status is Status.FAIL] == [check]


def test_float32_tolerance_admits_float32_rounding_but_not_a_float64_port_off_by_1e_7():
    fixture = load_fixture(SMALLEST)
    rng = np.random.default_rng(0)
    for path, value, record in fixture.items():
        noise = rng.uniform(-1, 1, value.shape) * unit_roundoff("float32")
        rounded = value * (1 + noise)  # every entry rounded as float32 storage would
        err = np.linalg.norm(rounded - value) / max(np.linalg.norm(value), record.magnitude)
        assert err <= record.float32, leaf_name(path)
        off = value * (1 + 1e-7)
        err64 = np.linalg.norm(off - value) / max(np.linalg.norm(value), record.magnitude)
        assert err64 > record.float64 or not np.any(value), leaf_name(path)


# -- regeneration ------------------------------------------------------------------------------
def test_regenerate_is_byte_identical_and_matches_the_shipped_file(tmp_path):
    spec = [s for s in FIXTURE_SPECS if s.name == SMALLEST.stem]
    (first,) = regenerate_fixtures(tmp_path / "a", tuple(spec))
    (second,) = regenerate_fixtures(tmp_path / "b", tuple(spec))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() == SMALLEST.read_bytes()


def test_dumps_is_deterministic_and_round_trips():
    data = json.loads(SMALLEST.read_text())
    assert dumps(data) == SMALLEST.read_text()
    assert json.loads(dumps(copy.deepcopy(data))) == data


# -- malformed files ---------------------------------------------------------------------------
def _drop(*path):
    def edit(data):
        node = data
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return edit


def _set(value, *path):
    def edit(data):
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return edit


MALFORMED = [
    ("wrong schema", _set("ngd-verify/fixture/v0", "schema"), "schema: expected"),
    ("missing problem", _drop("problem"), "problem: missing field"),
    ("missing expected leaf", _drop("expected", "hessian"), "expected.hessian: missing field"),
    ("missing kfac layer", _set([], "expected", "kfac_factors", "fisher"),
     "expected.kfac_factors.fisher[0]: missing"),
    ("missing tolerance", _drop("tolerance", "ggn_vp"), "tolerance.ggn_vp: missing field"),
    ("missing cg iterations", _drop("arguments", "cg", "iterations"),
     "arguments.cg.iterations: missing field"),
    ("short gradient", _set(["1.0"] * 5, "expected", "gradient"),
     "expected.gradient: expected shape (6,)"),
    ("ragged matrix", lambda d: d["expected"]["ggn"][2].pop(), "expected.ggn[2]: expected shape"),
    ("scalar for vector", _set("1.0", "expected", "hvp"), "expected.hvp: expected shape (6,)"),
    ("non-numeric string", lambda d: d["expected"]["gradient"].__setitem__(3, "abc"),
     "expected.gradient[3]: 'abc' is not a decimal number"),
    ("nan string", lambda d: d["expected"]["fisher_diag"].__setitem__(0, "nan"),
     "expected.fisher_diag[0]: 'nan' is not a decimal number"),
    ("underscore digits", lambda d: d["arguments"]["vector"].__setitem__(1, "1_0"),
     "arguments.vector[1]: '1_0' is not a decimal number"),
    ("boolean number", _set(True, "expected", "loss"), "expected.loss: expected a number"),
    ("bad params string", lambda d: d["problem"]["params"].__setitem__(0, "0x1p-3"),
     "problem.params[0]: '0x1p-3' is not a decimal number"),
    ("wrong parameter count", lambda d: d["problem"]["params"].pop(),
     "problem: params: expected 6"),
    ("unknown loss", _set("hinge", "problem", "loss"), "problem: loss: unknown loss 'hinge'"),
    ("negative digits", _set(-1, "digits"), "digits: expected an integer >= 0"),
    ("zero damping", _set("0", "arguments", "damping"), "arguments.damping: expected a number > 0"),
]


@pytest.mark.parametrize("edit, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_fixture_fails_with_a_clear_message(tmp_path, edit, message):
    path = _tampered(tmp_path, edit)
    with pytest.raises(FixtureError) as info:
        load_fixture(path)
    assert str(info.value).startswith(str(path)), str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("text, message", [
    ('{"schema": "ngd-verify/fixture/v1", ', "invalid JSON at line 1"),
    ("[1, 2, 3]", "expected a JSON object at the top level"),
    ("\x80\x81", "cannot read fixture file"),
], ids=["truncated", "top-level list", "not utf-8"])
def test_unparsable_file_fails_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(FixtureError, match=message):
        load_fixture(path)


def test_cli_exits_2_on_a_malformed_file_and_0_on_a_good_one(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "x.json"
    bad.write_text('{"schema": "ngd-verify/fixture/v1"}')
    assert main(["fixtures", "verify", "--dir", str(bad.parent)]) == 2
    err = capsys.readouterr().err
    assert "x.json: problem: missing field" in err and "Traceback" not in err
    assert main(["fixtures", "verify", "--dir", str(tmp_path / "absent")]) == 2
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / SMALLEST.name).write_bytes(SMALLEST.read_bytes())
    assert main(["fixtures", "verify", "--dir", str(tmp_path / "good")]) == 0


def test_loading_never_unpickles(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a fixture must never be unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (np, "load")]:
        monkeypatch.setattr(module, name, refuse)
    fixtures = load_fixtures()
    assert verify_fixture(fixtures[0], full=False)
