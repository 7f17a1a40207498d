"""`PolicyAgent` on the device path: tensors in give tensors out with the same values as numpy in, and the top
alternatives computed on the device are the ones the list code gave."""

from __future__ import annotations

import numpy as np
import torch

from crl.agent.policy import ActionScores, ActorCritic
from crl.agent.ppo import PolicyAgent
from crl.config import PolicyConfig

D, D_SAE = 16, 8


def _reference(top: list[list[int]], picked: list[int], k: int) -> list[list[int]]:
    """The alternatives as the agent listed them before they moved to the device."""
    return [[int(f) for f in row if f not in (a, -1)][:k] for row, a in zip(top, picked, strict=True)]


def test_alternatives_match_the_list_code():
    g = torch.Generator().manual_seed(0)
    for n_actions, k in ((17, 3), (17, 1), (3, 3), (2, 5), (1, 3)):
        agent = PolicyAgent.__new__(PolicyAgent)
        agent.k = k
        for trial in range(20):
            logits = torch.randn(6, n_actions, generator=g)
            action = torch.randint(0, n_actions, (6,), generator=g)  # often outside the top k + 1
            ids = None
            if trial % 2:  # a compact row: columns name action ids, some of them padding (-1)
                ids = torch.randint(0, 50, (6, n_actions), generator=g)
                ids[:, ::3] = -1
                action = ids.gather(1, torch.randint(0, n_actions, (6, 1), generator=g)).squeeze(1)
            scores = ActionScores(logits, ids)
            kk = min(k + 1, n_actions)
            top = scores.actions(logits.topk(kk, dim=-1).indices).tolist()
            got = [[f for f in row if f >= 0] for row in agent._alternatives(scores, action).tolist()]
            assert got == _reference(top, action.tolist(), k), (n_actions, k, trial)


def test_tensors_in_give_the_numpy_paths_values():
    torch.manual_seed(0)
    cfg = PolicyConfig(hidden=8, abstain="zscore", abstain_quantile=0.5, noop_init_bias=0.0)
    net = ActorCritic(D, torch.randn(D_SAE, D), True, cfg, n_levels=2)
    sample = torch.randn(64, D)
    net.set_obs_stats(sample)
    net.fit_abstention(sample, sample)
    agent = PolicyAgent(net)
    obs = torch.randn(12, D)
    mask = torch.rand(12, net.n_actions, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, -1] = True
    info_np, info_t = {"action_mask": mask.numpy().copy()}, {"action_mask": mask.clone()}
    torch.manual_seed(5)
    a_np, ex_np = agent.act(obs.numpy(), info_np)
    torch.manual_seed(5)
    a_t, ex_t = agent.act(obs, info_t)
    assert isinstance(a_np, np.ndarray) and isinstance(a_t, torch.Tensor)
    assert a_t.tolist() == a_np.tolist()
    assert ex_t["logprob"].tolist() == ex_np["logprob"].tolist() and ex_t["value"].tolist() == ex_np["value"].tolist()
    assert ex_t["abstained"].tolist() == ex_np["abstained"].tolist() and 0 < ex_np["abstained"].sum() < 12
    assert [[f for f in row if f >= 0] for row in ex_t["top_alternatives"].tolist()] == ex_np["top_alternatives"]
    # The abstention narrows the caller's mask in place, either way: an abstained row keeps only the no-op.
    assert np.array_equal(info_t["action_mask"].numpy(), info_np["action_mask"])
    assert not info_np["action_mask"][ex_np["abstained"], :-1].any()
