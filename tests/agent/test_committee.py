"""The seed committee (crl/agent/committee.py) on real policy networks whose preferences are planted: it steers with an
action only where the quorum of members picked that (feature, level), per decision; members that order their levels
otherwise are compared by identity, not index; a member of a narrower masking=fixed list picks among its own
features; numpy in (the env's host mode) and tensors in (its device mode) give the same decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl.agent.committee import Committee, Member, quorum_size
from crl.agent.policy import ActorCritic
from crl.agent.ppo import PolicyAgent
from crl.config import PolicyConfig

pytestmark = pytest.mark.usefixtures("one_thread")

D_MODEL, D_SAE = 8, 6
LEVELS = [1.0, -1.0]
NOOP = D_SAE * len(LEVELS)


def _member(prefs: list[int], level: int, levels: list[float] = LEVELS, features: list[int] | None = None) -> Member:
    """A greedy member whose choice does not depend on the residual: the valid feature first in `prefs`, at its level
    index `level`, never the no-op."""
    net = ActorCritic(D_MODEL, torch.randn(D_SAE, D_MODEL), True, PolicyConfig(hidden=8, head="dense"), len(levels))
    bias = torch.full((D_SAE,), -20.0)
    bias[prefs] = torch.arange(len(prefs), 0, -1, dtype=torch.float) * 5  # the first preferred most
    with torch.no_grad():
        for head in (net.actor, net.level_head, net.noop_head):
            head[-1].weight.zero_()
        net.actor[-1].bias.copy_(bias)
        net.level_head[-1].bias.copy_(torch.tensor([5.0, -5.0] if level == 0 else [-5.0, 5.0]))
        net.noop_head[-1].bias.fill_(-50.0)
    return Member(PolicyAgent(net, greedy=True, abstain=False), levels, features)


def _mask(n: int, masked: dict[int, list[int]] | None = None) -> np.ndarray:
    """The env's mask (n, levels * d_sae + 1): every action, but `masked` (row -> features) at every level."""
    m = np.ones((n, NOOP + 1), dtype=bool)
    for row, feats in (masked or {}).items():
        for f in feats:
            m[row, [lv * D_SAE + f for lv in range(len(LEVELS))]] = False
    return m


def _act(committee: Committee, mask: np.ndarray) -> tuple[np.ndarray, dict]:
    obs = np.random.default_rng(0).normal(size=(len(mask), D_MODEL)).astype(np.float32)
    host = committee.act(obs, {"action_mask": mask.copy()})
    dev = committee.act(torch.from_numpy(obs), {"action_mask": torch.from_numpy(mask.copy())})
    assert isinstance(dev[0], torch.Tensor) and dev[0].tolist() == host[0].tolist()  # the device path decides alike
    assert {k: v.tolist() for k, v in dev[1].items()} == {k: v.tolist() for k, v in host[1].items()}
    return host


def test_the_committee_steers_per_decision_only_where_all_members_agree():
    # both prefer feature 2; with 2 masked (row 1) one falls back to 4, the other to 1
    committee = Committee([_member([2, 4], 0), _member([2, 1], 0)], LEVELS, D_SAE, quorum_size("all", 2))
    actions, extras = _act(committee, _mask(2, {1: [2]}))
    assert actions.tolist() == [2, NOOP]  # 2 amplified (level index 0), then no steering
    assert extras["agreed"].tolist() == [2, 1] and extras["abstained"].tolist() == [False, True]
    assert extras["votes"].tolist() == [[2, 2], [4, 1]]
    assert (
        committee.describe(2) == "2@+1"
        and committee.describe(D_SAE + 2) == "2@-1"
        and committee.describe(NOOP) == "none"
    )


def test_a_majority_takes_the_two_of_three_action_and_all_does_not():
    members = [_member([3], 1), _member([5], 0), _member([3], 1)]
    actions, extras = _act(Committee(members, LEVELS, D_SAE, quorum_size("majority", 3)), _mask(3))
    assert actions.tolist() == [D_SAE + 3] * 3 and extras["agreed"].tolist() == [2] * 3  # 3 suppressed
    actions, extras = _act(Committee(members, LEVELS, D_SAE, quorum_size("all", 3)), _mask(3))
    assert actions.tolist() == [NOOP] * 3 and extras["abstained"].all()


def test_members_are_compared_by_feature_and_level_not_by_index():
    rev = [-1.0, 1.0]  # this member's index 0 is suppression
    same = Committee([_member([2], 0), _member([2], 1, rev)], LEVELS, D_SAE, 2)  # both amplify 2
    actions, extras = _act(same, _mask(2, {1: [4]}))
    assert actions.tolist() == [2, 2] and extras["votes"].tolist() == [[2, 2], [2, 2]]
    other = Committee([_member([2], 0), _member([2], 0, rev)], LEVELS, D_SAE, 2)  # index 2 in both: +1 and -1
    actions, extras = _act(other, _mask(1))
    assert actions.tolist() == [NOOP] and extras["votes"].tolist() == [[2, D_SAE + 2]]
    # the other member's mask is its own layout: feature 2 masked at every level is masked for it too
    actions, extras = _act(
        Committee([_member([2, 4], 0), _member([2, 4], 1, rev)], LEVELS, D_SAE, 2), _mask(1, {0: [2]})
    )
    assert actions.tolist() == [4]


def test_a_member_of_a_narrower_fixed_list_picks_among_its_own_features():
    # the env offers the union {2, 4}; the second member was trained on [4] only, so it never picks 2
    members = [_member([2, 4], 0, features=[2, 4]), _member([2, 4], 0, features=[4])]
    actions, extras = _act(Committee(members, LEVELS, D_SAE, 2), _mask(1))
    assert extras["votes"].tolist() == [[2, 4]] and actions.tolist() == [NOOP]


def test_a_quorum_of_half_or_less_and_a_lone_member_are_refused():
    with pytest.raises(ValueError, match="more than half"):
        Committee([_member([2], 0)] * 4, LEVELS, D_SAE, 2)
    with pytest.raises(ValueError, match="two members or more"):
        Committee([_member([2], 0)], LEVELS, D_SAE, 1)
    with pytest.raises(ValueError, match="unknown quorum"):
        quorum_size("most", 3)
    assert (quorum_size("all", 3), quorum_size("majority", 3), quorum_size("majority", 4)) == (3, 2, 3)
