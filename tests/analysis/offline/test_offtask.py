"""Side effects off the task, the torch-free part (crl.analysis.offline.offtask) and its report section on a
synthetic run (no model: the logged side-effect ratio, and a note why the rest is not measured)."""

from __future__ import annotations

import doctest
import json
import math

import pytest

import crl.analysis.offline.offtask as offtask
from crl.analysis.offline.offtask import (
    OFFTASK_FILE,
    is_current,
    offtask_table,
    outcome_changes,
    over_refusal,
    plan,
    policy_fingerprint,
    read_offtask,
    reading,
    side_effect_ratio,
)
from crl.analysis.offline.stats import StatsConfig
from crl.errors import CRLError
from crl.logs.reader import load_run
from tests.analysis.synthetic import SyntheticSpec, write_run_dir

FAST = StatsConfig(n_boot=300, seed=0)


def test_doctests():
    assert doctest.testmod(offtask).failed == 0


def test_side_effect_ratio_on_constructed_counts():
    r = side_effect_ratio(worse=3, better=27)
    assert (r["worse"], r["better"], r["changed"], r["share"]) == (3, 27, 30, 0.1)
    # Wilson 95%: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.95996
    z, n, p = 1.959964, 30, 0.1
    mid, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert r["lo"] == pytest.approx((mid - half) / (1 + z * z / n), abs=1e-5)
    assert r["hi"] == pytest.approx((mid + half) / (1 + z * z / n), abs=1e-5)
    assert side_effect_ratio(5, 0)["share"] == 1.0 and side_effect_ratio(5, 0)["hi"] == pytest.approx(1.0)
    assert math.isnan(side_effect_ratio(0, 0)["share"])
    with pytest.raises(CRLError, match="counts"):
        side_effect_ratio(-1, 2)
    # Paired by example id: only ids both runs have count; unchanged outcomes are not in the ratio.
    none = {"a": True, "b": True, "c": False, "d": False, "e": True}
    pol = {"a": False, "b": True, "c": True, "d": True, "e": True, "x": False}
    ch = outcome_changes(none, pol)
    assert (ch["n"], ch["worse"], ch["better"], ch["share"]) == (5, 1, 2, pytest.approx(1 / 3))


def test_over_refusal_counts_on_constructed_outputs():
    none = [False] * 8 + [True, True]
    pol = [True, True, True] + [False] * 5 + [True, False]  # 3 newly refused, 1 no longer refused
    r = over_refusal(none, pol, FAST)
    assert (r["n"], r["none_refused"], r["policy_refused"]) == (10, 2, 4)
    assert (r["none_rate"], r["policy_rate"], r["delta"]) == (0.2, 0.4, pytest.approx(0.2))
    assert (r["newly_refused"], r["no_longer_refused"]) == (3, 1)
    assert r["mcnemar_p"] == pytest.approx(0.625)  # exact binomial: 2 * P(X <= 1 | n=4, 1/2)
    assert r["lo"] <= r["delta"] <= r["hi"]
    with pytest.raises(CRLError, match="same safe prompts"):
        over_refusal([True], [True, False], FAST)


def _record() -> dict:
    return {
        "phase": "eval:test",
        "none_phase": "baseline:none:test",
        "changes": {**side_effect_ratio(2, 18), "n": 40},
        "neutral_kl": {
            "mean": 0.05,
            "lo": 0.03,
            "hi": 0.08,
            "max": 0.4,
            "top1_changed": 0.1,
            "n_texts": 8,
            "n_tokens": 192,
            "prompts": 8,
        },
        "refusal": {**over_refusal([False] * 30 + [True, True], [False] * 29 + [True] * 3, FAST), "source": "safe"},
        "perplexity": {
            "neutral": {"n": 8, "none_ppl": 2.0, "policy_ppl": 2.2, "ratio": 1.1, "lo": 0.95, "hi": 1.3, "tokens": 24},
            "task": {"n": 8, "none_ppl": 1.5, "policy_ppl": 3.0, "ratio": 2.0, "lo": 1.5, "hi": 2.6, "tokens": 24},
        },
    }


def test_table_and_reading_are_computed_from_the_numbers():
    rec = _record()
    table = offtask_table(rec)
    assert len(table) == 5 and list(table["n"]) == [40, 192, 32, 8, 8]
    assert table["change [95% CI]"][0].startswith("0.10 [0.03, 0.30] of changed")
    assert table["policy"][2] == "3/32 (9%)" and "+1 / -0" in table["change [95% CI]"][2]
    text = reading(rec)
    assert text.startswith("Of the 20 held-out prompts whose outcome the policy changed, 2 got worse (10%, CI 3%–30%)")
    assert "0.05 nats per token" in text and "at 10% of positions" in text
    assert "refuses 3/32 safe prompts vs 2/32 unsteered (no more often than without steering)" in text
    assert "×1.10 on neutral prompts (no clear change), ×2.00 on task prompts (higher)" in text
    assert reading({}) == "Nothing measured off the task." and offtask_table({}).empty
    assert reading({"changes": {**side_effect_ratio(0, 0), "n": 7}}) == "The policy changed no held-out outcome of 7."


def test_plan_reads_the_logged_ratio_and_the_record_is_current_only_while_nothing_changed(tmp_path):
    d = write_run_dir(tmp_path / "run", SyntheticSpec())  # none right on p0..p15, policy on p1..p31
    want = plan(load_run(d), prompts=4, tokens=3)
    ch = want["changes"]
    assert (ch["n"], ch["worse"], ch["better"]) == (40, 1, 16) and want["policy"] is None
    assert want["phase"] == "eval:test" and want["none_phase"] == "baseline:none:test"
    assert read_offtask(d) is None
    (d / OFFTASK_FILE).parent.mkdir(exist_ok=True)
    (d / OFFTASK_FILE).write_text(json.dumps(want))
    assert is_current(read_offtask(d), want) and not is_current(read_offtask(d), plan(load_run(d), prompts=5))
    (d / "policy.pt").write_bytes(b"weights")
    assert policy_fingerprint(d).startswith("policy.pt:") and not is_current(
        read_offtask(d), plan(load_run(d), prompts=4, tokens=3)
    )
    (d / OFFTASK_FILE).write_text("{")
    with pytest.raises(CRLError, match="not valid JSON"):
        read_offtask(d)


def test_the_section_is_in_the_report_of_a_synthetic_run(tmp_path):
    from crl.analysis.report.analyze import analyze_run
    from crl.analysis.report.offtask import TITLE
    from crl.config import AnalyzeConfig

    d = write_run_dir(tmp_path / "run", SyntheticSpec())
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=200))
    html = res.html.read_text()
    assert TITLE in html and "Off-task side effects with the model not measured: the run has no trained policy" in html
    table = res.report.tables["offtask"]
    assert len(table) == 1 and table["policy"][0] == "1 worse, 16 better"
    assert "Of the 17 held-out prompts whose outcome the policy changed, 1 got worse (6%" in html
    assert not (d / OFFTASK_FILE).exists()  # nothing measured, nothing stored
