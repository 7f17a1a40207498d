"""Feature cards computed on a tiny model, checked against answers known by construction."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from crl.backends.hooks import HookPoint
from crl.backends.model import tiny_model
from crl.backends.sae import sae_from_decoder
from crl.cards import label, store, tokens
from crl.cards.compute import compute_cards, final_norm_and_unembed, logit_lens, sparse_activations

SENTENCES = [
    "The red apple fell from the tree into the grass.",
    "She bought an apple and a pear at the market today.",
    "Numbers like 12 and 47 are easy to compare for most people.",
    "The train left the station at noon, and the rain started.",
    "A green apple is sour, but a ripe apple is sweet.",
    "He wrote the report, printed it, and left the office.",
]
TARGET = " apple"


def _rows(tok, n_rows: int = 12, seq: int = 32) -> torch.Tensor:
    ids: list[int] = []
    i = 0
    while len(ids) < n_rows * (seq - 1):
        ids += tok(SENTENCES[i % len(SENTENCES)], add_special_tokens=False)["input_ids"]
        i += 1
    body = torch.tensor(ids[: n_rows * (seq - 1)]).reshape(n_rows, seq - 1)
    return torch.cat([torch.full((n_rows, 1), tok.bos_token_id), body], dim=1)


@pytest.fixture(scope="module")
def planted(one_thread):
    """A tiny llama, and an SAE whose feature 0 fires on exactly the ' apple' tokens (threshold set between
    the projections of apple and non-apple residuals, measured here), the others random."""
    lm = tiny_model("llama", n_layers=2, d_model=64, seed=0)
    rows = _rows(lm.tokenizer)
    (apple,) = lm.tokenizer(TARGET, add_special_tokens=False)["input_ids"]
    gen = torch.Generator().manual_seed(0)
    dec = torch.randn(16, 64, generator=gen)
    dec[0] = lm.model.get_input_embeddings().weight[apple]
    sae = sae_from_decoder(dec, HookPoint(1, "post"), "test:planted")
    resid = []
    from crl.backends.hooks import residual_hook

    with torch.no_grad(), residual_hook(lm.layers, sae.hook_name, lambda r: resid.append(r)):
        lm.model(rows)
    proj = (resid[0] @ sae.sae.W_enc[:, 0]).reshape(-1)
    is_apple = (rows == apple).reshape(-1)
    is_apple[:: rows.shape[1]] = False  # position 0 is excluded from cards
    proj = proj.detach()
    lo, hi = float(proj[is_apple].min()), float(proj[~is_apple].max())
    assert lo > hi, "construction: apple residuals must be separable along the embedding"
    with torch.no_grad():
        sae.sae.b_enc[0] = -(lo + hi) / 2
        sae.sae.b_enc[1:] = -1e9  # the rest never fire, so co-firing and density are known exactly
        sae.sae.b_enc[1] = -(lo + hi) / 2  # feature 1: same encoder threshold but its own direction
        sae.sae.W_enc[:, 1] = sae.sae.W_enc[:, 0]
    cards = compute_cards(lm, sae, rows, {"source": "test sentences"}, top_k=5, bins=3, per_bin=2, progress=False)
    return lm, sae, rows, cards, apple, int(is_apple.sum())


def test_planted_feature_fires_on_its_token(planted):
    lm, _, rows, cards, apple, n_apple = planted
    flat = rows.reshape(-1)
    tops = [int(flat[p]) for p in cards.top_pos[0] if p >= 0]
    assert tops and all(t == apple for t in tops)
    assert cards.density[0] == pytest.approx(n_apple / (rows.shape[0] * (rows.shape[1] - 1)))
    assert "'apple'" in cards.labels[0]
    assert cards.labels[5].startswith("<dead")
    # every example's token shows the activation at the activating index
    for ex in cards.examples(0, "top") + cards.examples(0, "quantile"):
        assert ex["tokens"][ex["maxValueTokenIndex"]].strip() == "apple"
        assert ex["values"][ex["maxValueTokenIndex"]] == pytest.approx(ex["maxValue"], rel=1e-2)


def test_fire_together_and_histogram(planted):
    _, _, _, cards, _, n_apple = planted
    # features 0 and 1 fire on the same tokens: phi = 1, each other's first neighbour
    assert cards.neighbours(0, "cofire")[0][0] == 1
    assert cards.neighbours(0, "cofire")[0][1] == pytest.approx(1.0, abs=1e-3)
    centres, heights = cards.histogram(0)
    assert sum(heights) == n_apple and len(centres) == len(heights)
    assert max(centres) <= cards.max_act[0]


def test_sparse_activations_skip_position_zero(planted):
    lm, sae, rows, _, _, _ = planted
    pos, _, val = sparse_activations(lm, sae, rows, progress=False)
    assert not np.any(pos % rows.shape[1] == 0)
    assert np.all(val > 0)


@pytest.mark.parametrize("family", ["llama", "gemma", "gpt2"])
def test_logit_lens_equals_direct_computation(family, one_thread):
    """W_U applied to the final norm's weight times the direction (centred for LayerNorm), as computed directly
    from the model's own modules; the norm weight is randomised so it matters."""
    lm = tiny_model(family, n_layers=2, d_model=64, seed=1)
    m = lm.model
    norm = m.transformer.ln_f if family == "gpt2" else m.model.norm
    with torch.no_grad():
        norm.weight.copy_(torch.randn_like(norm.weight))
    dirs = torch.randn(6, 64, generator=torch.Generator().manual_seed(3))
    got = logit_lens(lm, dirs, k=10)
    for i, d in enumerate(dirs):
        with torch.no_grad():
            # the module itself, on the direction: differs from the lens only by a positive scale (1/rms or
            # 1/std) and, for LayerNorm, the bias, which we remove by subtracting the module's output on 0.
            direct = m.get_output_embeddings()(norm(d[None]) - norm(torch.zeros(1, 64)))[0]
        assert got["pos_ids"][i].tolist() == direct.topk(10).indices.tolist()
        assert got["neg_ids"][i].tolist() == direct.topk(10, largest=False).indices.tolist()
    g, w_u, centre = final_norm_and_unembed(lm)
    assert centre == (family == "gpt2")
    if family == "gemma":  # Gemma's RMSNorm multiplies by (1 + weight)
        assert torch.allclose(g, 1 + norm.weight)


