"""The rl-compare report carries the pair's equal-budget curves (crl.analysis.report.curves.pair_section) when its
settings name both run directories, as `crl rl-compare` writes them."""

from __future__ import annotations

import copy
import dataclasses

from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.curves import SECTION
from crl.analysis.report.diffing import diffing_report
from tests.analysis.curve_runs import CurveRun, grpo, write_curve_run


def test_report_has_the_curves_of_its_two_runs(planted, tmp_path):
    crl_dir = write_curve_run(tmp_path / "crl-0", CurveRun())
    grpo_dir = write_curve_run(tmp_path / "grpo-0", grpo())
    summary = copy.deepcopy(planted.summary)
    summary["settings"].update(crl_run=str(crl_dir), grpo_run=str(grpo_dir))
    out = tmp_path / "out"
    text = diffing_report(dataclasses.replace(planted, summary=summary), FeatureRefs(layer=1), out).read_text()
    assert f">{SECTION}</h2>" in text and "CRL recovers 50% of GRPO&#x27;s gain" in text
    assert (out / "curves.json").exists() and (out / "curves.png").exists()
