"""The rl-compare report (crl.analysis.report.diffing): self-contained HTML with the verdict, every feature id with
its card's label and a card link that resolves in cards.html; without cards, bare ids and the build hint."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from crl.analysis.diffing.diff import read_result, write_result
from crl.analysis.report.cards import CARDS_PAGE, INDEX_PAGE, LABEL_HEADER, FeatureRefs
from crl.analysis.report.diffing import diffing_report
from crl.cards.store import load_cards
from tests.analysis.checks import assert_self_contained
from tests.analysis.diffing.conftest import J

SHIPPED = Path(__file__).resolve().parents[3] / "crl" / "saes" / "smollm2-135m-instruct" / "layer15" / "cards"


@pytest.fixture(scope="module")
def shipped():
    return load_cards(SHIPPED)


def test_report_shows_the_verdict_and_links_every_feature(planted, shipped, tmp_path):
    refs = FeatureRefs(shipped, None, 1)  # the tiny SAE's ids, labelled by real cards: only the links are checked
    path = diffing_report(planted, refs, tmp_path)
    text = path.read_text(encoding="utf-8")
    assert_self_contained(text)
    for line in planted.verdict[:2]:
        assert html.escape(line) in text
    for section in ("Verdict", "What GRPO moved", "Did CRL pick them?", "Causal checks", "Side effects"):
        assert f">{section}</h2>" in text
    assert html.escape(LABEL_HEADER) in text
    cards = (tmp_path / CARDS_PAGE).read_text(encoding="utf-8")
    links = set(re.findall(rf'href="{CARDS_PAGE}#(feature-\d+)"', text))
    assert f"feature-{J}" in links
    assert all(f'id="{link}"' in cards for link in links)
    assert (tmp_path / INDEX_PAGE).exists()
    assert html.escape(f"{J} ≈{shipped.label(J)}") in text  # a feature in running text: id and label


def test_report_from_written_tables_without_cards(planted, tmp_path):
    write_result(planted, tmp_path / "out")
    back = read_result(tmp_path / "out")
    path = diffing_report(back, FeatureRefs(layer=1), tmp_path / "out")
    text = path.read_text(encoding="utf-8")
    assert "crl features build steering.layer=1" in text
    assert CARDS_PAGE + "#" not in text and not (tmp_path / "out" / CARDS_PAGE).exists()
