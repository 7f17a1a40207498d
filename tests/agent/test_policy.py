"""The actor-critic: features scored through the decoder geometry, a no-op logit, masked logits."""

from __future__ import annotations

import math

import pytest
import torch

from crl.agent.policy import MASK_FILL, ActorCritic
from crl.config import PolicyConfig


@pytest.mark.parametrize("head", ["sae", "dense"])
def test_logits_shapes_noop_bias_and_mask(head):
    torch.manual_seed(0)
    net = ActorCritic(8, torch.randn(5, 8), allow_noop=True, cfg=PolicyConfig(hidden=16, head=head))
    obs = torch.randn(4, 8)
    logits = net.logits(obs)
    assert logits.shape == (4, 6) and net.n_actions == 6
    assert logits[:, -1].mean().item() == pytest.approx(PolicyConfig().noop_init_bias, abs=0.5)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 2] = False
    masked = net.logits(obs, mask)
    assert (masked[:, 2] == MASK_FILL).all() and torch.equal(masked[:, :2], logits[:, :2])
    action, logprob, entropy, value, _ = net.get_action_and_value(obs, mask)
    assert (action != 2).all() and value.shape == (4,) and torch.isfinite(entropy).all()
    assert (logprob <= 0).all()


def test_decoder_is_used_by_reference_and_not_saved():
    decoder = torch.randn(5, 8)
    net = ActorCritic(8, decoder, allow_noop=False, cfg=PolicyConfig(hidden=16))
    assert net.decoder.data_ptr() == decoder.data_ptr()
    assert "decoder" not in net.state_dict() and net.n_actions == 5
    assert net.log_scale.exp().item() == pytest.approx(1.0)
    assert math.isclose(float(net.inv_norm[0]), 1.0 / float(decoder[0].norm()), rel_tol=1e-6)


def _massive(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual-like observations: two dimensions ~200x the rest, the label in a small one (SmolLM2 L6: ~50x)."""
    x = torch.randn(n, 32, generator=gen)
    x[:, :2] = 200.0 + 20.0 * torch.randn(n, 2, generator=gen)
    y = (x[:, 5] > 0).long()
    return x, y


def test_standardized_observations_round_trip_through_the_state_dict():
    gen = torch.Generator().manual_seed(0)
    x, _ = _massive(512, gen)
    net = ActorCritic(32, torch.randn(4, 32), allow_noop=True, cfg=PolicyConfig(hidden=8))
    net.set_obs_stats(x)
    h = net._norm(x)
    assert h.mean(0).abs().max() < 1e-4 and (h.std(0) - 1).abs().max() < 1e-3  # every dimension on one scale
    assert net._norm(x * 1e6).abs().max() == 10.0  # clipped
    fresh = ActorCritic(32, torch.randn(4, 32), allow_noop=True, cfg=PolicyConfig(hidden=8))
    fresh.load_state_dict(net.state_dict())  # a checkpoint carries the statistics
    assert torch.equal(fresh._norm(x), h)
    layer = ActorCritic(32, torch.randn(4, 32), allow_noop=True, cfg=PolicyConfig(hidden=8, obs_norm="layer"))
    assert torch.allclose(layer._norm(x), torch.nn.functional.layer_norm(x, (32,)))


@pytest.mark.parametrize(("obs_norm", "learns"), [("standardize", True), ("layer", False)])
def test_a_signal_under_massive_dimensions_is_learnable_only_when_standardized(obs_norm, learns):
    """Why standardize is the default: the same Adam steps on the actor learn a label carried by a small dimension
    when observations are standardized, and not when layer norm leaves the two massive dimensions dominant."""
    gen = torch.Generator().manual_seed(0)
    x, y = _massive(1024, gen)
    xt, yt = _massive(512, gen)
    torch.manual_seed(0)
    net = ActorCritic(32, torch.eye(32)[:2], allow_noop=False, cfg=PolicyConfig(hidden=64, obs_norm=obs_norm))
    net.set_obs_stats(x)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    for _ in range(300):
        i = torch.randint(0, len(x), (128,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net.logits(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (net.logits(xt).argmax(-1) == yt).float().mean().item()
    assert (acc > 0.9) if learns else (acc < 0.75), acc
