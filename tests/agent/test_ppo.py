"""PPO pieces: GAE and group-relative advantages over token steps, and the agent adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl.agent.policy import ActorCritic
from crl.agent.ppo import PolicyAgent, compute_advantages
from crl.config import PolicyConfig, PPOConfig
from crl.envs.rollout import Episode
from crl.envs.tasks.base import Example


def _episode(pid: str, reward: float, values: list[float]) -> Episode:
    steps = [{"value": v} for v in values]
    return Episode(Example(pid, "q", "a"), "c", reward, reward > 0, True, "eos", steps)


def test_gae_with_terminal_reward():
    ep = _episode("p", 1.0, [0.2, 0.5, 0.9])
    (adv,), (ret,) = compute_advantages([ep], PPOConfig(gamma=1.0, gae_lambda=1.0))
    torch.testing.assert_close(adv, torch.tensor([0.8, 0.5, 0.1]))  # lambda = 1: reward - value
    torch.testing.assert_close(ret, torch.ones(3))
    (adv,), _ = compute_advantages([ep], PPOConfig(gamma=1.0, gae_lambda=0.0))
    torch.testing.assert_close(adv, torch.tensor([0.3, 0.4, 0.1]))  # lambda = 0: one-step TD errors


def test_group_relative_advantages():
    eps = [_episode("p", 1.0, [0.0, 0.0]), _episode("p", 0.0, [0.3]), _episode("q", 1.0, [0.5])]
    advs, rets = compute_advantages(eps, PPOConfig(advantage="group"))
    assert [a.tolist() for a in advs] == [[0.5, 0.5], [-0.5], [0.0]]
    assert [r.tolist() for r in rets] == [[1.0, 1.0], [0.0], [1.0]]


@pytest.mark.parametrize("greedy", [True, False])
def test_agent_reports_logprob_value_and_alternatives(greedy):
    torch.manual_seed(0)
    net = ActorCritic(8, torch.randn(6, 8), allow_noop=True, cfg=PolicyConfig(hidden=16))
    obs = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    mask = np.ones((3, 7), dtype=bool)
    actions, extras = PolicyAgent(net, greedy=greedy, n_alternatives=2).act(obs, {"action_mask": mask})
    assert actions.shape == (3,) and extras["logprob"].shape == (3,) and extras["value"].shape == (3,)
    for a, alts in zip(actions.tolist(), extras["top_alternatives"], strict=True):
        assert len(alts) == 2 and a not in alts
    if greedy:
        logits = net.logits(torch.from_numpy(obs), torch.from_numpy(mask))
        assert actions.tolist() == logits.argmax(-1).tolist()
