"""Hook points on the residual stream: name parsing, reads that match HF's hidden states, writes that equal
hand-added deltas, and hooks that are always removed."""

from __future__ import annotations

import pytest
import torch

from crl.backends.hooks import HookPoint, parse_hook_name, residual_hook, resolve_hook
from crl.backends.model import tiny_model
from crl.errors import CRLError

FAMILIES = ("llama", "qwen", "gemma", "gpt2")
N_LAYERS = 3
D_MODEL = 32


@pytest.fixture(scope="module")
def tiny_models():
    return {f: tiny_model(f, n_layers=N_LAYERS, d_model=D_MODEL, seed=1) for f in FAMILIES}


@pytest.fixture
def ids():
    torch.manual_seed(0)
    return torch.randint(5, 4000, (2, 9))


# ------------------------------------------------------------------------------------- hook names


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_names_resolve_to_the_decoder_layer(tiny_models, family):
    m = tiny_models[family]
    for layer in range(N_LAYERS):
        for kind in ("pre", "post"):
            point, module = resolve_hook(m.layers, f"blocks.{layer}.hook_resid_{kind}")
            assert point == HookPoint(layer, kind)
            assert module is m.layers[layer]
    hf_prefix = "transformer.h" if family == "gpt2" else "model.layers"
    point, module = resolve_hook(m.layers, f"{hf_prefix}.1")
    assert point == HookPoint(1, "post") and module is m.layers[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_out_of_range_layer_is_a_clear_error(tiny_models, family):
    with pytest.raises(CRLError, match=rf"layer {N_LAYERS} .*out of range.*0\.\.{N_LAYERS - 1}"):
        resolve_hook(tiny_models[family].layers, f"blocks.{N_LAYERS}.hook_resid_post")


@pytest.mark.parametrize("name", ["blocks.3.attn.hook_z", "blocks.x.hook_resid_post", "resid_post", ""])
def test_non_residual_hook_names_are_rejected(name):
    with pytest.raises(CRLError, match="not a residual-stream hook"):
        parse_hook_name(name)


# ------------------------------------------------------------------------------ read / write points


def _capture(layers, hook_name, model, ids):
    seen = []
    with residual_hook(layers, hook_name, lambda h: seen.append(h.detach().clone())):
        out = model(ids, output_hidden_states=True)
    assert len(seen) == 1
    return seen[0], out


@pytest.mark.parametrize("family", FAMILIES)
def test_read_point_matches_hidden_states(tiny_models, family, ids):
    m = tiny_models[family]
    with torch.no_grad():
        for layer in range(N_LAYERS - 1):  # HF's last hidden state has the final norm applied
            post, out = _capture(m.layers, f"blocks.{layer}.hook_resid_post", m.model, ids)
            torch.testing.assert_close(post, out.hidden_states[layer + 1], rtol=0, atol=0)
        for layer in range(N_LAYERS):
            pre, out = _capture(m.layers, f"blocks.{layer}.hook_resid_pre", m.model, ids)
            torch.testing.assert_close(pre, out.hidden_states[layer], rtol=0, atol=0)


def _final_norm_and_head(m):
    if m.family == "gpt2":
        return m.model.transformer.ln_f, m.model.lm_head
    return m.model.model.norm, m.model.lm_head


@pytest.mark.parametrize("family", FAMILIES)
def test_write_at_last_layer_equals_manual_head(tiny_models, family, ids):
    """resid_post of the last layer is *before* the final norm: logits = head(norm(h + delta))."""
    m = tiny_models[family]
    last = N_LAYERS - 1
    delta = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h, clean = _capture(m.layers, f"blocks.{last}.hook_resid_post", m.model, ids)
        with residual_hook(m.layers, f"blocks.{last}.hook_resid_post", lambda r: r + delta):
            steered = m.model(ids).logits
        norm, head = _final_norm_and_head(m)
        manual = head(norm(h + delta))
        cap = getattr(m.model.config, "final_logit_softcapping", None)
        if cap:
            manual = torch.tanh(manual / cap) * cap
    assert not torch.allclose(steered, clean.logits, atol=1e-3)
    torch.testing.assert_close(steered, manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_write_at_inner_layer_equals_hand_added_delta(tiny_models, family, ids):
    """Adding a delta through the hook equals adding it by hand to the layer's output (and to the next
    layer's input through resid_pre); a different delta gives different logits."""
    m = tiny_models[family]
    layer = 0
    delta = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(4))

    def by_hand(_module, _args, output):
        if isinstance(output, torch.Tensor):
            return output + delta
        return (output[0] + delta, *output[1:])

    with torch.no_grad():
        clean = m.model(ids).logits
        with residual_hook(m.layers, f"blocks.{layer}.hook_resid_post", lambda r: r + delta):
            via_post = m.model(ids).logits
        with residual_hook(m.layers, f"blocks.{layer + 1}.hook_resid_pre", lambda r: r + delta):
            via_pre = m.model(ids).logits
        handle = m.layers[layer].register_forward_hook(by_hand)
        try:
            manual = m.model(ids).logits
        finally:
            handle.remove()
        with residual_hook(m.layers, f"blocks.{layer}.hook_resid_post", lambda r: r + 2 * delta):
            other = m.model(ids).logits
    assert not torch.allclose(via_post, clean, atol=1e-3)
    torch.testing.assert_close(via_post, manual, rtol=0, atol=0)
    torch.testing.assert_close(via_pre, manual, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(other, via_post, atol=1e-3)


@pytest.mark.parametrize("kind", ["pre", "post"])
def test_hooks_are_removed_when_fn_raises(tiny_models, ids, kind):
    m = tiny_models["llama"]
    module = m.layers[1]
    n_hooks = len(module._forward_hooks) + len(module._forward_pre_hooks)
    with torch.no_grad():
        before = m.model(ids).logits

        def boom(_resid):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"), residual_hook(m.layers, f"blocks.1.hook_resid_{kind}", boom):
            m.model(ids)
        assert len(module._forward_hooks) + len(module._forward_pre_hooks) == n_hooks
        torch.testing.assert_close(m.model(ids).logits, before, rtol=0, atol=0)
