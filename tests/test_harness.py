"""The port harness: loading, usage errors, fault containment, tolerances, reports."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from ngd_ref import zoo
from verify import Status
from verify.cli import main
from verify.harness import CAPABILITIES, load_adapter, run_checks
from verify.mutants import NumpyPort

SMALL = [zoo.get("mlp-3x4x3-tanh-mse-b1"), zoo.problems(quick=True)[1]]


# -- loading ------------------------------------------------------------------------------
def _write_adapter(tmp_path, body: str, name: str = "port.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("form", ["module", "file", "builtin", "class", "instance"])
def test_load_adapter_forms(form, tmp_path):
    target = {
        "module": "verify.mutants:NumpyPort",
        "file": f"{_write_adapter(tmp_path, 'from verify.mutants import NumpyPort as P')}:P",
        "builtin": "numpy-port",
        "class": NumpyPort,
        "instance": NumpyPort(),
    }[form]
    loaded = load_adapter(target)
    assert loaded.dtype == "float64"
    assert "ggn" in loaded.capabilities and "cg" in loaded.capabilities


class _OnlyGgn:
    name = "only-ggn"

    def __init__(self):
        self.port = NumpyPort()

    def ggn(self, problem):
        return self.port.ggn(problem)


def test_unclaimed_capabilities_are_skipped_never_passed():
    report = run_checks(load_adapter(_OnlyGgn), SMALL)
    by_capability = {r.capability: Status(r.status) for r in report.results}
    assert by_capability["ggn"] is Status.PASS
    assert by_capability["hessian"] is Status.SKIP
    assert report.passed


# -- usage errors (exit status 2, one line, no traceback) ------------------------------------
USAGE_CASES = {
    "missing-adapter": lambda tmp: ["check", "--quick"],
    "unknown-module": lambda tmp: ["check", "--adapter", "no_such_module_xyz:Port"],
    "missing-class": lambda tmp: ["check", "--adapter", "verify.mutants:NoSuchPort"],
    "no-colon": lambda tmp: ["check", "--adapter", "not-a-target"],
    "missing-file": lambda tmp: ["check", "--adapter", str(tmp / "absent.py") + ":P"],
    "constructor-fails": lambda tmp: [
        "check",
        "--adapter",
        str(
            _write_adapter(
                tmp,
                """
        class P:
            def __init__(self):
                raise RuntimeError("needs a GPU")
            def ggn(self, problem):
                return 0
        """,
            )
        )
        + ":P",
    ],
    "no-capability": lambda tmp: [
        "check",
        "--adapter",
        str(
            _write_adapter(
                tmp,
                """
        class P:
            name = "empty"
        """,
            )
        )
        + ":P",
    ],
    "bad-dtype": lambda tmp: [
        "check",
        "--adapter",
        str(
            _write_adapter(
                tmp,
                """
        class P:
            dtype = "float16"
            def ggn(self, problem):
                return 0
        """,
            )
        )
        + ":P",
    ],
    "malformed-problems": lambda tmp: [
        "check",
        "--adapter",
        "numpy-port",
        "--problems",
        str(_json(tmp, [{"name": "x", "layers": [[2, 2, "tanh"]]}])),
    ],
    "not-json": lambda tmp: [
        "check",
        "--adapter",
        "numpy-port",
        "--problems",
        str(_text(tmp, "{nope")),
    ],
}


def _json(tmp, data):
    path = tmp / "problems.json"
    path.write_text(json.dumps(data))
    return path


def _text(tmp, text):
    path = tmp / "bad.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_errors_exit_2_with_one_line(case, tmp_path, capsys):
    code = main(USAGE_CASES[case](tmp_path) + ["--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ngd-verify: error:") and "Traceback" not in err


def test_usage_error_traceback_only_with_debug(tmp_path, capsys):
    # --debug adds the traceback and keeps the status 2 (issue 13)
    assert main(["--debug", "check", "--adapter", "no_such_module_xyz:Port", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("ngd-verify: error:")


# -- fault containment ------------------------------------------------------------------------
class _Raises(NumpyPort):
    def ggn(self, problem):
        raise RuntimeError("boom")


class _NaN(NumpyPort):
    def ggn(self, problem):
        out = super().ggn(problem)
        out[0, 0] = np.nan
        return out


class _WrongShape(NumpyPort):
    def ggn(self, problem):
        return super().ggn(problem)[:-1]


class _WrongType(NumpyPort):
    def ggn(self, problem):
        return "a matrix"


class _MutatesInput(NumpyPort):
    def ggn_vp(self, problem, v):
        out = super().ggn_vp(problem, v)
        v *= 2
        return out


class _WritesProblem(NumpyPort):
    def ggn(self, problem):
        problem.params[0] = 1.0
        return super().ggn(problem)


class _WritesListItem(NumpyPort):
    def lbfgs_direction(self, g, s_list, y_list, gamma=1.0):
        out = super().lbfgs_direction(g, s_list, y_list, gamma)
        np.copyto(s_list[0], 0.0)
        return out


class _ReenablesWrite(NumpyPort):
    def ggn_vp(self, problem, v):
        v.setflags(write=True)
        v *= 2
        return super().ggn_vp(problem, v / 2)


class _WritesOwnReadOnlyArray(NumpyPort):
    """A port writing into a read-only array of its own (e.g. `np.asarray` of a JAX array)."""

    def ggn(self, problem):
        out = super().ggn(problem)
        out.setflags(write=False)
        out[0, 0] = 0.0
        return out


FAULTS = [
    ("exception", _Raises, "ggn", Status.ERROR, "raised RuntimeError: boom"),
    ("nan", _NaN, "ggn", Status.FAIL, "non-finite"),
    ("wrong-shape", _WrongShape, "ggn", Status.FAIL, "wrong shape"),
    ("wrong-type", _WrongType, "ggn", Status.FAIL, "not numeric"),
    (
        "writes-vector",
        _MutatesInput,
        "ggn_vp",
        Status.FAIL,
        "wrote to a read-only input (output array is read-only): handed writable copies, it "
        "modified argument 2 in place",
    ),
    (
        "writes-problem",
        _WritesProblem,
        "ggn",
        Status.FAIL,
        "wrote to a read-only input (assignment destination is read-only): handed writable "
        "copies, it modified problem.params in place",
    ),
    (
        "writes-list-item",
        _WritesListItem,
        "lbfgs_direction",
        Status.FAIL,
        "modified argument 2[0] in place",
    ),
    (
        "re-enables-write",
        _ReenablesWrite,
        "ggn_vp",
        Status.FAIL,
        "modified its input argument 2 in place (handed read-only, it re-enabled writing)",
    ),
    (
        "own-read-only-array",
        _WritesOwnReadOnlyArray,
        "ggn",
        Status.ERROR,
        "not a write into its inputs",
    ),
]


@pytest.mark.parametrize(
    ("label", "cls", "capability", "status", "text"), FAULTS, ids=[f[0] for f in FAULTS]
)
def test_faults_are_contained_and_the_run_goes_on(label, cls, capability, status, text):
    report = run_checks(load_adapter(cls), SMALL, capabilities=[capability, "gradient"])
    bad = [r for r in report.results if r.capability == capability and Status(r.status) is status]
    assert len(bad) >= len(SMALL), [r.message for r in report.results if r.capability == capability]
    assert text in bad[0].message
    gradient = [r for r in report.results if r.capability == "gradient"]
    assert gradient and all(Status(r.status) is Status.PASS for r in gradient)
    assert not report.passed
    # the shared zoo problem was not corrupted
    assert np.array_equal(
        SMALL[0].params, zoo.make_problem((3, 4, 3), ("tanh", "identity"), "mse", 1).params
    )


def _arrays(value):
    """Every numpy array in a port argument (problems, arrays, lists and tuples of arrays)."""
    if isinstance(value, np.ndarray):
        return [value]
    if hasattr(value, "params") and hasattr(value, "layers"):
        return [value.params, value.inputs, value.targets]
    if isinstance(value, list | tuple):
        return [a for item in value for a in _arrays(item)]
    return []


class _RecordsWriteFlags(NumpyPort):
    """Records, per capability and call, whether any array it was handed was writable."""

    writable: dict[str, list[bool]] = {}


def _recording(capability):
    def method(self, *args, **kwargs):
        if self.__dict__.get("inside"):  # a call of the port to itself, not from the harness
            return getattr(NumpyPort, capability)(self, *args, **kwargs)
        arrays = _arrays(list(args) + list(kwargs.values()))
        seen = type(self).writable
        seen.setdefault(capability, []).append(any(a.flags.writeable for a in arrays))
        self.inside = True
        try:
            return getattr(NumpyPort, capability)(self, *args, **kwargs)
        finally:
            self.inside = False

    return method


_PORT_CAPABILITIES = tuple(c for c in CAPABILITIES if hasattr(NumpyPort, c))
for _capability in _PORT_CAPABILITIES:
    setattr(_RecordsWriteFlags, _capability, _recording(_capability))


def test_every_array_handed_to_a_port_is_read_only():
    _RecordsWriteFlags.writable = {}
    report = run_checks(load_adapter(_RecordsWriteFlags), SMALL[:1])
    assert report.passed
    assert set(_RecordsWriteFlags.writable) == set(_PORT_CAPABILITIES)
    # read-only first; writable copies only in the second pass that looks for writes (issue
    # 13), after a read-only call of the same method
    for capability, calls in _RecordsWriteFlags.writable.items():
        assert not calls[0], capability
        assert all(not calls[i - 1] for i, w in enumerate(calls) if w), (capability, calls)


# -- tolerances follow dtype ------------------------------------------------------------------
class _OffBy1e7(NumpyPort):
    def ggn(self, problem):
        return super().ggn(problem) * (1 + 1e-7)


class _OffBy1e7Float32(_OffBy1e7):
    dtype = "float32"


@pytest.mark.parametrize(
    ("cls", "passes"),
    [(_OffBy1e7, False), (_OffBy1e7Float32, True)],
    ids=["float64-fails", "float32-passes"],
)
def test_relative_1e7_error_fails_in_float64_only(cls, passes):
    report = run_checks(load_adapter(cls), SMALL, capabilities=["ggn"])
    assert report.passed is passes


# -- reports ----------------------------------------------------------------------------------
def _validate_report(data):
    protocol = {"schema", "adapter", "dtype", "devices", "results", "summary"}
    assert protocol <= set(data) <= protocol | {"partial"}  # extensions may add keys
    assert data["schema"] == "ngd-verify/report/v1"
    assert isinstance(data["adapter"], str) and data["dtype"] in ("float64", "float32")
    assert isinstance(data["devices"], int)
    for r in data["results"]:
        protocol = {"check", "capability", "problem", "status", "error", "tolerance", "message"}
        # PROTOCOL s6's keys, plus the extension keys: the comparison's numbers and the
        # statistical checks' power and design (s11)
        extensions = {"measure", "scale", "where", "factor", "power", "statistics"}
        assert protocol <= set(r) <= protocol | extensions
        assert all(isinstance(r[k], str) for k in ("check", "capability", "problem", "message"))
        assert r["status"] in ("pass", "fail", "skip", "error")
        assert all(r[k] is None or isinstance(r[k], float | int) for k in ("error", "tolerance"))
    assert set(data["summary"]) == {"pass", "fail", "skip", "error"}
    for status in data["summary"]:
        assert data["summary"][status] == sum(r["status"] == status for r in data["results"])


def test_cli_reports_validate_and_exit_status(tmp_path, capsys):
    json_path, junit_path = tmp_path / "r.json", tmp_path / "r.xml"
    problems = _json(tmp_path, [p.to_dict() for p in SMALL])
    code = main(
        [
            "check",
            "--adapter",
            "tests.test_harness:_Raises",
            "--problems",
            str(problems),
            "--json",
            str(json_path),
            "--junit",
            str(junit_path),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out and "ggn" in out
    data = json.loads(json_path.read_text())
    assert any("raised RuntimeError: boom" in r["message"] for r in data["results"])
    _validate_report(data)
    assert data["summary"]["error"] >= 1 and data["summary"]["pass"] > 0
    root = ET.parse(junit_path).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == len(data["results"])
    assert len(root.findall(".//error")) == data["summary"]["error"]


def test_cli_passing_port_exits_0(tmp_path):
    problems = _json(tmp_path, [p.to_dict() for p in SMALL])
    assert (
        main(
            [
                "check",
                "--adapter",
                "numpy-port-float32",
                "--problems",
                str(problems),
                "--no-progress",
            ]
        )
        == 0
    )


# `check_adapter(source="quick")` covering every capability path is asserted by
# tests/test_mutants.py::test_control_passes, on the same run that shows the controls pass.
