"""`crl soak` end to end: kills, damaged files, bad input, same-second sweeps and a full disk; 0 rows lost.
Minutes on 2 cores, so only with `pytest -m soak`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.soak
def test_the_soak_passes_with_no_row_lost(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "crl.cli", "soak", f"dir={tmp_path / 'soak'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["passed"] and counts["kills_survived"] == 10 and counts["rows_lost"] == 0
    assert counts["rows_duplicated"] == 0 and counts["runs_clobbered"] == 0
    assert counts["bad_inputs"] == counts["bad_inputs_handled"] >= 10
