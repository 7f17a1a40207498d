"""PPO pieces: advantages (GAE, group, leave-one-out, unsteered baseline), the no-steer pulls, the update, the agent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl.agent.policy import MASK_FILL, ActionScores, ActorCritic
from crl.agent.ppo import PolicyAgent, compute_advantages, kl_to_no_steer, normalize, ppo_update
from crl.config import PolicyConfig, PPOConfig
from crl.envs.rollout import Episode
from crl.envs.tasks.base import Example


def _episode(pid: str, reward: float, values: list[float], features: list[int] | None = None) -> Episode:
    features = features or [-1] * len(values)
    steps = [{"value": v, "feature": f} for v, f in zip(values, features, strict=True)]
    return Episode(Example(pid, "q", "a"), "c", reward, reward > 0, True, "eos", steps)


def test_gae_with_terminal_reward():
    ep = _episode("p", 1.0, [0.2, 0.5, 0.9])
    (adv,), (ret,) = compute_advantages([ep], PPOConfig(advantage="gae", regularizer="none", gamma=1.0, gae_lambda=1.0))
    torch.testing.assert_close(adv, torch.tensor([0.8, 0.5, 0.1]))  # lambda = 1: reward - value
    torch.testing.assert_close(ret, torch.ones(3))
    (adv,), _ = compute_advantages([ep], PPOConfig(advantage="gae", regularizer="none", gamma=1.0, gae_lambda=0.0))
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


def test_alternatives_leave_out_masked_actions():
    # Known answer: the scores' top 4 hold masked actions (MASK_FILL), which are no alternatives; order is kept.
    agent = PolicyAgent.__new__(PolicyAgent)
    agent.k = 3
    logits = torch.tensor([[MASK_FILL, 2.0, MASK_FILL, 1.0, MASK_FILL], [MASK_FILL] * 4 + [0.5]])
    got = agent._alternatives(ActionScores(logits), torch.tensor([1, 4])).tolist()
    assert got == [[3, -1, -1], [-1, -1, -1]]  # row 0: only 3 is left besides the chosen 1; row 1: only the no-op
    ids = torch.tensor([[7, 9, -1, 12], [7, 9, -1, 12]])  # a compact row: padding (-1) and a masked candidate (9)
    logits = torch.tensor([[0.5, MASK_FILL, MASK_FILL, 1.0], [0.5, MASK_FILL, MASK_FILL, 1.0]])
    got = agent._alternatives(ActionScores(logits, ids), torch.tensor([12, 7])).tolist()
    assert got == [[7, -1, -1], [12, -1, -1]]


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("greedy", [True, False])
def test_two_valid_actions_give_one_alternative(greedy, on_device):
    # masking=fixed-like: 2 of 7 actions valid and k = 3 asked: the other valid one is the only alternative.
    torch.manual_seed(0)
    net = ActorCritic(8, torch.randn(6, 8), allow_noop=True, cfg=PolicyConfig(hidden=16))
    obs = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    mask = np.zeros((4, 7), dtype=bool)
    mask[:, [2, 5]] = True
    mask[3] = False
    mask[3, 6] = True  # a forced step: only the no-op
    agent = PolicyAgent(net, greedy=greedy, n_alternatives=3)
    if on_device:
        actions, extras = agent.act(torch.from_numpy(obs), {"action_mask": torch.from_numpy(mask)})
        alts = [[f for f in row if f >= 0] for row in extras["top_alternatives"].tolist()]  # -1 padded, as rollout
    else:
        actions, extras = agent.act(obs, {"action_mask": mask})
        alts = extras["top_alternatives"]
    actions = actions.tolist()
    assert all(a in (2, 5) for a in actions[:3]) and actions[3] == 6
    assert alts == [[7 - a] for a in actions[:3]] + [[]]


def test_leave_one_out_and_unsteered_baselines():
    eps = [_episode("p", 1.0, [0.0]), _episode("p", 0.0, [0.0]), _episode("p", 0.0, [0.0]), _episode("q", 1.0, [0.0])]
    loo, _ = compute_advantages(eps, PPOConfig(advantage="loo", group_size=3))
    assert [round(a.item(), 6) for a in loo] == [1.0, -0.5, -0.5, 0.0]  # r - mean(other samples of the prompt)
    unsteered = {"p": 0.0, "q": 1.0}
    adv, _ = compute_advantages(eps, PPOConfig(advantage="unsteered"), unsteered)
    assert [a.item() for a in adv] == [1.0, 0.0, 0.0, 0.0]  # only an outcome that steering changed counts
    with pytest.raises(ValueError, match="unsteered reward"):
        compute_advantages(eps, PPOConfig(advantage="unsteered"))


def test_steer_cost_is_paid_by_steered_decisions_only():
    ep = _episode("p", 1.0, [0.0, 0.0, 0.0], features=[5, -1, 7])
    cfg = PPOConfig(advantage="unsteered", regularizer="steer_cost", reg_coef=0.25)
    (adv,), _ = compute_advantages([ep], cfg, {"p": 0.0})
    torch.testing.assert_close(adv, torch.tensor([0.75, 1.0, 0.75]))
    # with the critic the cost is a per-token reward: lambda = 1 gives reward-to-go minus the value
    cfg = PPOConfig(advantage="gae", gamma=1.0, gae_lambda=1.0, regularizer="steer_cost", reg_coef=0.25)
    (adv,), _ = compute_advantages([ep], cfg)
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.75, 0.75]))


def test_kl_to_no_steer_matches_the_definition():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1], [1, 0, 1, 0, 1, 1]]).bool()
    logits = logits.masked_fill(~mask, -1e9)
    eps, noop = 0.1, 5
    k = mask.sum(-1, keepdim=True).float()
    ref = torch.where(mask, eps / k, torch.zeros(()))
    ref[:, noop] += 1 - eps
    p = torch.softmax(logits, -1)
    explicit = (p * (torch.log(p.clamp_min(1e-30)) - torch.log(ref.clamp_min(1e-30)))).where(mask, 0).sum(-1)
    torch.testing.assert_close(kl_to_no_steer(logits, mask, noop, eps), explicit)
    # the reference itself has zero KL; more steering mass has more
    at_ref = torch.log(ref.clamp_min(1e-30)).masked_fill(~mask, -1e9)
    torch.testing.assert_close(kl_to_no_steer(at_ref, mask, noop, eps), torch.zeros(4), atol=1e-5, rtol=0)


def test_scale_normalisation_keeps_zero_advantages_zero():
    adv = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])
    assert normalize(adv, "scale")[[0, 1, 4]].abs().max() == 0
    assert normalize(adv, "standardize")[0] != 0  # standardising moves "nothing changed" off zero
    assert torch.equal(normalize(adv, "none"), adv)


def test_forced_steps_are_not_decisions():
    torch.manual_seed(0)
    net = ActorCritic(8, torch.randn(6, 8), allow_noop=True, cfg=PolicyConfig(hidden=16))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ep = _episode("p", 1.0, [0.1, 0.2])
    ep.obs = torch.randn(2, 8)
    ep.masks = torch.zeros(2, 7, dtype=torch.bool)
    ep.masks[:, 6] = True  # only the no-op: both steps are forced
    ep.actions = torch.tensor([6, 6])
    for s in ep.steps:
        s["logprob"] = 0.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    out = ppo_update(net, opt, [ep], PPOConfig(advantage="gae"), torch.Generator().manual_seed(0))
    assert out["charts/decisions"] == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
