"""`ngd-verify run` stopped by SIGINT (Ctrl-C) writes the results it has, marked partial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

#: The CLI in a subprocess whose N-th call of a target blocks after telling the parent (a
#: marker file): the parent's SIGINT then arrives in the middle of the run, as a user's Ctrl-C.
#: With one CPU the battery runs in-process first (its 12th identity blocks); with two, a
#: worker runs it while the cross-validation (its 3rd harness run blocks) goes on.
DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    import verify.battery as battery
    import verify.crossval as crossval

    marker, module, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    cpus, blocked = int(sys.argv[4]), int(sys.argv[5])
    if cpus == 1:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    owner = {"battery": battery, "crossval": crossval}[module]
    original, calls = getattr(owner, name), []

    def blocking(*args, **kwargs):
        calls.append(1)
        if len(calls) == blocked:
            marker.write_text("ready")
            while True:
                time.sleep(0.05)
        return original(*args, **kwargs)

    setattr(owner, name, blocking)
    from verify.cli import main
    sys.exit(main(sys.argv[6:]))
""")


@pytest.mark.parametrize("target", [("battery", "run_identity", "1", "12"),
                                    ("crossval", "run_checks", "2", "3")],
                         ids=["battery-in-process", "crossval-with-battery-worker"])
def test_sigint_during_run_writes_the_results_so_far(tmp_path, target):
    driver, marker = tmp_path / "driver.py", tmp_path / "ready"
    report, junit = tmp_path / "run.json", tmp_path / "run.xml"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(marker), *target, "run", "--quick", "--no-progress",
         "--json", str(report), "--junit", str(junit)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{target[1]} was never called {target[3]} times"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err, err
    data = json.loads(report.read_text())
    assert data["partial"] is True
    assert len(data["results"]) > 0  # what came before the interrupt
    assert {r["problem"] for r in data["results"]}  # real results, named by problem
    assert "interrupted" in junit.read_text()
