"""Large dictionaries (Gemma Scope's 16k-131k features): the compact path scores only each decision's valid actions
(crl/agent/policy.py). It must pick only unmasked actions, give the every-action path's distribution up to float
rounding, and leave narrower dictionaries bit for bit as they were (checked against the code before it, kept here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from crl.agent.masking import FeatureMasker
from crl.agent.policy import MASK_FILL, ActorCritic, Candidates
from crl.agent.ppo import PolicyAgent, ppo_update
from crl.config import MaskingConfig, PolicyConfig, PPOConfig
from crl.envs.rollout import Episode
from crl.envs.tasks.base import Example

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the code before the compact path, as the reference --------------------------------------------------------------
def reference_logits(net: ActorCritic, obs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    h = net._norm(obs)
    out = net.actor(h)
    if net.cfg.head == "sae":
        out = net.log_scale.exp() * (out @ net.decoder.T) * net.inv_norm + net.feature_bias
    if net.level_head is not None:
        out = (out[:, None, :] + net.level_head(h)[:, :, None]).reshape(len(out), -1)
    if net.noop_head is not None:
        out = torch.cat([out, net.noop_head(h)], dim=-1)
    if mask is not None:
        out = out.masked_fill(~mask, MASK_FILL)
    return out


def reference_act(net: ActorCritic, obs: torch.Tensor, mask: torch.Tensor, greedy: bool):
    logits = reference_logits(net, obs, mask)
    dist = Categorical(logits=logits)
    action = logits.argmax(-1) if greedy else dist.sample()
    return action, dist.log_prob(action), dist.entropy(), net.get_value(obs), logits


def reference_mask(m: FeatureMasker, sums: torch.Tensor, counts: torch.Tensor, acts, rows) -> torch.Tensor:
    """The masking before (its running sums passed in and updated here)."""
    n = acts.shape[0]
    feats = torch.ones(n, m.d_sae, dtype=torch.bool)
    if m.cfg.mode != "none":
        sums[rows] += acts
        counts[rows] += 1
        feats = sums[rows] / counts[rows, None] > m.cfg.threshold
        if m.cfg.top_k > 0:
            feats.scatter_(1, acts.topk(min(m.cfg.top_k, m.d_sae), dim=-1).indices, True)
        if m.cfg.mode == "adaptive":
            capped = feats & ~(m.share > m.cap())
            feats = torch.where(capped.any(dim=1, keepdim=True), capped, feats)
    if m.allow_noop:
        feats = torch.cat([feats, torch.ones(n, 1, dtype=torch.bool)], dim=1)
    return feats


def _net(d_sae: int, d_model: int = 8, noop: bool = True, levels: int = 2, seed: int = 0, **policy) -> ActorCritic:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = PolicyConfig(hidden=8, **policy)
    return ActorCritic(d_model, torch.randn(d_sae, d_model, generator=gen), noop, cfg, levels)


def _pair(d_sae: int, noop: bool = True, levels: int = 2, **policy) -> tuple[ActorCritic, ActorCritic]:
    """The every-action policy and its compact twin: the same weights and decoder."""
    full = _net(d_sae, noop=noop, levels=levels, **policy)
    decoder = torch.randn(d_sae, 8, generator=torch.Generator().manual_seed(0))  # _net's decoder
    twin_cfg = dataclasses.replace(full.cfg, compact_min_d_sae=1)
    compact = ActorCritic(8, decoder, noop, twin_cfg, levels)
    compact.load_state_dict(full.state_dict())
    assert compact.compact and not full.compact
    return full, compact


def _sparse_acts(n: int, d_sae: int, l0: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, d_sae, (n, l0), generator=gen)
    return torch.zeros(n, d_sae).scatter_(1, idx, torch.rand(n, l0, generator=gen) + 0.1)


def _masks(masker: FeatureMasker, n: int, steps: int, levels: int, l0: int, gen: torch.Generator) -> torch.Tensor:
    masker.begin(n)
    for t in range(steps):
        m = masker(_sparse_acts(n, masker.d_sae, l0, gen), torch.arange(n), torch.full((n,), t))
    return torch.cat([m[:, : masker.d_sae]] * levels + [m[:, masker.d_sae :]], dim=1)


# -- narrow dictionaries: unchanged, bit for bit --------------------------------------------------------------------
@pytest.mark.parametrize("head", ["sae", "dense"])
@pytest.mark.parametrize("greedy", [True, False])
def test_the_default_width_is_bit_identical_to_the_code_before(head, greedy):
    net = _net(4608, d_model=16, head=head)
    assert not net.compact
    gen = torch.Generator().manual_seed(1)
    masker = FeatureMasker(MaskingConfig(), 4608, True)
    mask = _masks(masker, 6, 3, 2, 20, gen)
    obs = torch.randn(6, 16, generator=gen)
    torch.manual_seed(5)
    want = reference_act(net, obs, mask, greedy)
    torch.manual_seed(5)
    got = net.get_action_and_value(obs, mask, greedy=greedy)
    for w, g in zip(want[:4], got[:4], strict=True):
        assert torch.equal(w, g)
    assert torch.equal(want[4], got[4].logits) and got[4].ids is None
    assert torch.equal(net.logits(obs, mask), reference_logits(net, obs, mask))
    _, logprob, entropy, _, _ = net.get_action_and_value(obs, mask, want[0])
    assert torch.equal(logprob, want[1]) and torch.equal(entropy, want[2])


@pytest.mark.parametrize("mode", ["none", "active", "adaptive"])
def test_the_masking_is_bit_identical_to_the_code_before(mode):
    cfg = MaskingConfig(mode=mode, top_k=3, max_share=0.05, share_decay=0.0, relax_updates=100)
    d, n = 300, 5
    m = FeatureMasker(cfg, d, allow_noop=True)
    sums, counts = torch.zeros(n, d), torch.zeros(n)
    gen = torch.Generator().manual_seed(0)
    m.begin(n)
    over = []
    for t in range(6):
        rows = torch.randperm(n, generator=gen)[: n - 1]  # one row has finished
        acts = _sparse_acts(n - 1, d, 8, gen)
        acts[0, :4] = 1.0  # the over-used features are among this row's candidates
        over.append(int((m.share > m.cap()).sum()))
        assert torch.equal(m(acts, rows, torch.full((n - 1,), t)), reference_mask(m, sums, counts, acts, rows))
        m.observe_update(torch.randint(-1, 4, (20,), generator=gen))  # features 0-3 soon over the cap
    assert over[0] == 0 and max(over) >= 2


# -- wide dictionaries: the compact path ----------------------------------------------------------------------------
def test_candidates_hold_each_rows_valid_actions_in_order():
    mask = torch.tensor([[0, 1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1, 0]], dtype=torch.bool)
    c = Candidates.from_mask(mask, n_steer=6, noop=True)
    assert c.ids.tolist() == [[1, 2, 4, 6], [-1, -1, -1, 6], [0, 5, -1, 6]]
    assert c.valid.tolist() == [[True] * 4, [False, False, False, True], [True, True, False, False]]
    assert c.columns(torch.tensor([4, 6, 5])).tolist() == [2, 3, 1]
    with pytest.raises(ValueError, match="not among"):
        c.columns(torch.tensor([3, 6, 5]))
    with pytest.raises(ValueError, match="not among"):
        c.columns(torch.tensor([1, 6, 6]))  # row 2's no-op is masked
    both = Candidates.cat([c[1:2], Candidates.from_mask(mask[:1], 6, True)])
    assert both.ids.tolist() == [[-1, -1, -1, 6], [1, 2, 4, 6]]


@pytest.mark.parametrize("d_sae", [65536, 131072])
def test_a_wide_policy_picks_only_unmasked_actions(d_sae):
    net = _net(d_sae)
    assert net.compact and net.n_actions == 2 * d_sae + 1
    gen = torch.Generator().manual_seed(0)
    masker = FeatureMasker(MaskingConfig(), d_sae, allow_noop=True)
    n = 16
    mask = _masks(masker, n, 4, 2, 30, gen)
    assert mask.sum(-1).max() < 300  # the masking leaves few candidates out of 131k
    agent = PolicyAgent(net, n_alternatives=3)
    torch.manual_seed(0)
    for greedy in (False, True):
        agent.greedy = greedy
        info = {"action_mask": mask.numpy().copy()}
        action, extras = agent.act(np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32), info)
        action = np.asarray(action)
        assert mask[np.arange(n), action].all()
        for r, (a, alts) in enumerate(zip(action, extras["top_alternatives"], strict=True)):
            assert len(alts) == 3 and a not in alts and all(bool(mask[r, x]) for x in alts)  # valid ones, no padding
        assert np.all(np.asarray(extras["logprob"]) <= 0)
    # Nothing of size n_actions is built: the logits are (n, valid actions).
    scores = net.get_action_and_value(torch.randn(n, 8), mask)[4]
    assert scores.logits.shape == (n, int(mask.sum(-1).max()))
    # Late decisions (only the no-op valid) still work.
    only_noop = torch.zeros(n, net.n_actions, dtype=torch.bool)
    only_noop[:, -1] = True
    assert (net.get_action_and_value(torch.randn(n, 8), only_noop)[0] == net.n_actions - 1).all()


@pytest.mark.parametrize("head", ["sae", "dense"])
@pytest.mark.parametrize(("noop", "levels"), [(True, 2), (True, 1), (False, 2), (False, 1)])
def test_the_compact_path_gives_the_every_action_distribution(head, noop, levels):
    full, compact = _pair(40, noop=noop, levels=levels, head=head)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(6, 8, generator=gen)
    mask = torch.rand(6, full.n_actions, generator=gen) > 0.6
    mask[0] = False
    mask[0, 3] = True  # one valid action
    for greedy in (True, False):
        a_full, lp_full, ent_full, v_full, s_full = full.get_action_and_value(obs, mask, greedy=greedy)
        a, lp, ent, v, s = compact.get_action_and_value(obs, mask, greedy=greedy)
        assert mask[torch.arange(6), a].all() and torch.equal(v, v_full)
        if greedy:
            assert torch.equal(a, a_full)
        # the same probabilities of every valid action
        p_full = torch.softmax(s_full.logits, -1)
        p = torch.zeros_like(p_full).scatter_add_(1, s.ids.clamp_min(0), torch.softmax(s.logits, -1) * (s.ids >= 0))
        assert torch.allclose(p, p_full, atol=1e-6)
        _, lp_given, ent_given, _, _ = full.get_action_and_value(obs, mask, a)
        assert torch.allclose(lp, lp_given, atol=1e-5) and torch.allclose(ent, ent_given, atol=1e-5)
        assert torch.allclose(ent_full, ent_given)


def _episodes(net: ActorCritic, n: int, steps: int, gen: torch.Generator) -> list[Episode]:
    masker = FeatureMasker(MaskingConfig(top_k=3), net.d_sae, allow_noop=True)
    out = []
    for i in range(n):
        masks = torch.stack([_masks(masker, 1, t + 1, net.n_levels, 5, gen)[0] for t in range(steps)])
        masks[-1, :-1] = False  # a forced step: not a decision
        obs = torch.randn(steps, 8, generator=gen)
        action, logprob, _, value, _ = net.get_action_and_value(obs, masks)
        recs = [
            {"logprob": float(lp), "value": float(v), "feature": int(a) % net.d_sae if a < net.n_actions - 1 else -1}
            for a, lp, v in zip(action, logprob, value, strict=True)
        ]
        ep = Episode(Example(id=f"p{i // 2}", prompt="", answer=""), "", float(i % 2), i % 2 == 1, True, "x", recs)
        ep.obs, ep.masks, ep.actions = obs, masks, action
        out.append(ep)
    return out


@pytest.mark.parametrize("head", ["sae", "dense"])
def test_a_ppo_update_on_the_compact_buffer_matches_the_every_action_one(head):
    full, compact = _pair(48, head=head)
    with torch.no_grad():
        episodes = _episodes(full, 8, 3, torch.Generator().manual_seed(0))
    cfg = PPOConfig(advantage="loo", group_size=2, num_minibatches=2, update_epochs=2, regularizer="kl")
    stats = {}
    for name, net in (("full", full), ("compact", compact)):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, eps=1e-5)
        stats[name] = ppo_update(net, opt, episodes, cfg, torch.Generator().manual_seed(0))
    assert stats["full"]["charts/decisions"] == stats["compact"]["charts/decisions"] == 8 * 2
    for key, value in stats["full"].items():
        assert stats["compact"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for (name, p_full), p in zip(full.named_parameters(), compact.parameters(), strict=True):
        assert torch.allclose(p_full, p, atol=1e-5), name
