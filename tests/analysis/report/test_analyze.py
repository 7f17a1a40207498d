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
    assert "policy limit" in html and "coefficient tolerance &gt;= 4 (sweep max)" in html


def test_the_runs_coefficient_section_marks_the_ceiling_and_a_constrained_task(tmp_path):
    from crl.analysis.report.document import Report
    from crl.analysis.report.sweeps import coef_section
    from crl.logs.reader import load_run

    def text(sweep: list[dict], config: str | None = None) -> str:
        d = write_run_dir(tmp_path / str(len(list(tmp_path.iterdir()))), SyntheticSpec(coef_sweep=sweep))
        if config is not None:
            (d / "config.yaml").write_text(config)
        rep = Report("t")
        coef_section(rep, load_run(d), {}, tmp_path)
        return " ".join(rep.sections[0][1])

    sweep = [{"coef": c, "accuracy": 0.5, "well_formed_rate": 1.0 if c <= 2 else 0.5} for c in (0, 1, 2, 4)]
    assert "coefficient tolerance = 2 (largest" in text(sweep)  # 2 of a sweep up to 4: a value
    top = [{**e, "well_formed_rate": 1.0} for e in sweep]
    assert "coefficient tolerance &gt;= 4 (sweep max) (largest" in text(top)  # the ceiling: a lower bound
    constrained = text(top, "task:\n  name: compare\n  mode: constrained\n")
    assert "outputs are well-formed by construction, so tolerance by well-formed rate does not apply" in constrained
