"""The SAE backend: hook points on the residual, SAE loading and checks, and the cached default model."""

from __future__ import annotations

import socket
import time

import pytest
import torch

from crl.backends.hooks import HookPoint, parse_hook_name, residual_hook, resolve_hook
from crl.backends.model import ModelConfig, load_model, tiny_model
from crl.backends.sae import LoadedSAE, SAEConfig, check_compatible, check_registry, load_sae
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


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (registry checks must happen before downloads)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


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


# ------------------------------------------------------------------------------------------ SAEs


def _small_sae(kind: str, d_in: int = D_MODEL, d_sae: int = 48, hook: str = "blocks.1.hook_resid_post"):
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(7)
    meta = SAEMetadata(hook_name=hook, model_name="tiny")
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():  # non-trivial weights, so a round trip that loses anything shows
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return sae


def test_d_in_mismatch_names_both_values():
    sae = LoadedSAE(_small_sae("standard", d_in=16), HookPoint(1, "post"))
    with pytest.raises(CRLError, match=r"d_in=16.*d_model=32"):
        check_compatible(sae, d_model=32, n_layers=N_LAYERS, model_name="tiny")
    check_compatible(LoadedSAE(_small_sae("standard"), HookPoint(1, "post")), D_MODEL, N_LAYERS)


def test_sae_layer_beyond_model_is_rejected():
    sae = LoadedSAE(_small_sae("standard"), HookPoint(5, "post"))
    with pytest.raises(CRLError, match=r"reads layer 5.*3 layers"):
        check_compatible(sae, D_MODEL, N_LAYERS)


def test_unknown_release_fails_before_any_download(no_network):
    with pytest.raises(CRLError, match="unknown SAE release 'gemma-scope-2b-pt-res-canonicl'.*did you mean"):
        check_registry("gemma-scope-2b-pt-res-canonicl", "layer_0/width_16k/canonical")
    with pytest.raises(CRLError, match="unknown SAE release"):
        load_sae(SAEConfig(source="pretrained", release="no-such-release", sae_id="x"))


def test_unknown_sae_id_fails_before_any_download(no_network):
    with pytest.raises(CRLError, match="unknown sae_id 'layer_0/width_16k/canonicl'.*layer_0/width_16k/canonical"):
        load_sae(
            SAEConfig(
                source="pretrained", release="gemma-scope-2b-pt-res-canonical", sae_id="layer_0/width_16k/canonicl"
            )
        )
    _, np_id = check_registry("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical")
    assert np_id == "gemma-2-2b/0-gemmascope-res-16k"


@pytest.mark.parametrize("kind", ["standard", "topk"])
@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "model.layers.1", "blocks.2.hook_resid_pre"])
def test_save_load_round_trip(tmp_path, kind, hook):
    sae = _small_sae(kind, hook=hook)
    sae.save_model(tmp_path)
    loaded = load_sae(SAEConfig(source="disk", path=str(tmp_path)))
    assert loaded.hook == parse_hook_name(hook)
    assert (loaded.d_in, loaded.d_sae) == (D_MODEL, 48)
    state, state2 = sae.state_dict(), loaded.sae.state_dict()
    assert state.keys() == state2.keys()
    for key in state:
        torch.testing.assert_close(state2[key], state[key], rtol=0, atol=0)
    x = torch.randn(6, D_MODEL)
    f = loaded.encode(x)
    torch.testing.assert_close(f, sae.encode(x), rtol=0, atol=0)
    assert (f != 0).any()
    assert loaded.directions(unit=True).norm(dim=-1).sub(1).abs().max() < 1e-5


def test_disk_source_without_cfg_is_a_clear_error(tmp_path):
    with pytest.raises(CRLError, match="not an SAE directory"):
        load_sae(SAEConfig(source="disk", path=str(tmp_path)))


def test_default_sae_missing_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    with pytest.raises(CRLError, match=r"crl sae build sae.layer=4"):
        load_sae(SAEConfig(source="default", layer=4))


# --------------------------------------------------------------------------------- default model


def test_cached_default_model_loads_again_fast_and_identically():
    first = load_model(ModelConfig())  # converts the GGUF once if the cache is cold
    start = time.perf_counter()
    second = load_model(ModelConfig())
    seconds = time.perf_counter() - start
    assert (first.n_layers, first.d_model) == (30, 576)
    ids = first.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = first.model(ids).logits, second.model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a[0, -1].argmax().item() == b[0, -1].argmax().item()
    assert seconds < 20, f"loading the cached default model took {seconds:.1f}s"
