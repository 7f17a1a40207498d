"""Fixtures of the analysis tests: one synthetic run directory with known answers (tests/analysis/synthetic.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crl.logs.reader import RunDir, load_run
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    return write_run_dir(tmp_path_factory.mktemp("runs") / "synth", SyntheticSpec())


@pytest.fixture(scope="module")
def run(run_path) -> RunDir:
    return load_run(run_path)
