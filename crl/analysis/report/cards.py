"""Feature ids in the report carry their label and a link to their card.

Every table that lists features gets, right after its feature column, a `label` column (the heuristic label
of the feature's card, `crl.cards.label`; marked heuristic in the header and its tooltip) and a `card` column
(``cards.html#feature-<id>``); the id and the label cells link to the card. For a hub SAE (neuronpedia_id
set) a `neuronpedia` column links to the feature's Neuronpedia page as well. The report then writes, next to
report.html, ``cards.html`` (the cards of every feature the report mentions, and the run's steering effects
when they were measured) and ``feature_index.html`` (every feature of the SAE).

Where the SAE has no cards yet (`crl.cards.store.find_cards` finds none), features keep their bare ids, nothing
is built (a build takes minutes) and the report says in one line how to build them.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from crl.analysis.offline.features import feature_label
from crl.cards.label import HEURISTIC_MARK
from crl.cards.store import FeatureCards, find_cards
from crl.logs.schema import NO_STEER

if TYPE_CHECKING:
    from crl.logs.reader import RunDir

CARDS_PAGE = "cards.html"
INDEX_PAGE = "feature_index.html"
LABEL_HEADER = f"label ({HEURISTIC_MARK} heuristic)"
LABEL_TIP = (
    "Heuristic label from the feature's card: the tokens it fires on most (and the token before them) and the "
    "tokens it promotes (logit lens). A reading aid, not a checked explanation; the id and the label link to the "
    "card."
)
BUILD_HINT = "crl features build"


def card_href(feature: int) -> str:
    """The link to a feature's card from report.html (the card's element id is feature-<id>)."""
    return f"{CARDS_PAGE}#feature-{int(feature)}"


@dataclass
class FeatureRefs:
    """Labels and card links for the features of one SAE; remembers every feature it linked to."""

    cards: FeatureCards | None = None
    neuronpedia_id: str | None = None
    layer: int | None = None  # for the build hint
    mentioned: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, run: RunDir) -> FeatureRefs:
        """The cards of `run`'s SAE (shipped, else cached), or bare ids when there are none."""
        cards = find_cards(run.sae_identity, str(run.info.model))
        return cls(cards, run.neuronpedia_id, run.layer)

    def has_card(self, feature: Any) -> bool:
        if self.cards is None or pd.isna(feature):
            return False
        return 0 <= int(feature) < self.cards.d_sae

    def label(self, feature: int) -> str:
        """The card's heuristic label (unmarked), "no steer" for NO_STEER, else the bare id."""
        return feature_label(feature, self.cards.label if self.has_card(feature) else None)

    def labels(self) -> Callable[[int], str | None]:
        """For `crl.analysis.offline.features.feature_usage(labels=...)`: the card's label, None without one."""
        return lambda f: self.cards.label(f) if self.has_card(f) else None

    def href(self, feature: Any) -> str | None:
        """The card link of `feature` (None without a card); the feature goes onto cards.html."""
        if not self.has_card(feature):
            return None
        self.mentioned.add(int(feature))
        return card_href(int(feature))

    def describe(self, feature: Any) -> str:
        """A feature in running text: ``12 ≈'minimum' → 'less'``, ``no steer``, or the bare id."""
        if pd.isna(feature):
            return ""
        f = int(feature)
        if f == NO_STEER:
            return "no steer"
        if self.has_card(f):
            self.mentioned.add(f)
            return f"{f} {HEURISTIC_MARK}{self.label(f)}"
        return str(f)

    def annotate(self, df: pd.DataFrame, col: str = "feature", link_rows: int | None = None) -> pd.DataFrame:
        """`df` with integer ids in `col` and, right after it, `label`, `card` (and `neuronpedia` + `url` for a
        hub SAE); `label`/`card` already present are replaced. Only the first `link_rows` rows (all when None)
        link to a card, so cards.html holds the features a reader sees."""
        out = df.drop(columns=[c for c in ("label", "card") if c in df.columns and c != col]).copy()
        ids = pd.to_numeric(out[col], errors="coerce").astype("Int64")
        out[col] = ids
        at = list(out.columns).index(col) + 1
        out.insert(at, "label", [self.label(f) if not pd.isna(f) else "" for f in ids])
        n = len(ids) if link_rows is None else link_rows
        out.insert(at + 1, "card", [self.href(f) if i < n else None for i, f in enumerate(ids)])
        if self.neuronpedia_id:
            from crl.analysis.offline.features import neuronpedia_url

            urls = [None if pd.isna(f) else neuronpedia_url(self.neuronpedia_id, int(f)) for f in ids]
            if "url" in out.columns:
                out = out.drop(columns="url")
            out.insert(at + 2, "neuronpedia", ["neuronpedia ↗" if u else None for u in urls])
            out["url"] = urls
        return out

    def columns(self, col: str = "feature") -> list[str]:
        """The shown columns `annotate` adds after `col` (the link targets stay hidden)."""
        return [col, "label", *(["neuronpedia"] if self.neuronpedia_id else [])]

    def table_kw(self, col: str = "feature") -> dict[str, Any]:
        """`Report.add_table` arguments: links to the card from the id and the label, the header mark."""
        links = {col: "card", "label": "card", **({"neuronpedia": "url"} if self.neuronpedia_id else {})}
        if self.cards is None:
            return {"links": links, "tips": {"label": "no feature cards for this SAE: bare ids"}}
        return {"links": links, "headers": {"label": LABEL_HEADER}, "tips": {"label": LABEL_TIP}}

    def note_html(self) -> str:
        """One line: where the labels come from and the links, or that there are no cards and how to build them."""
        if self.cards is None:
            cmd = BUILD_HINT + (f" steering.layer={self.layer}" if self.layer is not None else "")
            return (
                '<p class="note">No feature cards for this SAE yet, so features are shown by bare id; build them '
                f"with <code>{html.escape(cmd)}</code> and the run's model and sae settings (a few minutes), then "
                "write the report again.</p>"
            )
        where = html.escape(str(self.cards.path)) if self.cards.path is not None else "memory"
        return (
            f'<p class="note">Feature labels ({HEURISTIC_MARK}) are heuristic, read off each feature\'s card '
            f"(cards at {where}); a feature's id and label link to its card: "
            f'<a href="{CARDS_PAGE}">the cards of this report\'s features</a>, '
            f'<a href="{INDEX_PAGE}">every feature of this SAE</a>.</p>'
        )

    def write_pages(
        self,
        out: Path,
        title: str,
        effects: dict[int, list[dict]] | None = None,
        run_name: str | None = None,
    ) -> list[Path]:
        """cards.html (every mentioned feature) and feature_index.html next to the report; none without cards."""
        if self.cards is None:
            return []
        from crl.cards.render import cards_page, index_page

        features = sorted(self.mentioned)
        page = cards_page(self.cards, features, title, effects=effects, run_name=run_name, index_href=INDEX_PAGE)
        paths = [Path(out) / CARDS_PAGE, Path(out) / INDEX_PAGE]
        paths[0].write_text(page, encoding="utf-8")
        paths[1].write_text(index_page(self.cards), encoding="utf-8")
        return paths
