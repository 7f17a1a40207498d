"""Card pages, the index page and the terminal card, rendered from the shipped layer-15 cards (real, fast to load)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from crl.backends.sae_store import shipped_sae_dir
from crl.cards.label import HEURISTIC_MARK
from crl.cards.render import LABEL_HELP, card_html, card_text, cards_page, index_page, shown_token
from crl.cards.store import CARDS_SUBDIR, load_cards, neuronpedia_url
from crl.config import DEFAULT_MODEL_NAME

CARDS_DIR = shipped_sae_dir(DEFAULT_MODEL_NAME, 15) / CARDS_SUBDIR
FEATURES = [1398, 652, 384]
EFFECTS = {
    1398: [
        {
            "level": 1,
            "coef": 1.0,
            "kl_neutral": 0.0123,
            "kl_task": 0.456,
            "top1_changed_neutral": 0.05,
            "top1_changed_task": 0.42,
            "n_neutral": 64,
            "n_task": 200,
            "promotes": [[" Bzzt", 1.2]],
            "demotes": [[" Azzt", -2.1]],
        },
        {
            "level": -1,
            "coef": 1.0,
            "kl_neutral": 0.01,
            "kl_task": 0.2,
            "top1_changed_neutral": 0.02,
            "top1_changed_task": 0.1,
            "n_neutral": 64,
            "n_task": 200,
            "promotes": [],
            "demotes": [],
        },
    ]
}


class Page(HTMLParser):
    """Every element id, every href/src, the text of each tag, and the raw JSON data block."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: list[tuple[str, str]] = []  # (tag, url)
        self.tags: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.data: str = ""
        self._in_data = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.append(a["id"])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.links.append((tag, a[key]))
        if tag == "script":
            self.scripts.append(a)
            self._in_data = a.get("id") == "cards-data"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            self.data += data


@pytest.fixture(scope="module")
def cards():
    return load_cards(CARDS_DIR)


def _no_remote_resources(page: Page) -> None:
    assert "link" not in page.tags and "img" not in page.tags and "iframe" not in page.tags
    assert all(not s.get("src") for s in page.scripts)  # every script is inline
    remote = [(t, u) for t, u in page.links if "//" in u]
    assert all(t == "a" and u.startswith("https://www.neuronpedia.org/") for t, u in remote), remote


def test_card_is_one_section_with_label_stats_and_examples(cards):
    f = 1398
    html = card_html(cards, f)
    page = Page(html)
    assert html.startswith(f'<section class="card" id="feature-{f}">') and html.endswith("</section>")
    assert page.ids == [f"feature-{f}"]
    assert f"{HEURISTIC_MARK} {cards.label(f)}".replace("'", "&#x27;").replace("<", "&lt;").replace(">", "&gt;") in html
    assert LABEL_HELP.replace("'", "&#x27;") in html  # the label says it is a heuristic, and how it is made
    n = round(1 / float(cards.density[f]))
    assert f"1 in {n:,} tokens" in html and f"{float(cards.max_act[f]):.2f}" in html
    assert html.count('class="ctx"') == len(cards.examples(f, "top")) + len(cards.examples(f, "quantile"))
    outlined = len(re.findall(r'class="t at( g)?"', html))
    assert outlined == html.count('class="ctx"')  # one activating token outlined per example
    assert "<svg" in html and html.count("<rect") == len(cards.histogram(f)[1])
    assert f"{cards.meta['text']['n_tokens']:,} held-out tokens" in html
    top_tok = cards.examples(f, "top")[0]["tokens"][10]
    assert f'title="{cards.examples(f, "top")[0]["maxValue"]:.2f}">{shown_token(top_tok)}</span>' in html
    assert "neuronpedia" not in html  # the shipped SAE has no Neuronpedia id
    assert "steers with it" not in html  # no effects given, no effects section


def test_bins_show_range_and_shares_that_add_up(cards):
    html = card_html(cards, 652)
    shares = [float(s) for s in re.findall(r"([\d.]+)% of nonzero activations", html)]
    assert len(shares) == len({ex["bin_index"] for ex in cards.examples(652, "quantile")}) >= 3
    assert sum(shares) <= 100.1 and sum(shares) > 90  # bins with no sampled example may be missing


def test_neuronpedia_link_when_the_sae_has_an_id(cards):
    meta = dict(cards.meta, neuronpedia_id="smollm2-135m/15-crl-res-3k")
    with_id = type(cards)(meta, cards.arrays, cards.vocab, cards.labels)
    url = neuronpedia_url("smollm2-135m/15-crl-res-3k", 652)
    assert f'href="{url}"' in card_html(with_id, 652)
    assert f"Neuronpedia: {url}" in card_text(with_id, 652)
    _no_remote_resources(Page(cards_page(with_id, [652], "t")))


