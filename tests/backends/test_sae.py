"""SAE loading and checks: model fit, registry ids before any download, disk round trips, the default SAE."""

from __future__ import annotations

import socket

import pytest
import torch

from crl.backends.hooks import HookPoint, parse_hook_name
from crl.backends.sae import LoadedSAE, check_compatible, check_registry, load_sae
from crl.config import SAEConfig
from crl.errors import CRLError

N_LAYERS = 3
D_MODEL = 32


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (registry checks must happen before downloads)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


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
