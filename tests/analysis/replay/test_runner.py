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
