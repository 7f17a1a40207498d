"""Every replay analysis of a run, written where `crl analyze` reads it, feeds the report end to end."""

from __future__ import annotations

import pytest

from crl.analysis.replay.baselines import BaselineConfig
from crl.analysis.replay.branch_points import BranchConfig
from crl.errors import CRLError
from tests.analysis.replay.planted import PLANTED, CuePolicy, write_real_run
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_replay_analyses_feed_the_report_end_to_end(comps, tmp_path):
    import re

    from PIL import Image

    from crl.analysis.replay.precompute import ReplayConfig, run_replay_analyses
    from crl.analysis.report.analyze import analyze_run
    from crl.config import AnalyzeConfig

    d = write_real_run(tmp_path / "run", comps, CuePolicy(comps))
    cfg = ReplayConfig(
        baselines=BaselineConfig(seeds=[0, 1], n_act=2, coef_grid=[4.0]),
        branch=BranchConfig(n_alternatives=1),
        sweep_multipliers=[1.0],
        n_boot=200,
    )
    out = run_replay_analyses(d, cfg, comps=comps, policy=CuePolicy(comps))
    phases = ["baseline:random:test", "baseline:static:test", "baseline:prompting:test"]  # none was logged
    assert out["baseline_phases"] == phases and any("letter_prior skipped" in n for n in out["baseline_notes"])
    assert out["coef_sweep"][-1] == {"coef": 4.0, "accuracy": 1.0, "well_formed_rate": 1.0}
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=200))
    tables = res.report.tables
    assert tables["feature_usage"].set_index("feature").loc[5, "effect"] == 1.0
    assert set(tables["side_effects"]["feature"]) == set(PLANTED)
    assert tables["branch_by_step"].set_index("step").loc[0, "n_branch_points"] == 8
    mt = tables["methods"].set_index("method")
    assert mt.loc["crl", "accuracy"] == 1.0 and mt.loc["static", "accuracy"] == 0.5
    assert mt.loc["random", "n_seeds"] == 2
    assert (
        mt.loc["none", "rollouts"] == 0
        and mt.loc["prompting", "rollouts"] == out["baseline_chosen"]["prompting_rollouts"]
    )
    budget = tables["budget_table"].set_index(["method", "budget"])
    assert {"none", "static", "prompting"} <= set(budget.index.get_level_values(0))  # no val evals: no crl curve
    html = res.html.read_text()
    assert (
        "coefficient tolerance &gt;= 4 (sweep max)" in html
        and "Planted task" in html
        and "100.0% of 8 episodes" in html
    )
    assert not re.search(r"""src\s*=\s*["']?https?:""", html) and "<script" not in html
    for png in (d / "analysis").glob("*.png"):
        with Image.open(png) as im:
            im.verify()


def test_analyze_env_flag_fails_cleanly_on_a_run_without_a_full_config(tmp_path):
    from crl.analysis.report.analyze import analyze_run
    from crl.config import AnalyzeConfig

    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))  # its config.yaml is a stub
    with pytest.raises(CRLError, match="cannot be rebuilt"):
        analyze_run(AnalyzeConfig(run_dir=str(d), env=True))
