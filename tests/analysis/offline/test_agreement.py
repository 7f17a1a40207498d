"""Seed agreement: groups of features that do the same thing, on synthetic runs with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline.agreement import AgreementConfig, group_features, seed_agreement, used_features
from crl.logs.schema import NO_STEER


def _steps(choices: list[tuple[int, float]]) -> pd.DataFrame:
    """One decision per episode: (feature, signed coef)."""
    return pd.DataFrame({"feature": [f for f, _ in choices], "coef": [c for _, c in choices]})


def _decoder(d_sae: int = 64, d: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((d_sae, d)).astype(np.float32)


def test_same_direction_under_different_ids_is_one_group():
    dec = _decoder()
    dec[7] = 2.5 * dec[3]  # feature 7 is feature 3's direction (another scale)
    a = _steps([(3, -1.0)] * 30 + [(NO_STEER, 0.0)] * 70)
    b = _steps([(7, -1.0)] * 25 + [(NO_STEER, 0.0)] * 75)
    density = np.full(64, 0.01)
    res = seed_agreement({"s0": a, "s1": b}, dec, density, cfg=AgreementConfig(n_null=50))
    assert res.pairs.loc[0, "feature_jaccard"] == 0.0
    assert res.pairs.loc[0, "group_jaccard"] == 1.0
    assert res.groups.loc[0, "n_runs"] == 2 and bool(res.groups.loc[0, "headline"])
    assert res.null_mean < 0.2 and res.null_p < 0.05
    assert "2/2 runs" in res.headline


def test_opposite_sign_is_not_the_same_intervention():
    dec = _decoder()
    groups = group_features([(3, -1), (3, 1)], dec)
    assert groups[(3, -1)] != groups[(3, 1)]


def test_unrelated_features_stay_apart_unless_their_effects_match():
    dec = _decoder()
    nodes = [(1, -1), (2, -1)]
    assert len(set(group_features(nodes, dec).values())) == 2
    effects = {(1, -1): np.array([-0.8, 0.8]), (2, -1): np.array([-0.5, 0.55])}
    assert len(set(group_features(nodes, dec, effects).values())) == 1
    weak = {(1, -1): np.array([-0.01, 0.01]), (2, -1): np.array([-0.01, 0.01])}  # below min_effect: no evidence
    assert len(set(group_features(nodes, dec, weak).values())) == 2


def test_used_features_threshold_and_sign():
    steps = _steps([(5, 1.0)] * 10 + [(5, -1.0)] * 1 + [(NO_STEER, 0.0)] * 89)
    u = used_features(steps, AgreementConfig(min_share=0.02))
    assert u[["feature", "sign"]].values.tolist() == [[5, 1]]
    assert u["share"].iloc[0] == pytest.approx(0.10)


def test_disagreeing_seeds_get_no_headline():
    dec = _decoder()
    runs = {f"s{i}": _steps([(10 + i, 1.0)] * 50 + [(NO_STEER, 0.0)] * 50) for i in range(3)}
    res = seed_agreement(runs, dec, np.full(64, 0.01), cfg=AgreementConfig(n_null=20))
    assert not res.groups["headline"].any()
    assert res.group_jaccard == 0.0
    assert res.headline.startswith("no feature group")
