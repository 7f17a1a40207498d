"""Abstention (policy.abstain, crl/agent/policy.py): no steering on inputs far from the training sample, decisions
unchanged on inputs like it, the rule saved with the policy, and nothing added to the logs when it is off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl.agent.policy import ActorCritic
from crl.agent.ppo import PolicyAgent
from crl.config import ConfigError, PolicyConfig, TrainConfig, load
from crl.logs.schema import InterventionRow

D, D_SAE = 32, 6


def _net(abstain: str, seed: int = 0, **kw) -> ActorCritic:
    torch.manual_seed(seed)
    net = ActorCritic(D, torch.randn(D_SAE, D), True, PolicyConfig(hidden=16, abstain=abstain, **kw), n_levels=2)
    with torch.no_grad():  # a policy that always steers (feature 2, amplify) where it may
        net.feature_bias[2] = 50.0
        net.level_head[-1].bias.copy_(torch.tensor([5.0, -5.0]))
        net.noop_head[-1].bias.fill_(-50.0)
    return net


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train sample, val sample, far inputs): residual-like (a few huge dimensions), far = shifted 6 std."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(D)
    scale[:2] = 50.0
    train, val = torch.randn(512, D, generator=g) * scale, torch.randn(400, D, generator=g) * scale
    far = torch.randn(64, D, generator=g) * scale + 6.0 * scale
    return train, val, far


def _fit(net: ActorCritic) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    train, val, far = _data()
    net.set_obs_stats(train)
    net.fit_abstention(train, val)
    return train, val, far


def _act(agent: PolicyAgent, obs: torch.Tensor) -> tuple[np.ndarray, dict, np.ndarray]:
    mask = np.ones((len(obs), agent.net.n_actions), dtype=bool)
    info = {"action_mask": mask}
    actions, extras = agent.act(obs.numpy(), info)
    return actions, extras, info["action_mask"]


@pytest.mark.parametrize("kind", ["zscore", "knn"])
def test_far_inputs_are_forced_to_no_steering(kind):
    net = _net(kind)
    _, _, far = _fit(net)
    noop = net.n_actions - 1
    actions, extras, mask = _act(PolicyAgent(net, greedy=True), far)
    assert (actions == noop).all() and extras["abstained"].all()
    assert not mask[:, :noop].any() and mask[:, noop].all()  # stored as a forced step: PPO leaves it out
    assert (extras["logprob"] == 0).all()
    steered, extras_off, _ = _act(PolicyAgent(net, greedy=True, abstain=False), far)  # the ablation
    assert (steered == 2).all() and "abstained" not in extras_off


@pytest.mark.parametrize("kind", ["zscore", "knn"])
def test_in_distribution_decisions_are_unchanged(kind):
    net = _net(kind)
    _fit(net)
    g = torch.Generator().manual_seed(7)  # fresh draws of the training distribution
    scale = torch.ones(D)
    scale[:2] = 50.0
    fresh = torch.randn(1000, D, generator=g) * scale
    with_rule, extras, _ = _act(PolicyAgent(net, greedy=True), fresh)
    without, _, _ = _act(PolicyAgent(net, greedy=True, abstain=False), fresh)
    share = extras["abstained"].mean()
    assert share <= 0.03  # the threshold is val's 0.99 quantile: ~1% abstain by construction
    same = with_rule == without
    assert same[~extras["abstained"]].all() and same.mean() >= 0.97
    assert (without == 2).all()


def test_the_threshold_is_the_val_quantile_and_travels_with_the_policy():
    net = _net("knn", abstain_quantile=0.9, abstain_k=3)
    train, val, far = _fit(net)
    d = net.ood_distance(val)
    assert float(net.abstain_threshold) == pytest.approx(float(torch.quantile(d.double(), 0.9)), rel=1e-6)
    assert net.out_of_distribution(val).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert net.abstain_sample.shape == (512, D)
    fresh = _net("knn", seed=1, abstain_quantile=0.9, abstain_k=3)
    fresh.load_state_dict(net.state_dict())  # the sample's saved size, not the empty placeholder's
    assert torch.equal(fresh.out_of_distribution(far), net.out_of_distribution(far))
    assert torch.equal(fresh.ood_distance(val), d)


def test_an_unfitted_rule_never_abstains_and_off_adds_nothing():
    net = _net("zscore")
    _, _, far = _data()
    assert not net.out_of_distribution(far).any()  # threshold inf until fitted
    off = _net("off")
    assert not off.can_abstain and not any(k.startswith("abstain") for k in off.state_dict())
    _, extras, _ = _act(PolicyAgent(off, greedy=True), far)
    assert "abstained" not in extras
    no_noop = ActorCritic(D, torch.randn(D_SAE, D), False, PolicyConfig(hidden=8, abstain="zscore"))
    assert not no_noop.can_abstain


def test_rows_carry_abstained_only_when_the_rule_exists():
    kw = dict(
        run="r", phase="eval:test", update=0, episode=0, prompt_id="p", step=0, position=3, token_id=1, token="A",
        feature=-1, coef=0.0, logprob=0.0, value=0.0, feature_act=0.0, resid_norm=1.0,
    )  # fmt: skip
    assert "abstained" not in InterventionRow(**kw).to_dict()  # the rows of runs without the rule: as before
    assert InterventionRow(**kw, abstained=True).to_dict()["abstained"] is True
    assert InterventionRow(**kw, abstained=False).to_dict()["abstained"] is False


@pytest.mark.parametrize(
    "data,match",
    [
        ({"policy": {"abstain": "zscore", "obs_norm": "layer"}}, "policy.abstain=zscore is invalid: abstention"),
        ({"policy": {"abstain": "knn"}, "steering": {"allow_noop": False}}, "policy.abstain=knn is invalid"),
        ({"policy": {"abstain_quantile": 0}}, "policy.abstain_quantile=0.0 is invalid: out of range"),
    ],
)
def test_bad_abstention_settings_are_one_line(data, match):
    with pytest.raises(ConfigError, match=match):
        load(TrainConfig, data)
