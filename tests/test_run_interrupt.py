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

#: The CLI in a subprocess whose 12th identity blocks after telling the parent (a marker
#: file): the parent's SIGINT then arrives in the middle of the battery, as a user's Ctrl-C.
DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import verify.battery as battery

    marker, original, calls = Path(sys.argv[1]), battery.run_identity, []

    def blocking(ident, problem):
        calls.append(ident.name)
        if len(calls) == 12:
            marker.write_text("ready")
            while True:
                time.sleep(0.05)
        return original(ident, problem)

    battery.run_identity = blocking
    from verify.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_sigint_during_run_writes_the_results_so_far(tmp_path):
    driver, marker = tmp_path / "driver.py", tmp_path / "ready"
    report, junit = tmp_path / "run.json", tmp_path / "run.xml"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(marker), "run", "--quick", "--no-progress",
         "--json", str(report), "--junit", str(junit)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the battery never reached its 12th identity"
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
    assert len(data["results"]) > 0  # the 11 identities before the interrupt
    assert {r["problem"] for r in data["results"]}  # real results, named by problem
    assert "interrupted" in junit.read_text()
