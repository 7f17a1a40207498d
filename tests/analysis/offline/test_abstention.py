"""The abstention threshold ablation (crl/analysis/offline/abstention.py) on planted per-prompt outcomes: a variant
whose far prompts are the harmed ones is HARM without a rule and a TIE at the fitted one; m = 1 and m = inf are the
crl_abstain and crl_no_abstain rows of the transfer table; several decisions skip it with a note."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline.abstention import (
    M_GRID,
    ablation_json,
    format_ablation,
    read_ablation,
    threshold_ablation,
)
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.transfer import format_table, read_transfer_settings, transfer_table, write_transfer

N = 200
CFG = StatsConfig(n_boot=500)


def _variant(name: str, rng: np.random.Generator, far_share: float, harm_far: bool) -> pd.DataFrame:
    """Near prompts (d/tau in [0.2, 0.9]): steering fixes them all. Far prompts (d/tau in [1.5, 4]): steering flips
    right answers to wrong (harm_far) or leaves them alone. crl_abstain is the rule at m = 1."""
    none = rng.random(N) < 0.5
    far = rng.random(N) < far_share
    ratio = np.where(far, rng.uniform(1.5, 4.0, N), rng.uniform(0.2, 0.9, N))
    free = np.where(far, np.where(harm_far, False, none), True)
    off = ratio > 1
    return pd.DataFrame(
        {
            "variant": name,
            "prompt_id": [f"{name}-{i}" for i in range(N)],
            "none_correct": none,
            "decisions": 1,
            "ood_ratio": ratio,
            "crl_abstain_correct": np.where(off, none, free),
            "crl_abstain_steered": ~off,
            "crl_abstain_abstained": off,
            "crl_no_abstain_correct": free,
            "crl_no_abstain_steered": True,
        }
    )


def _planted() -> tuple[pd.DataFrame, list[dict]]:
    rng = np.random.default_rng(0)
    frames = [
        _variant("near", rng, 0.0, False),
        _variant("far_harm", rng, 1.0, True),
        _variant("mixed", rng, 0.5, True),
    ]
    return pd.concat(frames, ignore_index=True), [{"variant": f.variant[0]} for f in frames]


def test_far_harmed_prompts_are_harm_without_the_rule_and_a_tie_at_the_fitted_threshold():
    outcomes, info = _planted()
    ab, note = threshold_ablation(outcomes, info, cfg=CFG)
    assert note == "" and len(ab) == 3 * len(M_GRID) and list(ab["m"][: len(M_GRID)]) == list(M_GRID)
    far = ab[ab["variant"] == "far_harm"].set_index("m")
    assert (
        far.loc[math.inf, "verdict"] == "HARM" and far.loc[math.inf, "hi"] < 0 and far.loc[math.inf, "abstained"] == 0
    )
    assert far.loc[1.0, "verdict"] == "TIE" and far.loc[1.0, "diff"] == 0 and far.loc[1.0, "abstained"] == 1
    assert far.loc[0.5, "steered"] == 0 and far.loc[math.inf, "steered"] == 1
    assert far.loc[2.0, "verdict"] == "HARM" and 0 < far.loc[2.0, "abstained"] < 1  # some far prompts have d/tau < 2
    near = ab[ab["variant"] == "near"].set_index("m")
    assert (near.loc[[1.0, math.inf], "verdict"] == "GAIN").all() and near.loc[1.0, "abstained"] == 0
    assert 0 < near.loc[0.5, "abstained"] < 1 and near.loc[0.5, "diff"] < near.loc[1.0, "diff"]  # 0.5 cuts the gain
    for _, g in ab.groupby("variant"):  # a higher threshold never abstains more
        assert (np.diff(g["abstained"].to_numpy()) <= 0).all()


def test_m1_is_the_crl_abstain_row_and_m_inf_the_crl_no_abstain_row():
    outcomes, info = _planted()
    table = transfer_table(outcomes, info, CFG).set_index("variant")
    ab = threshold_ablation(outcomes, info, cfg=CFG)[0].set_index(["variant", "m"])
    for v in table.index:
        for m, pol in ((1.0, "crl_abstain"), (math.inf, "crl_no_abstain")):
            row = ab.loc[(v, m)]
            assert row["acc"] == table.loc[v, pol] and row["verdict"] == table.loc[v, f"{pol}_verdict"]
            for col in ("diff", "lo", "hi", "p", "steered"):
                assert row[col] == pytest.approx(table.loc[v, f"{pol}_{col}"]), (v, m, col)
        assert ab.loc[(v, 1.0), "abstained"] == table.loc[v, "crl_abstain_abstained"]


def test_the_table_gets_the_ratio_quantiles():
    outcomes, info = _planted()
    table = transfer_table(outcomes, info, CFG).set_index("variant")
    far = outcomes[outcomes.variant == "far_harm"]["ood_ratio"]
    assert table.loc["far_harm", "ood_ratio_median"] == pytest.approx(far.median())
    assert 1.5 <= table.loc["far_harm", "ood_ratio_p10"] < table.loc["far_harm", "ood_ratio_p90"] <= 4.0
    assert table.loc["near", "ood_ratio_p90"] < 1
    text = format_table(table.reset_index())
    assert "d/tau p10|med|p90" in text.splitlines()[0]
    assert f"{table.loc['near', 'ood_ratio_p10']:.2f}|" in text


def test_several_decisions_or_no_ratio_skip_it_with_one_note():
    outcomes, info = _planted()
    multi = outcomes.assign(decisions=np.where(outcomes["variant"] == "mixed", 3, 1))
    ab, note = threshold_ablation(multi, info, cfg=CFG)
    assert ab.empty and "not exact" in note and "up to 3 decisions (mixed)" in note and "\n" not in note
    ab, note = threshold_ablation(outcomes.drop(columns=["ood_ratio"]), info, cfg=CFG)
    assert ab.empty and "no ood_ratio" in note
    plain = outcomes.rename(columns={"crl_no_abstain_correct": "crl_correct", "crl_no_abstain_steered": "crl_steered"})
    plain = plain.drop(columns=[c for c in plain if c.startswith("crl_abstain")])
    ab, note = threshold_ablation(plain, info, cfg=CFG)
    assert ab.empty and note == ""  # no rule: nothing to ablate, nothing said


def test_it_round_trips_through_transfer_json_and_prints(tmp_path):
    outcomes, info = _planted()
    table = transfer_table(outcomes, info, CFG)
    ab, note = threshold_ablation(outcomes, info, cfg=CFG)
    write_transfer(tmp_path / "analysis", table, outcomes, {"run": "r"}, ablation_json(ab, note))
    saved = json.loads((tmp_path / "analysis" / "transfer.json").read_text())
    assert saved["abstention_ablation"]["grid"][-1] == "inf" and len(saved["variants"]) == 3
    back, back_note = read_ablation(tmp_path)
    pd.testing.assert_frame_equal(back, ab, check_dtype=False)
    assert back_note == "" and "abstention_ablation" not in read_transfer_settings(tmp_path)
    text = format_ablation(ab)
    assert len(text.splitlines()) == 2 + 2 * 3 and "m=inf" in text and "-0.2" in text.split("far_harm")[1]
    assert read_ablation(tmp_path / "nothing")[0].empty


def test_the_report_draws_it(tmp_path):
    from crl.analysis.report.document import Report
    from crl.analysis.report.transfer import transfer_section
    from crl.logs.reader import load_run
    from tests.analysis.synthetic import SyntheticSpec, write_run_dir

    run = load_run(write_run_dir(tmp_path / "synth", SyntheticSpec()))
    outcomes, info = _planted()
    ab, note = threshold_ablation(outcomes, info, cfg=CFG)
    write_transfer(run.path / "analysis", transfer_table(outcomes, info, CFG), outcomes, {}, ablation_json(ab, note))
    rep = Report("t")
    transfer_section(rep, run, tmp_path / "out")
    assert (tmp_path / "out" / "transfer_abstention.png").stat().st_size > 0
    wide = rep.tables["transfer_abstention"]
    assert list(wide["variant"]) == ["near", "far_harm", "mixed"] and wide.columns[-1] == "m=inf"
    assert wide.set_index("variant").loc["far_harm", "m=1"] == "+0.000 TIE, 100%"
    assert "ood_ratio_median" in rep.tables["transfer"]
    multi = outcomes.assign(decisions=2)
    ab, note = threshold_ablation(multi, info, cfg=CFG)
    write_transfer(run.path / "analysis", transfer_table(multi, info, CFG), multi, {}, ablation_json(ab, note))
    rep = Report("t")
    transfer_section(rep, run, tmp_path / "out2")
    assert "not exact" in "".join(rep.sections[0][1]) and "transfer_abstention" not in rep.tables
