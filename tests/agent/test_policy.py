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
