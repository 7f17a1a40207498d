"""Critic trajectories, calibration and the diagnosis (crl.analysis.offline.critic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline.critic import (
    CriticConfig,
    auroc,
    calibration,
    category_counts,
    critic_summary,
    diagnose,
    explained_variance,
    outcome_categories,
    value_trajectories,
)
from crl.errors import CRLError
from crl.logs.reader import load_run
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_outcome_categories_and_trajectories(run):
    cats = outcome_categories(run.episodes_of("eval:test"), run.episodes_of("baseline:none:test"))
    counts = category_counts(cats).set_index("category")["count"].to_dict()
    assert counts == {
        "correct->correct": 15,
        "incorrect->correct": 16,
        "correct->incorrect": 1,
        "incorrect->incorrect": 8,
    }
    assert cats.set_index("prompt_id").loc["p0", "category"] == "correct->incorrect"
    traj = value_trajectories(run.steps_of("eval:test"), cats, "step").set_index(["category", "x"])
    assert traj.loc[("incorrect->correct", 0), "mean"] == pytest.approx(0.7)
    assert traj.loc[("incorrect->correct", 4), "mean"] == pytest.approx(0.9)
    assert traj.loc[("incorrect->correct", 4), "n"] == 16
    rel = value_trajectories(run.steps_of("eval:test"), cats, "relative", CriticConfig(n_rel_bins=4))
    assert rel["x"].max() == 0.75
    with pytest.raises(CRLError, match="baseline"):
        outcome_categories(run.episodes_of("eval:test"), run.episodes_of("baseline:none:test").iloc[:0])


def test_calibration_explained_variance_and_auroc_on_known_numbers():
    v, r = np.array([0.1, 0.1, 0.9, 0.9]), np.array([0.0, 0.0, 1.0, 1.0])
    table, ece = calibration(v, r, 10)
    assert ece == pytest.approx(0.1)
    assert table["n"].tolist() == [2, 2] and table["mean_reward"].tolist() == [0.0, 1.0]
    assert explained_variance(v, r) == pytest.approx(1 - 0.01 / 0.25)
    assert auroc(v, r.astype(bool)) == 1.0 and auroc([0.2, 0.2], [True, False]) == 0.5
    assert np.isnan(explained_variance(v, np.ones(4)))
    # A constant 0.5 predictor is calibrated on average but explains nothing.
    assert explained_variance(np.full(4, 0.5), r) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "scores,labels,former",
    [  # AUROC of the former rank-sum implementation, before scipy's Mann-Whitney U replaced it
        ([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 1], 1.0),
        ([0.2, 0.2], [1, 0], 0.5),
        ([0.9, 0.1, 0.4, 0.4, 0.7], [0, 1, 1, 0, 1], 0.25),
        ([3, 1, 2], [1, 0, 1], 1.0),
        (
            [0.6, 0.3, 0.0, 0.0, 0.8, 0.9, 0.6, 0.7, 0.5, 0.9, 0.8, 0.0],
            [0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 0, 0],
            0.4444444444444444,
        ),
    ],
)
def test_auroc_on_scipy_gives_the_former_values(scores, labels, former):
    assert auroc(np.array(scores, float), np.array(labels, bool)) == pytest.approx(former, rel=1e-12, abs=0)


def test_auroc_is_nan_with_one_class():
    assert np.isnan(auroc([0.5, 0.4, 0.3], [True, True, True])) and np.isnan(auroc([0.1], [False]))


def test_critic_diagnosis_tells_policy_limit_from_value_error(run, tmp_path):
    good, table = critic_summary(run.steps_of("eval:test"), run.episodes_of("eval:test"))
    assert good.ev_all > 0.8 and good.auroc_first > 0.9 and good.diagnosis == "policy limit"
    assert table["n"].sum() == 200
    bad_run = load_run(write_run_dir(tmp_path / "c", SyntheticSpec(value_mode="constant")))
    bad, _ = critic_summary(bad_run.steps_of("eval:test"), bad_run.episodes_of("eval:test"))
    assert bad.ev_all == pytest.approx(0.0, abs=1e-9) and bad.diagnosis == "value-estimation error"
    assert diagnose(0.5, 0.05, 0.55)[0] == "inconclusive"
    # A poor critic is a flag only when advantages come from it (gae); critic-free runs report it as unused.
    assert diagnose(-1.1, 0.05, 0.55, advantage="gae")[0] == "value-estimation error"
    assert diagnose(-1.1, 0.05, 0.55, advantage="unsteered")[0] == "critic not used for learning"
    assert diagnose(0.5, 0.05, 0.9, advantage="unsteered")[0] == "policy limit"


def test_critic_reports_no_outcome_variation_instead_of_a_bad_critic():
    key = {"run": "r", "phase": "eval:test", "update": 1, "seed": 0}
    eps = pd.DataFrame([{**key, "episode": i, "prompt_id": f"p{i}", "reward": 1.0, "correct": True} for i in range(4)])
    steps = pd.DataFrame([{**key, "episode": i, "step": t, "value": 0.9} for i in range(4) for t in range(3)])
    summary, _ = critic_summary(steps, eps)
    assert summary.diagnosis == "no outcome variation" and np.isnan(summary.auroc_first)
