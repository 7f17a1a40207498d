"""The programmatic `analyze_run(path)` (the `crl analyze` command: tests/commands/test_report.py)."""

from __future__ import annotations

import pytest

from crl.errors import CRLError
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_programmatic_analyze_run_takes_a_path(tmp_path):
    from crl.analysis.api import analyze_run as analyze_path

    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=6, random_seeds=()))
    out = analyze_path(d, n_boot=50, out_dir=str(tmp_path / "o"))
    assert out == tmp_path / "o" / "report.html" and out.exists()
    with pytest.raises(CRLError, match="bad AnalyzeConfig setting"):
        analyze_path(d, no_such_option=1)
