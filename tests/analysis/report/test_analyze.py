"""`analyze_run` on a synthetic run: every PNG, a self-contained report with every section."""

from __future__ import annotations

import re

import pandas as pd

from crl.analysis.report.analyze import analyze_run
from crl.config import AnalyzeConfig
from tests.analysis.checks import assert_png, assert_self_contained
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_analyze_writes_pngs_and_a_self_contained_report(tmp_path):
    spec = SyntheticSpec(
        coef_sweep=[
            {"coef": 0, "accuracy": 0.4, "well_formed_rate": 0.7},
            {"coef": 4, "accuracy": 0.6, "well_formed_rate": 0.66},
        ]
    )
    d = write_run_dir(tmp_path / "run", spec)
    (d / "analysis").mkdir()
    pd.DataFrame({"step": [1, 2], "flip": ["to_correct", "to_incorrect"], "token": ["4", "."]}).to_csv(
        d / "analysis" / "branch_points.csv", index=False
    )
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=300))
    assert res.html == d / "analysis" / "report.html"
    pngs = sorted((d / "analysis").glob("*.png"))
    assert {p.name for p in pngs} >= {
        "baselines.png",
        "feature_usage.png",
        "critic_steps.png",
        "calibration.png",
        "coef_sweep.png",
        "branch_positions.png",
        "feature_positions.png",
    }
    for p in pngs:
        assert_png(p)
    html = res.html.read_text()
    assert_self_contained(html)
    assert len(re.findall(r"<img ", html)) == len(pngs)
    # No cards for this SAE: bare ids, the Neuronpedia link in its own column, one line on how to build cards.
    assert '<a href="https://www.neuronpedia.org/gemma-2-2b/6-gemmascope-res-16k/7">neuronpedia ↗</a>' in html
    assert "No feature cards for this SAE yet" in html and "crl features build" in html
    assert "cards.html" not in html and not (d / "analysis" / "cards.html").exists()
    for title in (
        "Summary",
        "Baselines with 95% CIs",
        "Format-valid rates",
        "Feature usage",
        "Branch points",
        "Critic trajectories",
        "Layer comparison",
        "Side effects",
    ):
        assert title in html
    assert "policy limit" in html and "coefficient tolerance = 4" in html
