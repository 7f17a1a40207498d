"""The shipped SAEs ship their cards: every feature of every shipped layer, for exactly that dictionary."""

from __future__ import annotations

import pytest

from crl.backends.sae_store import shipped_layers, shipped_sae_dir
from crl.cards.store import CARDS_SUBDIR, find_cards, load_cards
from crl.config import DEFAULT_MODEL_NAME, SAEConfig


@pytest.mark.parametrize("layer", shipped_layers())
def test_shipped_layer_has_a_card_for_every_feature(layer):
    from crl.backends.sae import load_sae

    sae = load_sae(SAEConfig(source="default", layer=layer))
    cards = find_cards(sae.identity, DEFAULT_MODEL_NAME)
    assert cards is not None, f"no cards for {sae.identity}"
    assert cards.path == shipped_sae_dir(DEFAULT_MODEL_NAME, layer) / CARDS_SUBDIR
    assert cards.d_sae == sae.d_sae == len(cards.labels)
    alive = cards.density > 0
    assert alive.mean() > 0.95
    assert (cards.top_pos[alive, 0] >= 0).all() and (cards.top_pos[~alive, 0] < 0).all()
    assert cards.meta["text"]["n_tokens"] >= 60_000
    assert cards.meta["text"]["sae_trained_on_it"].startswith("no")
    # every card renders as Neuronpedia JSON
    for f in (0, sae.d_sae - 1, int(alive.argmax())):
        assert load_cards(cards.path).card(f)["index"] == str(f)


def test_three_layers_ship():
    assert shipped_layers() == [6, 15, 24]
