"""`PrefixBatch` (crl.analysis.diffing.forward): the last token run on the cached prefix is the full forward's last
position, with a delta or a replacement at the hook as if applied in the full forward; the cache returns to the prefix
after every call (gradient passes included), and the margin gradient matches a finite difference."""

from __future__ import annotations

import pytest
import torch

from crl.analysis.diffing.forward import PrefixBatch, encode, task_inputs
from crl.analysis.diffing.measure import _margin_tensor
from crl.backends.hooks import residual_hook
from tests.analysis.diffing.world import base_model, planted_task

HOOK = "blocks.0.hook_resid_post"  # a layer with one after it: the cache of layer 1 depends on the hook


@pytest.fixture(scope="module")
def batch(one_thread):
    base = base_model()
    task = planted_task(16)
    texts, special, options = task_inputs(task, base, task.load("test"))
    ids, mask, pos = encode(base, texts, special)
    return base, (ids, mask, pos), PrefixBatch(base, HOOK, ids, mask, pos), options


def _full(base, inputs, fn=None) -> torch.Tensor:
    ids, mask, pos = inputs
    with torch.no_grad():
        if fn is None:
            return base.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
        with residual_hook(base.layers, HOOK, fn):
            return base.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()


def test_the_last_token_on_the_cache_is_the_full_forward(batch):
    base, inputs, b, _ = batch
    torch.testing.assert_close(b.last().logits, _full(base, inputs), atol=1e-5, rtol=1e-4)
    delta = torch.randn(len(b), base.d_model, generator=torch.Generator().manual_seed(0))

    def add_last(resid):
        out = resid.clone()
        out[:, -1] += delta
        return out

    torch.testing.assert_close(b.last(delta=delta).logits, _full(base, inputs, add_last), atol=1e-5, rtol=1e-4)
    plain = b.last()
    replaced = b.last(replace=plain.resid + delta)
    torch.testing.assert_close(replaced.logits, _full(base, inputs, add_last), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.last().logits, plain.logits)  # the cache is back to the prefix


def test_the_margin_gradient_matches_a_finite_difference(batch):
    _, _, b, options = batch
    out = b.last(grad=True)
    (g,) = torch.autograd.grad(_margin_tensor(out.logits, options).sum(), out.leaf)
    assert all(not layer.keys.requires_grad for layer in b.cache.layers)  # no graph left in the cache
    d = torch.randn(g.shape[1], generator=torch.Generator().manual_seed(1))
    d = d / d.norm()
    eps = 1e-3
    up = _margin_tensor(b.last(delta=eps * d.expand_as(g)).logits, options)
    down = _margin_tensor(b.last(delta=-eps * d.expand_as(g)).logits, options)
    torch.testing.assert_close((up - down) / (2 * eps), g @ d, atol=2e-3, rtol=2e-2)
