"""Accuracy per task variant (crl/analysis/offline/variants.py) on planted episodes: a harm on one wording and a gain on
another show as such while the overall accuracy does not move; only axes that vary are reported; a task that is not a
family gives nothing; summary.json gains one key and keeps the rest; the report shows a section only for a family."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.variants import SUMMARY_KEY, format_lines, record_variants, records, variant_table

N = 100
CFG = StatsConfig(n_boot=500)
NONE, SELECTED, LAST = "baseline:none:test", "eval:test", "baseline:last:test"


def _rows(phase: str, update: int, outcomes: dict[tuple[str, str], np.ndarray]) -> list[dict]:
    """Episodes of one phase; `outcomes` maps (wording, direction) to the correctness of its prompts in order."""
    rows = []
    for (wording, direction), correct in outcomes.items():
        for i, c in enumerate(correct):
            meta = {"options": "AB", "kind": direction, "wording": wording, "range": "2digit"}
            rows.append(
                {"phase": phase, "update": update, "prompt_id": f"{wording}-{direction}-{i}", "correct": bool(c)}
                | {"reward": float(c), "well_formed": True, "meta": meta}
            )
    return rows


HALF = np.arange(N) % 2 == 0
ALL, NOTHING = np.ones(N, dtype=bool), np.zeros(N, dtype=bool)


def _planted() -> pd.DataFrame:
    """Wording gain: 50% -> 100%; harm: 100% -> 50%; tie: unchanged. One direction, one range."""
    none = {("gain", "larger"): HALF, ("harm", "larger"): ALL, ("tie", "larger"): HALF}
    selected = {("gain", "larger"): ALL, ("harm", "larger"): HALF, ("tie", "larger"): HALF}
    stale = {k: NOTHING for k in selected}  # an earlier eval of the same phase: not the final policy
    return pd.DataFrame(_rows(NONE, 0, none) + _rows(SELECTED, 4, stale) + _rows(SELECTED, 8, selected))


def test_a_planted_harm_and_gain_show_per_wording_while_the_overall_accuracy_hides_them():
    eps = _planted()
    latest = eps[eps["update"] != 4]
    assert latest.groupby("phase")["correct"].mean().nunique() == 1  # overall: no change at all
    table = variant_table(eps, "test", CFG).set_index("value")
    assert list(table["axis"]) == ["wording"] * 3 and list(table.index) == ["gain", "harm", "tie"]
    assert table.loc["gain", "verdict"] == "GAIN" and table.loc["gain", "diff"] == pytest.approx(0.5)
    assert table.loc["gain", "diff_lo"] > 0.3
    assert table.loc["harm", "verdict"] == "HARM" and table.loc["harm", "diff"] == pytest.approx(-0.5)
    assert table.loc["harm", "diff_hi"] < -0.3 and table.loc["harm", "p"] < 1e-4
    assert table.loc["tie", "verdict"] == "TIE" and table.loc["tie", "diff"] == 0 and table.loc["tie", "p"] == 1.0
    assert table.loc["gain", "none"] == 0.5 and table.loc["gain", "selected"] == 1.0  # update 4 is not counted
    assert (table["none_n"] == N).all() and (table["selected_n"] == N).all() and (table["n_paired"] == N).all()
    wilson = binomtest(N, N).proportion_ci(0.95, method="wilson")
    assert table.loc["gain", "selected_lo"] == pytest.approx(wilson.low) and table.loc["gain", "selected_hi"] == 1.0
    assert table.loc["gain", "none_lo"] < 0.5 < table.loc["gain", "none_hi"]
    assert "last" not in table  # no baseline:last phase: the last policy was the selected one
    lines = format_lines(records(table.reset_index()))
    assert lines[0].startswith("[crl]   wording gain  before 0.500  after 1.000  diff +0.500 [+0.")
    assert lines[0].endswith("] GAIN  (n=100)")
    assert lines[1].startswith("[crl]   wording harm  before 1.000  after 0.500  diff -0.500 [")
    assert lines[1].endswith("] HARM  (n=100)") and lines[2].endswith("] TIE   (n=100)")


def test_every_axis_that_varies_is_reported_and_the_last_policy_has_its_columns():
    # Two wordings x two directions: the policy gets "larger" right and "smaller" wrong, whatever the wording.
    keys = [(w, d) for w in ("pick", "plain") for d in ("larger", "smaller")]
    none = {k: HALF for k in keys}
    selected = {k: ALL if k[1] == "larger" else NOTHING for k in keys}
    eps = pd.DataFrame(_rows(NONE, 0, none) + _rows(SELECTED, 8, selected) + _rows(LAST, 16, none))
    table = variant_table(eps, "test", CFG)
    assert list(zip(table["axis"], table["value"], strict=True)) == [
        ("wording", "pick"),
        ("wording", "plain"),
        ("direction", "larger"),
        ("direction", "smaller"),
    ]  # range: one value, not reported
    t = table.set_index("value")
    assert t.loc["larger", "verdict"] == "GAIN" and t.loc["smaller", "verdict"] == "HARM"
    assert t.loc["pick", "diff"] == 0 and t.loc["pick", "selected_n"] == 2 * N
    assert (t["last"] == 0.5).all() and (t["last_n"] == 2 * N).all()
    assert variant_table(eps, "val", CFG).empty  # no episodes on that split


def test_without_the_no_steering_phase_there_is_no_difference():
    eps = _planted()
    table = variant_table(eps[eps["phase"] != NONE], "test", CFG)
    assert len(table) == 3 and "diff" not in table and "none" not in table
    assert format_lines(records(table))[0] == "[crl]   wording gain  before   -    after 1.000  (n=100)"


def test_a_task_that_is_not_a_family_gives_nothing():
    arith = pd.DataFrame(
        [
            {"phase": p, "update": 0, "prompt_id": f"q{i}", "correct": i % 2 == 0, "meta": {"kind": k}}
            for p in (NONE, SELECTED)
            for i, k in enumerate(["add", "sub", "mul", "add"])
        ]
    )
    assert variant_table(arith, "test", CFG).empty  # arith's meta kind varies, but it is not a family's direction
    assert variant_table(arith.drop(columns=["meta"]), "test", CFG).empty
    assert variant_table(pd.DataFrame(), "test", CFG).empty
    assert format_lines([]) == [] and records(variant_table(arith)) == []


def _run_dir(tmp_path, rows: list[dict]):
    summary = {"format_version": 1, "run": "r", "split": "test", "before": {"accuracy": 0.5}, "selection": None}
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2))
    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path, summary


def test_record_variants_adds_one_key_to_summary_json_and_keeps_the_rest(tmp_path):
    train = [{**r, "phase": "train"} for r in _rows(NONE, 0, {("train-only", "larger"): ALL})]
    eps = _planted()
    path, before = _run_dir(tmp_path, train + eps.to_dict("records"))
    rows = record_variants(path, "test", CFG)
    after = json.loads((path / "summary.json").read_text())
    assert list(after) == [*before, SUMMARY_KEY] and {k: after[k] for k in before} == before
    assert after[SUMMARY_KEY] == rows and [r["value"] for r in rows] == ["gain", "harm", "tie"]  # train is ignored
    assert rows == records(variant_table(eps, "test", CFG))


def test_record_variants_leaves_a_non_family_summary_untouched(tmp_path):
    rows = [{"phase": SELECTED, "update": 0, "prompt_id": "q", "correct": True, "meta": {"kind": "add"}}]
    path, _ = _run_dir(tmp_path, rows)
    text = (path / "summary.json").read_text()
    assert record_variants(path, "test", CFG) == [] and (path / "summary.json").read_text() == text


def test_the_report_section_appears_only_for_a_family(tmp_path):
    from crl.analysis.report.document import Report
    from crl.analysis.report.variants import variants_section
    from crl.logs.reader import load_run
    from tests.analysis.synthetic import SyntheticSpec, write_run_dir

    run = load_run(write_run_dir(tmp_path / "synth", SyntheticSpec()))  # arith
    rep = Report("t")
    variants_section(rep, run, SELECTED, CFG)
    assert rep.sections == []
    variants_section(rep, dataclasses.replace(run, episodes=_planted()), SELECTED, CFG)
    ((title, parts),) = rep.sections
    html = "".join(parts)
    assert title == "Accuracy by task variant" and "Harm not ruled out on: wording harm." in html
    assert list(rep.tables["variants"]["value"]) == ["gain", "harm", "tie"]
