"""The transfer table (crl/analysis/offline/transfer.py) on planted per-prompt outcomes: a planted harm is HARM, a
planted gain is GAIN, no change is TIE; the files round-trip and the report shows a section only when they exist."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline import stats, transfer, variants
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.transfer import (
    format_table,
    read_transfer,
    transfer_table,
    verdict,
    write_transfer,
)
from crl.errors import CRLError

N = 200


def _variant(name: str, none: np.ndarray, crl: np.ndarray, steered: np.ndarray, **more) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": name,
            "prompt_id": [f"{name}-{i}" for i in range(len(none))],
            "none_correct": none.astype(bool),
            "crl_correct": crl.astype(bool),
            "crl_steered": steered.astype(bool),
            **more,
        }
    )


def _planted() -> tuple[pd.DataFrame, list[dict]]:
    rng = np.random.default_rng(0)
    none = rng.random(N) < 0.5
    steer = rng.random(N) < 0.4
    gain = np.where(steer, True, none)  # steering fixes every steered prompt
    harm = np.where(steer, ~none, none)  # steering flips every steered answer: a right answer goes wrong...
    harm = np.where(steer & ~none, False, harm)  # ...and a wrong one stays wrong
    noise = none.copy()
    noise[:2] = ~noise[:2]  # two flips: no evidence either way
    frames = [
        _variant("gain", none, gain, steer),
        _variant("harm", none, harm, steer),
        _variant("tie", none, noise, np.zeros(N)),
    ]
    info = [
        {"variant": "gain", "held_out": "", "describe": "trained"},
        {"variant": "harm", "held_out": "direction", "describe": "inverse"},
        {"variant": "tie", "held_out": "wording", "describe": "paraphrase"},
    ]
    return pd.concat(frames, ignore_index=True), info


def test_planted_harm_is_harm_gain_is_gain_and_no_change_is_a_tie():
    outcomes, info = _planted()
    table = transfer_table(outcomes, info, StatsConfig(n_boot=1000)).set_index("variant")
    assert table.loc["gain", "crl_verdict"] == "GAIN" and table.loc["gain", "crl_diff"] > 0.1
    assert table.loc["gain", "crl_p"] < 1e-4 and table.loc["gain", "crl_lo"] > 0
    assert table.loc["harm", "crl_verdict"] == "HARM" and table.loc["harm", "crl_hi"] < 0
    assert table.loc["tie", "crl_verdict"] == "TIE" and table.loc["tie", "crl_p"] == 1.0
    assert table.loc["gain", "crl_steered"] == pytest.approx(outcomes[outcomes.variant == "gain"].crl_steered.mean())
    assert (table["n"] == N).all() and list(table.index) == ["gain", "harm", "tie"]  # the order asked for


@pytest.mark.parametrize(
    "diff,lo,p,expected",
    [
        (-0.01, -0.021, 1.0, "HARM"),
        (0.0, -0.021, 1.0, "UNSURE"),
        (0.05, -0.03, 0.01, "UNSURE"),
        (0.05, -0.01, 0.01, "GAIN"),
        (0.05, 0.01, 0.06, "TIE"),
    ],
)
def test_verdict_rule(diff, lo, p, expected):
    assert verdict(diff, lo, p) == expected  # harm is checked first: a gain with a CI below -0.02 is not safe


def test_the_abstention_ablation_gets_both_policies_and_the_abstained_share():
    outcomes, info = _planted()
    ab = outcomes.rename(columns={"crl_correct": "crl_no_abstain_correct", "crl_steered": "crl_no_abstain_steered"})
    off = ab["variant"] == "harm"  # the rule switches steering off on the harmful variant
    ab["crl_abstain_correct"] = np.where(off, ab["none_correct"], ab["crl_no_abstain_correct"])
    ab["crl_abstain_steered"] = np.where(off, False, ab["crl_no_abstain_steered"])
    ab["crl_abstain_abstained"] = off
    table = transfer_table(ab, info, StatsConfig(n_boot=500)).set_index("variant")
    assert table.loc["harm", "crl_no_abstain_verdict"] == "HARM" and table.loc["harm", "crl_abstain_verdict"] == "TIE"
    assert table.loc["harm", "crl_abstain_abstained"] == 1.0 and table.loc["gain", "crl_abstain_abstained"] == 0.0
    assert "crl_no_abstain_abstained" not in table
    text = format_table(table.reset_index())
    assert len(text.splitlines()) == 1 + 2 * 3 and "crl_abstain" in text and "HARM" in text


def test_files_round_trip_and_bad_outcomes_are_refused(tmp_path):
    outcomes, info = _planted()
    table = transfer_table(outcomes, info, StatsConfig(n_boot=200))
    assert read_transfer(tmp_path) is None
    paths = write_transfer(tmp_path / "analysis", table, outcomes, {"run": "r", "n": N})
    back = read_transfer(tmp_path)
    assert list(back["variant"]) == ["gain", "harm", "tie"] and list(back["crl_verdict"]) == list(table["crl_verdict"])
    assert back.loc[0, "held_out"] != back.loc[0, "held_out"]  # empty = NaN: the training distribution
    saved = json.loads(paths["json"].read_text())
    assert saved["run"] == "r" and saved["harm_margin"] == 0.02 and len(saved["variants"]) == 3
    assert len(pd.read_csv(paths["prompts"])) == 3 * N
    with pytest.raises(CRLError, match="no policy column"):
        transfer_table(outcomes.drop(columns=["crl_correct"]), info)
    with pytest.raises(CRLError, match="repeats a prompt"):
        transfer_table(pd.concat([outcomes, outcomes.head(1)]), info)


def test_the_report_section_appears_only_when_transfer_ran(tmp_path):
    from crl.analysis.report.document import Report
    from crl.analysis.report.transfer import transfer_section
    from crl.logs.reader import load_run
    from tests.analysis.synthetic import SyntheticSpec, write_run_dir

    run = load_run(write_run_dir(tmp_path / "synth", SyntheticSpec()))
    rep = Report("t")
    transfer_section(rep, run)
    assert rep.sections == []  # no transfer.csv: the report is unchanged
    outcomes, info = _planted()
    table = transfer_table(outcomes, info, StatsConfig(n_boot=200))
    write_transfer(run.path / "analysis", table, outcomes, {"trained": "wording plain | direction larger", "n": N})
    transfer_section(rep, run)
    ((title, parts),) = rep.sections
    html = "".join(parts)
    assert title == "Transfer to held-out task variants" and "Harm not ruled out on: harm (crl)." in html
    assert f"Trained on: wording plain | direction larger; {N} prompts asked per variant." in html
    assert '<td class="t">GAIN</td>' in html and "crl_verdict" in html and list(rep.tables["transfer"]["n"]) == [N] * 3
    assert "greedy_rule" not in html  # argmax (or a transfer.json from before the rule was recorded): not mentioned
    settings = {"trained": "wording plain", "n": N, "greedy_rule": "steer_if_likely"}
    write_transfer(run.path / "analysis", table, outcomes, settings)
    rep = Report("t")
    transfer_section(rep, run)
    assert "The greedy policy picks by policy.greedy_rule=steer_if_likely." in "".join(rep.sections[0][1])


@pytest.mark.parametrize("module", [stats, transfer, variants])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0  # wilson, paired_verdict, verdict's UNSURE, the variant lines
