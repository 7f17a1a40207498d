"""policy.greedy_rule (crl/agent/policy.py, `greedy_columns`): argmax picks the no-op whenever the steering mass is
spread over many features; steer_if_likely steers iff P(no-op) < 1/2, then takes the most likely valid steering action,
on the dense and the compact (`Candidates`) path alike, and is argmax when there is no no-op."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from crl.agent.policy import MASK_FILL, ActorCritic, Candidates, greedy_columns
from crl.config import ConfigError, PolicyConfig

pytestmark = pytest.mark.usefixtures("one_thread")

D_MODEL, D_SAE, N_VALID, TOP = 8, 100, 60, 17  # TOP: the index, among the valid features, of the most likely one


def _planted(p_noop: float, rule: str, compact: bool) -> tuple[ActorCritic, torch.Tensor, int]:
    """A policy whose distribution does not depend on the observation: with its mask, the no-op has `p_noop` and
    N_VALID features share the rest evenly but for one, a little more likely (still far below the no-op); the masked
    features get the highest logits, so a choice that ignored the mask would show. Returns (net, mask, top feature)."""
    cfg = PolicyConfig(hidden=8, head="dense", greedy_rule=rule, compact_min_d_sae=1 if compact else D_SAE + 1)
    net = ActorCritic(D_MODEL, torch.randn(D_SAE, D_MODEL), allow_noop=True, cfg=cfg)
    valid = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(0))[:N_VALID].sort().values
    weight = torch.ones(N_VALID)
    weight[TOP] = 1.5
    p = (1 - p_noop) * weight / weight.sum()
    bias = torch.full((D_SAE,), math.log(5.0))  # masked: more likely than any valid action before the mask
    bias[valid] = p.log()
    with torch.no_grad():
        net.actor[-1].weight.zero_()
        net.actor[-1].bias.copy_(bias)
        net.noop_head[-1].weight.zero_()
        net.noop_head[-1].bias.fill_(math.log(p_noop))
    assert net.compact == compact
    mask = torch.zeros(4, D_SAE + 1, dtype=torch.bool)
    mask[:, valid] = True
    mask[:, -1] = True
    return net, mask, int(valid[TOP])


@torch.no_grad()
def _choose(net: ActorCritic, mask: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    obs = torch.randn(len(mask), D_MODEL)
    action, *_, scores = net.get_action_and_value(obs, mask, greedy=True)
    probs = torch.softmax(scores.logits, -1)
    return action.tolist(), probs


@pytest.mark.parametrize("compact", [False, True])
def test_spread_steering_mass_argmax_picks_the_noop_steer_if_likely_the_top_feature(compact):
    noop = D_SAE
    net, mask, top = _planted(0.4, "argmax", compact)
    chosen, probs = _choose(net, mask)
    assert probs[:, -1].tolist() == pytest.approx([0.4] * 4, abs=1e-5)  # no-op last, dense and compact
    assert probs[:, :-1].max() < 0.02  # no single feature comes near the no-op
    assert chosen == [noop] * 4
    net, mask, top = _planted(0.4, "steer_if_likely", compact)
    assert _choose(net, mask)[0] == [top] * 4


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("rule", ["argmax", "steer_if_likely"])
def test_a_likely_noop_is_chosen_by_both_rules(compact, rule):
    net, mask, _ = _planted(0.6, rule, compact)
    assert _choose(net, mask)[0] == [D_SAE] * 4


def test_greedy_columns_on_constructed_logits():
    spread = torch.tensor([[0.0] * 60 + [math.log(40.0)]])  # 60 features of weight 1 against the no-op's 40
    spread[0, 5] = 0.1  # the top feature
    assert greedy_columns(spread, True, "argmax").tolist() == [60]
    assert greedy_columns(spread, True, "steer_if_likely").tolist() == [5]
    assert greedy_columns(spread, False, "steer_if_likely").tolist() == [60]  # no no-op: the last column is a feature
    likely = spread.clone()
    likely[0, -1] = math.log(80.0)  # the no-op outweighs the 60 features together
    assert greedy_columns(likely, True, "steer_if_likely").tolist() == [60]
    masked = spread.clone()
    masked[0, :30] = MASK_FILL  # 30 features left: their weight 30.1 < 40
    assert greedy_columns(masked, True, "steer_if_likely").tolist() == [60]
    only_noop = torch.tensor([[MASK_FILL, MASK_FILL, -3.0]])  # abstention: only the no-op is valid
    assert greedy_columns(only_noop, True, "steer_if_likely").tolist() == [2]
    no_noop_valid = torch.tensor([[-1.0, -2.0, MASK_FILL]])
    assert greedy_columns(no_noop_valid, True, "steer_if_likely").tolist() == [0]
    assert greedy_columns(torch.zeros(3, 1), True, "steer_if_likely").tolist() == [0, 0, 0]  # no steering column
    with pytest.raises(ValueError, match="unknown greedy rule"):
        greedy_columns(spread, True, "sample")


def test_an_unknown_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="policy.greedy_rule=max is invalid.*argmax, steer_if_likely"):
        ActorCritic(D_MODEL, torch.randn(4, D_MODEL), True, PolicyConfig(hidden=8, greedy_rule="max"))
    assert PolicyConfig().greedy_rule == "argmax"


# -- the compact path chooses as the dense path --------------------------------------------------------------------
def _pair(noop: bool, rule: str, levels: int = 2, bias: float = 0.0) -> tuple[ActorCritic, ActorCritic]:
    """The every-action policy and its compact twin: the same weights and decoder."""
    torch.manual_seed(0)
    decoder = torch.randn(D_SAE, D_MODEL)
    cfg = PolicyConfig(hidden=8, greedy_rule=rule, noop_init_bias=bias)
    dense = ActorCritic(D_MODEL, decoder, noop, cfg, levels)
    compact = ActorCritic(D_MODEL, decoder, noop, dataclasses.replace(cfg, compact_min_d_sae=1), levels)
    compact.load_state_dict(dense.state_dict())
    assert compact.compact and not dense.compact
    return dense, compact


def _masks(noop: bool, levels: int, counts: list[int]) -> torch.Tensor:
    """One row per count: that many valid features (at every level), and the no-op (when there is one)."""
    gen = torch.Generator().manual_seed(1)
    feats = torch.zeros(len(counts), D_SAE, dtype=torch.bool)
    for i, k in enumerate(counts):
        feats[i, torch.randperm(D_SAE, generator=gen)[:k]] = True
    parts = [feats] * levels + ([torch.ones(len(counts), 1, dtype=torch.bool)] if noop else [])
    return torch.cat(parts, dim=1)


def test_the_compact_path_chooses_as_the_dense_path():
    # The logits start near 0 and the no-op's at b + ln(levels), so with k valid features at 2 levels
    # P(no-op) ~ 2e^b / (2e^b + 2k): b = ln 20 keeps the no-op for k < 20 and steers for k > 20 (no row near the
    # boundary, where float rounding could decide).
    dense, compact = _pair(True, "steer_if_likely", bias=math.log(20.0))
    counts = [3, 8, 12, 0, 30, 45, 60, 100, 5, 70]
    mask = _masks(True, 2, counts)
    obs = torch.randn(len(counts), D_MODEL, generator=torch.Generator().manual_seed(2))
    a_dense, *_, s_dense = dense.get_action_and_value(obs, mask, greedy=True)
    a_compact, *_, s_compact = compact.get_action_and_value(obs, mask, greedy=True)
    assert s_compact.ids is not None and s_dense.ids is None
    assert torch.equal(a_dense, a_compact)
    steered = (a_dense < dense.n_actions - 1).tolist()
    assert steered == [k > 20 for k in counts]  # both outcomes, as the no-op probability says
    p_noop = torch.softmax(s_dense.logits, -1)[:, -1]
    assert ((p_noop < 0.5) == torch.tensor(steered)).all()
    for row in range(len(counts)):  # a steered row takes the most likely valid steering action
        if steered[row]:
            assert a_dense[row] == s_dense.logits[row, :-1].argmax()
            assert mask[row, a_dense[row]]
    # The same logits, laid out as `Candidates` (no-op last): the same choices.
    cand = Candidates.from_mask(mask, D_SAE * 2, True)
    laid = s_dense.logits.gather(1, cand.ids.clamp_min(0)).masked_fill(~cand.valid, MASK_FILL)
    col = greedy_columns(laid, cand.noop, "steer_if_likely")
    assert torch.equal(cand.ids.gather(1, col[:, None]).squeeze(1), a_dense)
    # argmax (the default) still never steers here: no single action outweighs the no-op
    dense_argmax, compact_argmax = _pair(True, "argmax", bias=math.log(20.0))
    a_argmax = dense_argmax.get_action_and_value(obs, mask, greedy=True)[0]
    assert torch.equal(a_argmax, compact_argmax.get_action_and_value(obs, mask, greedy=True)[0])
    assert (a_argmax == dense.n_actions - 1).all()


@pytest.mark.parametrize("levels", [1, 2])
def test_without_a_noop_steer_if_likely_is_argmax(levels):
    obs = torch.randn(6, D_MODEL, generator=torch.Generator().manual_seed(3))
    mask = _masks(False, levels, [1, 4, 9, 30, 60, 100])
    actions = []
    for rule in ("argmax", "steer_if_likely"):
        for net in _pair(False, rule, levels):
            assert net.n_actions == D_SAE * levels
            actions.append(net.get_action_and_value(obs, mask, greedy=True)[0])
    assert all(torch.equal(actions[0], a) for a in actions[1:])
    assert mask.gather(1, actions[0][:, None]).all()


def test_sampling_ignores_the_rule():
    obs = torch.randn(5, D_MODEL, generator=torch.Generator().manual_seed(4))
    mask = _masks(True, 2, [3, 10, 40, 60, 90])
    samples = []
    for rule in ("argmax", "steer_if_likely"):
        net = _pair(True, rule)[0]
        torch.manual_seed(7)
        samples.append(net.get_action_and_value(obs, mask)[0])
    assert torch.equal(samples[0], samples[1])
