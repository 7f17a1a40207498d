"""Shared replay plumbing: rollouts through the environment, rebuilding a run's components and policy."""

from __future__ import annotations

import pytest
import torch

from crl.analysis.replay.runner import rollout
from crl.errors import CRLError
from tests.analysis.replay.planted import PLANTED, CuePolicy


def test_forcing_the_planted_feature_is_the_known_answer(comps):
    test = comps.splits["test"]
    none = rollout(comps, test, None)
    crl = rollout(comps, test, CuePolicy(comps))
    assert not any(e.correct for e in none) and all(e.correct for e in crl)
    assert [s["feature"] for s in crl[0].steps] == [PLANTED[test[0].meta["cls"]], -1]
    assert crl[0].steps[0]["top_alternatives"] == [PLANTED[1 - test[0].meta["cls"]], 3]


def test_load_policy_restores_the_saved_network(comps, tmp_path):
    from crl.agent.policy import ActorCritic
    from crl.analysis.replay.runner import load_components

    torch.manual_seed(1)
    net = ActorCritic(comps.lm.d_model, comps.sae.directions(), True, comps.policy)
    torch.save(net.state_dict(), tmp_path / "policy.pt")
    agent = comps.load_policy(tmp_path)
    obs = torch.randn(3, comps.lm.d_model)
    assert torch.allclose(agent.net.get_value(obs), net.get_value(obs))
    assert agent.greedy
    with pytest.raises(CRLError, match="neither policy.pt"):
        comps.load_policy(tmp_path / "empty")
    with pytest.raises(CRLError, match="no config.yaml"):
        load_components(tmp_path)


def test_action_ids_split_into_feature_and_level_and_read_with_their_sign(comps):
    """`action_parts` inverts `action_id` in the run's layout (level * d_sae + feature, the no-op last);
    `action_label` writes the feature with its level's sign, and the multiplier where two levels share a sign."""
    import dataclasses

    from crl.analysis.replay.runner import action_id, action_label, action_parts, noop_action
    from crl.config import SteeringConfig
    from crl.logs.schema import NO_STEER
    from tests.analysis.replay.planted import D_SAE

    def layout(levels, allow_noop=True):
        return dataclasses.replace(comps, steering=SteeringConfig(coef=4.0, coef_levels=levels, allow_noop=allow_noop))

    two = layout([1.0, -1.0])
    for a in range(2 * D_SAE + 1):
        f, level = action_parts(two, a)
        assert action_id(two, f, 4.0 * [1.0, -1.0][level] if level is not None else 0.0) == a
    assert [action_parts(two, a) for a in (3, D_SAE + 3, 2 * D_SAE)] == [(3, 0), (3, 1), (NO_STEER, None)]
    assert [action_label(two, a) for a in (3, D_SAE + 3, noop_action(two))] == ["+3", "−3", "no steer"]
    assert [action_label(comps, a) for a in (3, D_SAE)] == ["+3", "no steer"]  # one level: the no-op is d_sae
    assert action_label(layout([-1.0]), 3) == "−3"
    same_sign = layout([1.0, 2.0, -0.5])
    assert [action_label(same_sign, a) for a in (3, D_SAE + 3, 2 * D_SAE + 3)] == ["+3×1", "+3×2", "−3×0.5"]
    for bad in (-1, 2 * D_SAE + 1):
        with pytest.raises(CRLError, match="not one of the run's actions"):
            action_parts(two, bad)
    with pytest.raises(CRLError, match="not one of the run's actions"):
        action_parts(layout([1.0, -1.0], allow_noop=False), 2 * D_SAE)  # no no-op in this run
