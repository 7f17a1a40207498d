"""Concordance of CRL's usage with GRPO's moved features (`crl.analysis.diffing.concordance`), on synthetic tables
(torch-free): a CRL run that picks exactly the moved features, with the right signs, beats the density-matched
null on overlap@k, sign agreement and the steering cosine; one that picks other features of the same densities does
not; suppressing the raised features is sign disagreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crl.analysis.diffing import concordance, rankings
from crl.analysis.offline.agreement import DensityMatcher
from crl.errors import CRLError
from crl.logs.schema import NO_STEER

D_SAE, D_MODEL, N = 500, 16, 60
MOVED = list(range(10, 20))  # raised by GRPO, in the densest decile


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    density = rng.uniform(0.0, 0.5, D_SAE)
    density[MOVED] = rng.uniform(0.9, 1.0, len(MOVED))
    decoder = rng.normal(size=(D_SAE, D_MODEL))
    a_base = rng.exponential(1.0, size=(N, D_SAE))
    a_tuned = a_base + rng.normal(0, 0.05, size=(N, D_SAE))
    a_tuned[:, MOVED] += np.linspace(2.0, 1.0, len(MOVED))
    shift = (a_tuned - a_base).mean(0)
    delta = decoder.T @ shift
    table = rankings.feature_table(a_base, a_tuned, decoder, delta)
    return table, decoder, delta, DensityMatcher(density)


def steps_of(picks: dict[int, int], sign: float = 1.0, decisions: int = 200) -> pd.DataFrame:
    feats = [f for f, n in picks.items() for _ in range(n)]
    feats += [NO_STEER] * (decisions - len(feats))
    return pd.DataFrame({"feature": feats, "coef": [0.0 if f == NO_STEER else sign for f in feats], "resid_norm": 1.0})


def test_crl_on_the_moved_features_beats_the_null(world):
    table, decoder, delta, matcher = world
    usage = concordance.crl_usage(steps_of({f: 20 - i for i, f in enumerate(MOVED)}))
    assert rankings.top(table, "shift", 10) == MOVED
    ov = concordance.overlap_table(usage, table, matcher, [5, 10, 20], n_null=200).set_index(["ranking", "k"])
    assert ov.loc[("shift", 10), "overlap"] == 1.0
    assert ov.loc[("shift", 10), "null_mean"] < 0.5 and ov.loc[("shift", 10), "null_p"] < 0.01
    assert ov.loc[("shift", 20), "n_crl"] == 10  # CRL used 10 features: C_20 is all of them
    assert "attribution" not in set(ov.index.get_level_values(0))  # no gradients, no attribution ranking
    ag = concordance.agreement_table(usage, table, 20).set_index("ranking")
    assert ag.loc["shift", "sign_agree"] == 1.0 and ag.loc["shift", "n_signed"] == 10
    assert ag.loc["shift", "sign_p"] < 0.01 and ag.loc["shift", "tau_b"] > 0
    cos = concordance.steering_cosine(steps_of({f: 20 for f in MOVED}), decoder, "raw", delta, matcher, n_null=200)
    assert cos["cos"] > 0.9 and cos["null_p"] < 0.01 and cos["null_mean"] < cos["cos"]


def test_crl_on_other_features_is_chance(world):
    table, decoder, delta, matcher = world
    others = [f for f in range(100, 500) if f not in MOVED][:10]
    usage = concordance.crl_usage(steps_of({f: 5 for f in others}))
    ov = concordance.overlap_table(usage, table, matcher, [10], n_null=200).set_index(["ranking", "k"])
    assert ov.loc[("shift", 10), "overlap"] == 0.0 and ov.loc[("shift", 10), "null_p"] == 1.0


def test_suppressing_raised_features_is_sign_disagreement(world):
    table, *_ = world
    usage = concordance.crl_usage(steps_of({f: 5 for f in MOVED}, sign=-1.0))
    assert (usage["net"] == -5).all()
    ag = concordance.agreement_table(usage, table, 10).set_index("ranking")
    assert ag.loc["shift", "sign_agree"] == 0.0 and ag.loc["shift", "sign_p"] == 1.0


def test_a_run_without_eval_rows_is_one_line():
    with pytest.raises(CRLError, match="no eval intervention rows"):
        concordance.crl_usage(pd.DataFrame(columns=["feature", "coef"]))