def test_card_carries_neuronpedia_fields_and_round_trips(planted, tmp_path):
    cards = planted[3]
    card = cards.card(0)
    for key in (
        "modelId",
        "layer",
        "index",
        "activations",
        "pos_str",
        "pos_values",
        "neg_str",
        "neg_values",
        "frac_nonzero",
        "freq_hist_data_bar_heights",
        "freq_hist_data_bar_values",
        "explanations",
        "maxActApprox",
        "correlated_features_indices",
        "topkCosSimIndices",
    ):
        assert key in card, key
    assert len(card["freq_hist_data_bar_heights"]) == len(card["freq_hist_data_bar_values"])
    assert {"tokens", "values", "maxValue"} <= set(card["activations"][0])
    assert card["explanations"][0]["description"] == cards.labels[0]
    cards.save(tmp_path / "c")
    back = store.load_cards(tmp_path / "c")
    assert back.labels == cards.labels and back.identity == cards.identity
    assert np.array_equal(back.top_pos, cards.top_pos)
    np.testing.assert_allclose(back.top_val, cards.top_val, rtol=1e-3)
    assert back.card(0)["pos_str"] == card["pos_str"]


def test_find_cards_checks_identity(planted, tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    cards = planted[3]
    assert store.find_cards(cards.identity, "tiny") is None
    cards.save(store.cache_location(cards.identity))
    assert store.find_cards(cards.identity, "tiny").labels == cards.labels
    assert store.find_cards(cards.identity + "x", "tiny") is None


def test_bad_feature_id_is_one_line(planted):
    with pytest.raises(Exception, match=r"feature 99 is out of range: this SAE has features 0\.\.15"):
        planted[3].card(99)


@pytest.mark.parametrize("module", [label, tokens])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
