"""Forced-feature effects, side effects (KL on neutral prompts) and the coefficient sweep."""

from __future__ import annotations

import pytest

from crl.analysis.offline.stats import StatsConfig
from crl.analysis.replay.effects import (
    EffectConfig,
    coef_sweep,
    forced_feature_effects,
    side_effects,
    write_coef_sweep,
)
from crl.analysis.replay.runner import episode_frames, rollout
from crl.errors import CRLError
from crl.logs.reader import load_run
from tests.analysis.replay.planted import D_SAE, PLANTED, CuePolicy
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_forced_effects_side_effects_and_coef_sweep(comps, tmp_path):
    _, steps = episode_frames(rollout(comps, comps.splits["test"], CuePolicy(comps)), "eval:test")
    eff = forced_feature_effects(comps, steps, EffectConfig(), StatsConfig(n_boot=200)).set_index("feature")
    assert set(eff.index) == set(PLANTED)
    assert eff.loc[5, "effect"] == 1.0 and eff.loc[5, "none_acc"] == 0.0 and eff.loc[5, "n_prompts"] == 4
    assert eff.loc[5, "effect_mcnemar_p"] == pytest.approx(2 / 16)

    side = side_effects(comps, [5, 3], coef=4.0).set_index("feature")
    assert (side["kl_mean"] > 0.01).all() and side.loc[5, "top1_changed"] > 0.5
    zero = side_effects(comps, [5], coef=0.0, positions="all")
    assert zero.loc[0, "kl_mean"] == pytest.approx(0.0, abs=1e-6) and zero.loc[0, "top1_changed"] == 0.0
    with pytest.raises(CRLError, match="out of range"):
        side_effects(comps, [D_SAE])

    sweep = coef_sweep(comps, CuePolicy(comps), [4.0], split="val")
    assert [s["coef"] for s in sweep] == [0.0, 4.0]
    assert sweep[0]["accuracy"] == 0.0 and sweep[1]["accuracy"] == 1.0
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    write_coef_sweep(d, sweep)
    assert load_run(d).summary["coef_sweep"] == sweep
