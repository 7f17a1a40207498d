"""Model diffing (`crl.analysis.diffing`) on tiny models whose weight change is known by construction:

- a planted change (layer L-1 adds c * d_j at every position) is found: feature j is in the top 3 of the shift and
  projection rankings, significantly raised, and the mean residual shift has cosine >= 0.9 with d_j;
- an untouched copy shows no shift: every CI holds 0, no feature passes the FDR bar, the global test's p is 1, the
  verdict says so;
- the gain-lost fraction is right on constructed cases: a tuned model whose whole gain comes from feature j loses
  ~100% of it when j is clamped to its base values (and steering the base model with j recovers ~100%); one whose
  gain comes half from j and half from an equivalent feature k loses ~50%.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from crl.analysis.diffing import causal, concordance, diff, forward, rankings, verdict
from crl.analysis.diffing.diff import CRLUsage, DiffResult, diff_models, read_result, write_result
from crl.analysis.offline import agreement, stats
from crl.errors import CRLError
from tests.analysis.diffing.conftest import J
from tests.analysis.diffing.world import FAST, base_model, control, crl_steps, linear_sae, planted_task, with_bias


def test_a_planted_direction_is_recovered(planted, world):
    sae = world[3]
    table = planted.features
    for ranking in ("shift", "projection"):
        assert J in rankings.top(table, ranking, 3), ranking
    d_j = sae.directions(unit=True)[J].double().numpy()
    assert rankings.cosine(planted.delta, d_j) >= 0.9
    row = table.set_index("feature").loc[J]
    assert row["shift"] > 0 and row["shift_lo"] > 0 and row["shift_q"] < 0.05
    assert planted.summary["shift"]["delta_p"] < 0.05
    assert planted.verdict[0].startswith("GRPO moved the residual at layer 1")


def test_an_untouched_copy_shows_no_shift(unchanged):
    table, s = unchanged.features, unchanged.summary
    assert s["shift"]["delta_norm"] == 0 and s["shift"]["delta_p"] == 1.0
    assert (table["shift_lo"] <= 0).all() and (table["shift_hi"] >= 0).all()
    assert (table["shift_p"] == 1.0).all() and not (table["shift_q"] < 0.05).any()
    gain = s["gain"]
    assert gain["acc_diff"] == 0 and gain["acc_lo"] <= 0 <= gain["acc_hi"] and gain["mcnemar_p"] == 1.0
    assert s["side_effects"]["kl_control_mean"] == pytest.approx(0, abs=1e-6)
    assert s["fit"]["ok"]
    assert unchanged.verdict[0].startswith("GRPO did not measurably change the residual")
    # no gain, so no share of it is interpreted
    assert any("not interpreted" in line for line in unchanged.verdict)


@pytest.fixture(scope="module")
def linear_world(one_thread):
    """Class-0 prompts only (gold ' A' everywhere), so a constant direction can carry a real gain."""
    base = base_model()
    task = planted_task(96)
    examples = [e for e in task.load("test") if e.meta["cls"] == 0]
    sae, norm = linear_sae(base, task, examples, j=5, k=9)
    return base, task, examples, sae, norm


def _shares(world, vec: torch.Tensor, crl_picks: dict[int, int]) -> DiffResult:
    base, task, examples, sae, _ = world
    tuned = with_bias(base, 1, vec)  # the SAE's own layer: the shift at the hook is exactly vec
    steps = crl_steps(crl_picks, 40)
    return diff_models(base, tuned, sae, task, examples, control(base), CRLUsage(steps, "relative"), cfg=FAST)


def _row(result: DiffResult, name: str, k: int | None = None):
    t = result.causal
    sel = t[t["intervention"] == name]
    if k is not None:
        sel = sel[sel["k"] == k]
    assert len(sel) == 1, (name, k, t)
    return sel.iloc[0]


def test_clamping_the_feature_that_carries_the_whole_gain_loses_all_of_it(linear_world):
    _, _, _, sae, norm = linear_world
    d = sae.directions()
    res = _shares(linear_world, 0.1 * norm * d[5], {5: 20, 3: 2})
    assert res.summary["gain"]["margin_diff"] > 0 and res.summary["gain"]["margin_p"] < 0.05
    clamp = _row(res, "clamp_crl", 1)
    assert clamp["features"] == "5"
    assert clamp["share_margin"] == pytest.approx(1.0, abs=0.01)
    assert clamp["share_margin_lo"] <= clamp["share_margin"] <= clamp["share_margin_hi"]
    assert _row(res, "clamp_crl", 2)["share_margin"] == pytest.approx(1.0, abs=0.01)  # feature 3 did not move
    assert _row(res, "steer_moved", 1)["features"] == "5"
    assert _row(res, "steer_moved", 1)["share_margin"] == pytest.approx(1.0, abs=0.01)
    assert _row(res, "patch_all")["share_margin"] == pytest.approx(1.0, abs=1e-3)
    assert _row(res, "patch_last")["share_margin"] == pytest.approx(1.0, abs=1e-3)
    # the null draws ran: random density-matched features rescaled to the same norm
    assert _row(res, "clamp_crl", 1)["n_null"] == FAST.n_causal_null
    # CRL picked the feature GRPO moved: top overlap, the right sign, its steering vector along the shift
    ov = res.overlap.set_index(["ranking", "k"])
    assert ov.loc[("shift", 1), "overlap"] == 1.0
    assert res.agreement.set_index("ranking").loc["shift", "sign_agree"] == 1.0
    assert res.summary["steering_cosine"]["cos"] > 0.9


def test_clamping_one_of_two_equal_features_loses_half_the_gain(linear_world):
    _, _, _, sae, norm = linear_world
    d = sae.directions()
    res = _shares(linear_world, 0.1 * norm * (d[5] + d[9]), {5: 20})
    clamp = _row(res, "clamp_crl", 1)
    assert clamp["share_margin"] == pytest.approx(0.5, abs=0.05)
    assert clamp["share_margin_lo"] < 0.55 and clamp["share_margin_hi"] > 0.45
    assert _row(res, "steer_moved", 1)["share_margin"] == pytest.approx(0.5, abs=0.05)
    both = _row(res, "clamp_moved", 2)
    assert set(both["features"].split(", ")) == {"5", "9"}
    assert both["share_margin"] == pytest.approx(1.0, abs=0.01)


def test_written_tables_read_back(planted, tmp_path):
    paths = write_result(planted, tmp_path)
    assert {p.name for p in paths} >= {"features.csv", "causal.csv", diff.SUMMARY_FILE}
    back = read_result(tmp_path)
    assert back.verdict == planted.verdict
    assert back.features["shift"].to_numpy() == pytest.approx(planted.features["shift"].to_numpy())
    with pytest.raises(CRLError, match="no rl_compare.json"):
        read_result(tmp_path / "nothing")


def test_models_that_are_not_a_pair_are_one_line_errors(world):
    base, task, examples, sae = world
    other = base_model()
    other.d_model = 32
    with pytest.raises(CRLError, match="not a fine-tune of the base model"):
        diff_models(base, other, sae, task, examples, control(base), cfg=FAST)
    with pytest.raises(CRLError, match="ks="):
        diff_models(base, base, sae, task, examples, control(base), cfg=diff.DiffConfig(ks=[0]))


def test_answer_options_of_the_planted_task_are_its_targets(world):
    base, task, examples, _ = world
    texts, special, opts = forward.task_inputs(task, base, examples)
    assert not special or special is True
    assert opts is not None and opts.ids.shape == (len(examples), 2)
    assert opts.letters[0] == ["A", "B"]
    assert (opts.gold == np.array([e.meta["cls"] for e in examples])).all()


@pytest.mark.parametrize(
    "module", [forward, rankings, concordance, causal, verdict, stats, agreement], ids=lambda m: m.__name__
)
def test_doctests(module):
    assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_a_free_form_task_gets_shift_and_concordance_but_no_causal_checks(world, tmp_path):
    from crl.analysis.report.cards import FeatureRefs
    from crl.analysis.report.diffing import diffing_report
    from crl.config import TaskConfig
    from crl.envs.tasks.registry import make_task

    base, _, _, sae = world
    task = make_task(TaskConfig(name="arith", n_train=8, n_val=8, n_test=16))
    tuned = with_bias(base, 0, 0.5 * sae.directions(unit=True)[J])
    steps = crl_steps({J: 5}, 16)
    res = diff_models(base, tuned, sae, task, task.load("test"), control(base), CRLUsage(steps, "raw"), cfg=FAST)
    assert res.summary["gain"] is None and res.causal is None
    assert res.features["attribution"].isna().all() and J in rankings.top(res.features, "shift", 3)
    assert set(res.agreement["ranking"]) == {"shift", "projection"}
    assert any("no answer options" in line for line in res.verdict)
    assert "not available (the task has no answer options)" in diffing_report(res, FeatureRefs(), tmp_path).read_text()
