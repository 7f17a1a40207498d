"""Equal-budget curves of CRL and GRPO (crl.analysis.offline.curves, crl.analysis.report.curves, `crl curves`) on
synthetic run directories with known answers (tests/analysis/curve_runs.py)."""

from __future__ import annotations

import doctest
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from crl.analysis.offline import curves as oc
from crl.analysis.offline.curves import CurvePoint
from crl.analysis.offline.stats import StatsConfig
from crl.errors import CRLError
from tests.analysis.checks import assert_self_contained
from tests.analysis.curve_runs import CRL_CURVE, GRPO_CURVE, CurveRun, grpo, write_curve_run
from tests.run.helpers import crl

FAST = StatsConfig(n_boot=400, seed=0)


@pytest.fixture
def pair(tmp_path):
    return write_curve_run(tmp_path / "crl-0", CurveRun()), write_curve_run(tmp_path / "grpo-0", grpo())


def test_doctests():
    assert doctest.testmod(oc, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_points_are_what_the_runs_wrote(pair):
    crl_dir, grpo_dir = pair
    c = oc.read_curve(crl_dir, oc.CRL)
    assert c.method == oc.CRL and c.val_split == "val" and c.rollouts == 12 * 128
    assert c.points == [CurvePoint(u, 128 * u, 10.0 * u, k / 20, 20) for u, k in CRL_CURVE.items()]
    g = oc.read_curve(grpo_dir, oc.GRPO)  # 2 steps of 3 s a round: 6 s a round
    assert g.method == oc.GRPO
    assert g.points == [CurvePoint(u, 128 * u, 6.0 * u, k / 20, 20) for u, k in GRPO_CURVE.items()]
    assert g.val[4].to_dict() == {f"v{i}": float(i < 14) for i in range(20)}
    assert g.summary_test == {"before_accuracy": 0.4, "before_n": 20, "after_accuracy": 0.8, "after_n": 20}


def test_runs_without_timings_have_no_wall_time(tmp_path):
    c = oc.read_curve(write_curve_run(tmp_path / "c", CurveRun(timings=False)))
    assert [p.wall_seconds for p in c.points] == [0.0, None, None, None]


def test_share_of_a_constructed_case_is_one_half(pair):
    """Base 0.5, GRPO 0.9 (+0.4), CRL 0.7 (+0.2) at 1536 rollouts: CRL recovers 50%."""
    result = oc.curves([str(pair[0])], [str(pair[1])], FAST)
    b = result.budgets.set_index("rollouts")
    assert list(b.index) == [0, 512, 1024, 1536]
    last = b.loc[1536]
    assert last["base"] == pytest.approx(0.5)
    assert last["grpo_gain"] == pytest.approx(0.4) and last["crl_gain"] == pytest.approx(0.2)
    assert last["share"] == pytest.approx(0.5) and last["share_lo"] < 0.5 < last["share_hi"]
    assert last["grpo_gain_lo"] > 0 and last["crl_ci"] == "Wilson, n=1 seed, 20 prompts"
    assert last["crl_wall_s"] == pytest.approx(120.0) and last["grpo_wall_s"] == pytest.approx(72.0)
    assert math.isnan(b.loc[0, "share"]) and "no gain to share" in b.loc[0, "note"]
    assert "CRL recovers 50% of GRPO's gain" in result.headline and "At 1536 rollouts" in result.headline
    test = result.test.iloc[0]  # test: before 0.4, GRPO 0.8, CRL 0.6
    assert (test["base"], test["grpo_gain"], test["crl_gain"]) == pytest.approx((0.4, 0.4, 0.2))
    assert test["share"] == pytest.approx(0.5) and test["crl_rollouts"] == 1536
    assert result.warnings == []


def test_the_base_is_grpos_round_0_and_a_steering_untrained_policy_is_flagged(tmp_path):
    a = write_curve_run(tmp_path / "c", CurveRun(val={**CRL_CURVE, 0: 12}))  # update 0 steered: 0.6, not 0.5
    g = write_curve_run(tmp_path / "g", grpo())
    result = oc.curves([str(a)], [str(g)], FAST)
    last = result.budgets.iloc[-1]
    assert last["base"] == pytest.approx(0.5) and last["crl_gain"] == pytest.approx(0.2)
    assert len(result.warnings) == 1 and "the untrained policy steered" in result.warnings[0]


def test_share_is_undefined_when_grpo_did_not_improve(tmp_path):
    flat = {0: 10, 4: 10, 8: 10, 12: 10}
    a = write_curve_run(tmp_path / "c", CurveRun())
    g = write_curve_run(tmp_path / "g", grpo(val=flat, test_after=8))
    result = oc.curves([str(a)], [str(g)], FAST)
    last = result.budgets.iloc[-1]
    assert last["grpo_gain"] == 0 and math.isnan(last["share"])
    assert last["note"] == "GRPO did not improve val at this budget, so the share is undefined"
    assert "GRPO did not improve val at this budget, so the share is undefined" in result.headline
    assert "recovers" not in result.headline
    assert result.test.iloc[0]["note"] == "GRPO did not improve test at this budget, so the share is undefined"


def test_compare_is_undefined_when_grpo_gain_ci_touches_zero():
    rng = np.random.default_rng(0)
    base = (rng.random((1, 40)) < 0.5).astype(float)
    grpo_ = base.copy()
    grpo_[0, np.flatnonzero(base[0] == 0)[:1]] = 1.0  # +1 prompt of 40: a CI that includes 0
    crl_ = base.copy()
    out = oc.compare(crl_, grpo_, base, FAST)
    assert out["grpo_gain"] == pytest.approx(1 / 40) and out["grpo_gain_lo"] <= 0
    assert out["share"] is None and "undefined" in out["note"]


def test_seeds_pool_with_a_t_interval(tmp_path):
    crl_acc = {0: 14, 1: 12, 2: 10}  # of 20 at 1536: 0.7, 0.6, 0.5
    crls = [write_curve_run(tmp_path / f"c{s}", CurveRun(seed=s, val={**CRL_CURVE, 12: k})) for s, k in crl_acc.items()]
    grpos = [write_curve_run(tmp_path / f"g{s}", grpo(seed=s)) for s in (0, 1)]
    result = oc.curves([str(p) for p in crls], [str(p) for p in grpos], FAST)
    last = result.budgets.iloc[-1]
    x = np.array([0.7, 0.6, 0.5])
    half = student_t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
    assert last["crl_acc"] == pytest.approx(0.6) and last["crl_ci"] == "t, 3 seeds"
    assert (last["crl_lo"], last["crl_hi"]) == pytest.approx((max(0, 0.6 - half), min(1, 0.6 + half)))
    assert last["grpo_seeds"] == 2 and last["share"] == pytest.approx(0.1 / 0.4)
    assert "CRL n=3 seeds, GRPO n=2 seeds" in result.headline


def test_mismatched_tasks_are_one_line(pair, tmp_path):
    other = write_curve_run(tmp_path / "grpo-compare", grpo(task="compare"))
    with pytest.raises(CRLError, match="not comparable: task: .* has 'arith', .* 'compare'"):
        oc.read_curves([str(pair[0])], [str(other)])


def test_unfinished_failed_or_swapped_runs_are_one_line(pair, tmp_path):
    crl_dir, grpo_dir = pair
    running = write_curve_run(tmp_path / "grpo-running", grpo(finished=False))
    with pytest.raises(CRLError, match="has not finished .no summary.json.; let it finish or `crl grpo resume="):
        oc.read_curves([str(crl_dir)], [str(running)])
    with pytest.raises(CRLError, match="is a `crl grpo` run; pass it in grpo_runs"):
        oc.read_curves([str(grpo_dir)], [str(grpo_dir)])
    with pytest.raises(CRLError, match="is not a `crl grpo` run"):
        oc.read_curves([str(crl_dir)], [str(crl_dir)])
    failed = tmp_path / "grpo-failed"
    shutil.copytree(grpo_dir, failed)
    (failed / "FAILED.json").write_text(json.dumps({"error": "boom"}))
    with pytest.raises(CRLError, match="failed"):
        oc.read_curves([str(crl_dir)], [str(failed)])
    with pytest.raises(CRLError, match="needs crl_runs="):
        oc.read_curves([], [str(grpo_dir)])


def test_globs_and_sweep_folders_expand_by_method(tmp_path):
    sweep = tmp_path / "sweep"
    for s in (0, 1):
        write_curve_run(sweep / f"crl-{s}", CurveRun(seed=s))
        write_curve_run(sweep / f"grpo-{s}", grpo(seed=s))
    assert [p.name for p in oc.expand([str(sweep)], oc.GRPO, "grpo_runs")] == ["grpo-0", "grpo-1"]
    assert [p.name for p in oc.expand([str(sweep / "crl-*")], oc.CRL, "crl_runs")] == ["crl-0", "crl-1"]
    with pytest.raises(CRLError, match="matches nothing"):
        oc.expand([str(sweep / "nope-*")], oc.CRL, "crl_runs")


def test_curves_command_end_to_end(tmp_path, capsys):
    for s in (0, 1):
        write_curve_run(tmp_path / f"crl-{s}", CurveRun(seed=s))
        write_curve_run(tmp_path / f"grpo-{s}", grpo(seed=s))
    out = tmp_path / "out"
    argv = [f"crl_runs=[{tmp_path}/crl-0,{tmp_path}/crl-1]", f"grpo_runs=[{tmp_path}/grpo-*]", f"out_dir={out}"]
    assert crl("curves", *argv, "n_boot=200") == 0
    stdout = capsys.readouterr().out
    assert "CRL recovers 50% of GRPO's gain" in stdout and "1536" in stdout and f"written: {out}" in stdout
    for name in ("curves.csv", "budgets.csv", "test.csv", "curves.json", "curves.png", "report.html"):
        assert (out / name).exists(), name
    points = pd.read_csv(out / "curves.csv")
    assert len(points) == 16 and set(points["method"]) == {"crl", "grpo"}
    data = json.loads((out / "curves.json").read_text())
    assert data["budgets"][-1]["share"] == pytest.approx(0.5) and data["budgets"][0]["share"] is None
    html = (out / "report.html").read_text()
    assert_self_contained(html)
    assert "CRL recovers 50%" in html and "curves.png" not in html  # the plot is inlined


def test_curves_command_bad_input_is_one_line(pair, tmp_path, capsys):
    other = write_curve_run(tmp_path / "grpo-compare", grpo(task="compare"))
    assert crl("curves", f"crl_runs=[{pair[0]}]", f"grpo_runs=[{other}]", f"out_dir={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crl: error: ") and "not comparable: task" in err[0]
    assert not (tmp_path / "out").exists()


def test_rl_compare_section_for_one_pair(pair, tmp_path):
    from crl.analysis.report.curves import SECTION, pair_section
    from crl.analysis.report.document import Report

    rep = Report("t")
    pair_section(rep, str(pair[0]), str(pair[1]), tmp_path / "out", FAST)
    text = rep.html()
    assert f">{SECTION}</h2>" in text and "CRL recovers 50% of GRPO&#x27;s gain" in text
    assert (tmp_path / "out" / "curves.json").exists()
    rep = Report("t")
    pair_section(rep, str(pair[0]), str(tmp_path / "nope"), tmp_path / "out2", FAST)
    assert "No learning curves: " in rep.html()  # a problem is a note in rl-compare's report, not a failure