def test_effects_section_shows_both_levels(cards):
    html = card_html(cards, 1398, EFFECTS[1398], run_name="compare-L15-s0")
    assert 'When <span class="run">compare-L15-s0</span> steers with it' in html
    assert "amplify (+1 × coef 1)" in html and "suppress (-1 × coef 1)" in html
    assert "0.0123" in html and "0.456" in html and "42%" in html and "200 prompts" in html
    assert "Bzzt" in html and "+1.20" in html and "Azzt" in html and "-2.10" in html


def test_every_feature_link_on_a_cards_page_resolves(cards):
    page = Page(cards_page(cards, FEATURES, "Top features", effects=EFFECTS, run_name="r"))
    ids = set(page.ids)
    assert {f"feature-{f}" for f in FEATURES} <= ids
    local = [u for t, u in page.links if u.startswith("#")]
    assert local and all(u[1:] in ids for u in local)
    # neighbours that are not on the page are not linked at all without an index
    assert not [u for t, u in page.links if "feature-" in u and not u.startswith("#")]
    _no_remote_resources(page)


def test_cards_page_links_off_page_neighbours_to_the_index(cards):
    html = cards_page(cards, FEATURES, "Top features", index_href="index.html")
    page = Page(html)
    off = {u for t, u in page.links if u.startswith("index.html#feature-")}
    neighbours = {g for f in FEATURES for kind in ("cofire", "cos") for g, _ in cards.neighbours(f, kind)}
    assert off == {f"index.html#feature-{g}" for g in neighbours - set(FEATURES)}
    assert ("a", "index.html") in page.links
    assert all(u[1:] in set(page.ids) for t, u in page.links if u.startswith("#"))
    # the table of contents, in the given order, with labels and densities
    toc = re.findall(r'<tr data-f="(\d+)">', html)
    assert toc == [str(f) for f in FEATURES]


def test_index_page_has_every_feature_and_compact_data(cards):
    html = index_page(cards)
    size = len(html.encode())
    assert size < 6_000_000, f"index page is {size / 1e6:.1f} MB"
    page = Page(html)
    ids = [i for i in page.ids if i.startswith("feature-")]
    assert ids == [f"feature-{f}" for f in range(cards.d_sae)]  # one row per feature, in order, no duplicates
    _no_remote_resources(page)
    assert '<section class="card" id=' not in html  # cards are rendered in the browser, not embedded
    data = json.loads(page.data)
    assert all(len(data[k]) == cards.d_sae for k in ("labels", "density", "max", "top", "q", "hist", "lp", "cf"))
    assert len(data["tokens"]) == cards.tokens.size
    # the embedded stream and positions give the same activating token as the store
    f = 652
    for ex, pos in zip(cards.examples(f, "top"), data["top"][f][::2], strict=True):
        assert data["vocab"][data["tokens"][pos]] == ex["tokens"][ex["maxValueTokenIndex"]]
    assert data["vocab"][data["lp"][f][0]] == cards.logit_lens(f)[0][0][0]


def test_tokens_are_escaped_everywhere(cards):
    mutable = load_cards(CARDS_DIR)
    f = 1398
    ex = mutable.examples(f, "top")[0]
    tid = int(mutable.tokens.reshape(-1)[mutable.top_pos[f][0]])
    mutable.vocab[tid] = "</script><b>x"
    assert ex["tokens"][ex["maxValueTokenIndex"]] != "</script><b>x"
    html = card_html(mutable, f)
    assert "&lt;/script&gt;&lt;b&gt;x" in html and "</script><b>" not in html
    index = index_page(mutable)
    assert index.count("</script>") == index.count("<script")  # the data block cannot be closed early
    assert json.loads(Page(index).data)["vocab"].count("</script><b>x") == 1


def test_card_text_has_label_top_token_and_fits_the_width(cards):
    f = 652
    text = card_text(cards, f, EFFECTS.get(f), width=100)
    assert cards.label(f) in text and "(label: heuristic)" in text
    top = cards.examples(f, "top")[0]
    assert f"«{shown_token(top['tokens'][top['maxValueTokenIndex']])}»" in text
    assert f"{top['maxValue']:7.2f} " in text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert sum("«" in line for line in lines) == 10 + len({e["bin_index"] for e in cards.examples(f, "quantile")})
    for g, _ in cards.neighbours(f, "cofire"):
        assert f"#{g}" in text
    with_fx = card_text(cards, 1398, EFFECTS[1398])
    assert "amplify: KL neutral 0.0123, task 0.456" in with_fx and "' Bzzt' +1.20" in with_fx


def test_dead_feature_renders(cards):
    dead = int((cards.density == 0).nonzero()[0][0])
    assert "never fired" in card_html(cards, dead) and "never fired" in card_text(cards, dead)
