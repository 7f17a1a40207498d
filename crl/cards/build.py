"""Cards for the SAE in use: load them (shipped next to the SAE, or cached by its identity), else build them
once on held-out text (`crl.cards.text`) and cache them. One layer of the default model takes about 2 minutes
on 2 CPU cores.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from crl.backends.model import FrozenLM
from crl.backends.sae import LoadedSAE
from crl.cards.compute import compute_cards
from crl.cards.store import FeatureCards, cache_location, find_cards, shipped_location
from crl.cards.text import card_text


def build_cards(lm: FrozenLM, sae: LoadedSAE, progress: bool = True) -> FeatureCards:
    """Compute the cards of `sae` on the card text (not saved)."""
    t0 = time.perf_counter()
    rows, text = card_text(lm.tokenizer)
    crl_sae = sae.source.split(":", 1)[0] in ("shipped", "default")
    text["sae_trained_on_it"] = "no (by construction)" if crl_sae else "unknown: not a CRL-built SAE"
    cards = compute_cards(lm, sae, rows, text, progress=progress)
    cards.meta["build_seconds"] = round(time.perf_counter() - t0, 1)
    return cards


def cards_path(sae: LoadedSAE, model_name: str) -> Path:
    """Where this SAE's cards are (or would be cached)."""
    return shipped_location(sae.identity, model_name) or cache_location(sae.identity)


def ensure_cards(lm: FrozenLM, sae: LoadedSAE, progress: bool = True, force: bool = False) -> FeatureCards:
    """The cards of `sae`: shipped or cached ones when they exist (and `force` is off), else built and cached."""
    if not force:
        found = find_cards(sae.identity, lm.name)
        if found is not None:
            return found
    cards = build_cards(lm, sae, progress)
    where = cache_location(sae.identity)
    cards.save(where)
    if progress:
        print(f"crl features: {sae.d_sae:,} cards in {cards.meta['build_seconds']:.0f}s -> {where}", file=sys.stderr)
    return cards
