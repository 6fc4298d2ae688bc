"""Command-line usage errors: one line on stderr, exit status 2, no traceback."""

import pytest

from verify.cli import main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["check"], "--adapter is required"),
        (["bogus"], "No such command"),
        (["run", "--fuzz", "-1"], "--fuzz"),
        (["run", "--devices", "0"], "--devices"),
        (["fixtures", "explode"], "explode"),
    ],
    ids=["missing-adapter", "unknown-command", "negative-fuzz", "zero-devices", "bad-action"],
)
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ngd-verify: error:") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out


def test_no_arguments_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "Commands" in capsys.readouterr().err
