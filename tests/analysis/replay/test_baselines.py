"""Baselines on the held-out split: none, random, static (selected), corr (skipped without variance)."""

from __future__ import annotations

import numpy as np
import pytest

from crl.analysis.offline.stats import StatsConfig, method_table
from crl.analysis.replay.baselines import (
    BaselineConfig,
    BaselineRows,
    correlation_ranking,
    run_baselines,
    write_baselines,
    write_rows,
)
from crl.analysis.replay.runner import base_id, episode_frames, rollout
from crl.errors import CRLError
from crl.logs.reader import load_run
from tests.analysis.replay.planted import CuePolicy, check_val_outcomes
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_baselines_select_a_planted_static_feature_and_skip_corr_without_reward_variance(comps):
    cfg = BaselineConfig(seeds=[0, 1, 2], n_act=2, coef_grid=[2.0, 4.0], methods=["none", "random", "static", "corr"])
    res = run_baselines(comps, cfg, usage_features=[9, 5])
    assert res.chosen["static_feature"] == 5  # 5 and 9 tie at 50% on train; the lower id wins
    coef_rows = res.selection[res.selection["stage"] == "coef@val"]
    assert coef_rows["accuracy"].tolist() == [0.5, 0.5] and res.chosen["static_coef"] == 2.0  # tie: smaller
    assert res.chosen["static_candidates"][:2] == [9, 5]
    # budget: one unsteered pass to rank candidates (8 train prompts), 3 candidates x 8, 2 coefficients x 8 (val)
    assert res.selection["rollouts"].tolist() == [8] * 6 and res.budgets == {"none": 0, "random": 0, "static": 48}
    assert any("corr skipped" in n for n in res.notes) and "corr_feature" not in res.chosen
    check_val_outcomes(res.selection, comps.splits["val"], 8)
    assert set(res.episodes) == {"baseline:none:test", "baseline:random:test", "baseline:static:test"}
    assert sorted(set(res.seeds["baseline:random:test"])) == [0, 1, 2]
    assert set(res.seeds["baseline:none:test"]) == {0}  # greedy decoding: deterministic methods run once
    eps, _ = res.frames()
    static = eps[eps["phase"] == "baseline:static:test"]
    assert static["correct"].mean() == 0.5  # one fixed feature answers exactly one of the two classes
    crl, _ = episode_frames(rollout(comps, comps.splits["test"], CuePolicy(comps)), "eval:test")
    methods = {"crl": crl, **{p.split(":")[1]: g for p, g in eps.groupby("phase")}}
    mt = method_table(methods, "crl", StatsConfig(n_boot=200)).set_index("method")
    assert mt.loc["none", "diff_vs_ref"] == 1.0 and mt.loc["static", "diff_vs_ref"] == 0.5
    assert mt.loc["random", "n_seeds"] == 3
    with pytest.raises(CRLError, match="unknown baseline"):
        run_baselines(comps, BaselineConfig(methods=["nope"]))


def test_correlation_ranking_finds_the_rewarded_feature():
    rng = np.random.default_rng(0)
    acts = rng.random((40, 6))
    rewards = (acts[:, 4] > 0.5).astype(float)
    acts[:, 2] = 1.0  # constant: no correlation defined
    r = correlation_ranking(acts, rewards)
    assert int(np.nanargmax(r)) == 4 and np.isnan(r[2])


def test_write_baselines_appends_new_phases_only(comps, tmp_path):
    res = run_baselines(comps, BaselineConfig(methods=["none", "random"], seeds=[0, 1]))
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4, random_seeds=()))
    written = write_baselines(d, res)
    assert written == ["baseline:random:test"]  # the run already has baseline:none:test
    run = load_run(d)
    rnd = run.episodes_of("baseline:random:test")
    assert sorted(set(rnd["seed"])) == [0, 1] and len(rnd) == 16
    assert len(run.steps_of("baseline:random:test")) == sum(len(e.steps) for e in res.episodes["baseline:random:test"])


def test_static_selection_tries_every_coefficient_level(comps):
    """With coef=-4 and levels [1, -1], only the second level amplifies a planted feature: static must find it."""
    import dataclasses

    from crl.config import SteeringConfig

    flipped = dataclasses.replace(comps, steering=SteeringConfig(coef=-4.0, coef_levels=[1.0, -1.0]))
    res = run_baselines(flipped, BaselineConfig(seeds=[0], methods=["static"], n_act=0), usage_features=[9, 5])
    feature_rows = res.selection[res.selection["stage"] == "feature@train"]
    assert sorted(set(feature_rows["coef"])) == [-4.0, 4.0]  # both signs scored for every candidate
    assert res.chosen["static_feature"] == 5 and res.chosen["static_coef"] > 0  # the amplifying sign
    eps, _ = res.frames()
    assert eps["correct"].mean() == 0.5  # one planted feature answers exactly one of the two classes


@pytest.fixture(scope="module")
def val_runs(comps):
    """Static and prompting with a small train cap: the whole val split (None), then the first 5 val prompts."""
    cfg = dict(seeds=[0], methods=["static", "prompting"], n_act=1, coef_grid=[2.0, 4.0], max_select_prompts=3)
    return {k: run_baselines(comps, BaselineConfig(**cfg, max_val_prompts=k), usage_features=[5]) for k in (None, 5)}


def test_every_val_row_scores_the_whole_val_split_unless_capped_and_carries_its_outcomes(comps, val_runs):
    val = comps.splits["val"]
    for k, res in val_runs.items():
        n = len(val) if k is None else k
        sel = res.selection
        assert set(sel.loc[sel["stage"].str.endswith("@val"), "stage"]) == {"coef@val", "prompt@val"}
        check_val_outcomes(sel, val, n)
        assert (sel.loc[sel["stage"].str.endswith("@train"), "rollouts"] == 3).all()  # the train cap stays
    assert len(val_runs[None].selection) == len(val_runs[5].selection)


def test_write_rows_moves_the_outcomes_to_their_own_csv(comps, val_runs, tmp_path):
    import pandas as pd

    res = val_runs[None]
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4, random_seeds=()))
    rows = res.rows()
    write_rows(d, rows)
    assert any("outcomes" in r for r in rows.selection)  # the rows given are left whole
    sel = pd.read_csv(d / "analysis" / "baseline_selection.csv")
    outs = pd.read_csv(d / "analysis" / "baseline_val_outcomes.csv")
    assert "outcomes" not in sel.columns and list(outs.columns) == ["row", "prompt_id", "correct", "well_formed"]
    assert len(sel) == len(res.selection)
    assert set(outs["row"]) == set(np.flatnonzero(sel["stage"].str.endswith("@val")))  # rows are val-stage rows
    for row, g in outs.groupby("row"):
        assert len(g) == sel.loc[row, "rollouts"] and g["correct"].mean() == pytest.approx(sel.loc[row, "accuracy"])
        assert g["prompt_id"].astype(str).tolist() == [base_id(e.id) for e in comps.splits["val"]]
    # A selection without val rows removes the old outcomes, which would point into another table.
    write_rows(d, BaselineRows({}, [{"method": "static", "stage": "activations@train", "rollouts": 3}], {}))
    assert not (d / "analysis" / "baseline_val_outcomes.csv").exists()
