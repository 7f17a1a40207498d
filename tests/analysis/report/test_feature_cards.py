"""Feature ids in the reports carry their label and a link to their card (crl.analysis.report.cards).

The acceptance test builds a report for a synthetic run whose SAE is the shipped layer-15 SAE, so its shipped
cards label the features; it parses report.html and cards.html with html.parser and checks that every card
link resolves and every feature-id cell has a label.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from crl.analysis.report.analyze import analyze_run
from crl.analysis.report.cards import CARDS_PAGE, INDEX_PAGE, LABEL_HEADER
from crl.analysis.report.compare import compare_runs
from crl.analysis.report.document import _wandb_frame, log_to_wandb
from crl.cards.label import HEURISTIC_MARK
from crl.cards.store import load_cards
from crl.config import AnalyzeConfig, CompareConfig
from crl.logs.schema import NO_STEER
from tests.analysis.checks import assert_png, assert_self_contained
from tests.analysis.synthetic import SyntheticSpec, write_run_dir

SHIPPED = Path(__file__).resolve().parents[3] / "crl" / "saes" / "smollm2-135m-instruct" / "layer15" / "cards"
MAIN, OTHER, STATIC = 1398, 652, 2047


class _Page(HTMLParser):
    """Every table (header texts and tooltips, rows of (cell text, hrefs in the cell)), every href and id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self._cell: list | None = None
        self._row: list | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
            if self._cell is not None:
                self._cell[1].append(a["href"])
        if tag == "table":
            self.tables.append({"head": [], "tips": [], "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ["", []]
            if tag == "th":
                self.tables[-1]["tips"].append(a.get("title"))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            (self.tables[-1]["head"] if tag == "th" else self._row).append(tuple(self._cell))
            self._cell = None
        elif tag == "tr" and self._row:
            self.tables[-1]["rows"].append(self._row)
            self._row = None


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _feature_tables(page: _Page) -> list[dict]:
    """Tables with a feature-id column, each with its column names (headers without their markup)."""
    out = []
    for t in page.tables:
        names = [text for text, _ in t["head"]]
        if "feature" in names:
            out.append({**t, "names": names})
    return out


@pytest.fixture(scope="module")
def shipped():
    return load_cards(SHIPPED)


def _spec(shipped, **kw) -> SyntheticSpec:
    return SyntheticSpec(
        model=shipped.meta["model"],
        layer=15,
        sae_identity=shipped.identity,
        neuronpedia_id=None,
        main_feature=MAIN,
        other_feature=OTHER,
        n_prompts=20,
        **kw,
    )


def _replay_tables(d: Path) -> None:
    """The replay analyses' tables (normally from `crl analyze env=true`), with feature ids in every one."""
    a = d / "analysis"
    a.mkdir(exist_ok=True)
    pd.DataFrame(
        {
            "prompt_id": ["p1", "p2"],
            "step": [0, 1],
            "position": [5, 6],
            "token": ["A", "B"],
            "token_type": ["capitalized"] * 2,
            "feature": [MAIN, NO_STEER],
            "action": [f"+{MAIN}", "no steer"],
            "flip": ["to_incorrect", "to_correct"],
            "alternatives": [f"no steer, −{OTHER}", str(STATIC)],  # a table before actions had signs: bare ids
        }
    ).to_csv(a / "branch_points.csv", index=False)
    pd.DataFrame(
        {"method": ["static", "static"], "stage": ["feature@train", "coef@val"], "feature": [STATIC] * 2}
    ).to_csv(a / "baseline_selection.csv", index=False)
    pd.DataFrame({"feature": [MAIN, OTHER], "coef": [4.0] * 2, "kl_mean": [0.1, 0.2]}).to_csv(
        a / "side_effects.csv", index=False
    )
    pd.DataFrame({"feature": [MAIN], "effect": [0.3]}).to_csv(a / "effects.csv", index=False)
    level = {"level": 1, "coef": 4.0, "kl_neutral": 0.1, "kl_task": 0.2, "top1_changed_neutral": 0.0}
    level.update(top1_changed_task=0.5, n_neutral=8, n_task=8, promotes=[[" less", 1.2]], demotes=[[" more", -1.1]])
    (a / "feature_effects.json").write_text(json.dumps({"run": "synth", "features": {str(MAIN): [level]}}))


def _check_links_and_labels(out: Path, shipped, expect: set[int]) -> _Page:
    """Every card link of report.html resolves in cards.html; every feature-id cell has its card's label."""
    report, cards = _parse(out / "report.html"), _parse(out / CARDS_PAGE)
    assert (out / INDEX_PAGE).exists()
    card_links = [h for h in report.hrefs if h.startswith(CARDS_PAGE + "#")]
    linked = {int(h.rsplit("-", 1)[1]) for h in card_links}
    assert linked >= expect, f"features without a card link: {expect - linked}"
    for href in card_links:
        assert re.fullmatch(rf"{CARDS_PAGE}#feature-\d+", href), href
        assert href.split("#", 1)[1] in cards.ids, f"{href} has no card in {CARDS_PAGE}"
    tables = _feature_tables(report)
    assert tables
    for t in tables:
        fi, li = t["names"].index("feature"), t["names"].index(LABEL_HEADER)
        assert HEURISTIC_MARK in t["names"][li] and t["tips"][li] and "heuristic" in t["tips"][li].lower()
        for row in t["rows"]:
            (fid, fhref), (label, lhref) = row[fi], row[li]
            assert re.fullmatch(r"-?\d+", fid), f"feature cell {fid!r} is not an integer id"
            f = int(fid)
            if f == NO_STEER:
                assert label == "no steer" and not fhref
                continue
            assert label == shipped.label(f) and label != fid, (f, label)
            assert fhref == lhref == [f"{CARDS_PAGE}#feature-{f}"]
    return report


def test_report_labels_every_feature_and_links_it_to_a_card_that_exists(tmp_path, monkeypatch, shipped):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path / "cache"))  # only the shipped cards count
    d = write_run_dir(tmp_path / "run", _spec(shipped))
    _replay_tables(d)
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=200))
    out = res.html.parent
    assert_self_contained(res.html.read_text())
    report = _check_links_and_labels(out, shipped, {MAIN, OTHER, STATIC})
    names = {tuple(t["names"]) for t in _feature_tables(report)}
    # usage, token types, baseline selection, branch points, side effects: each lists features
    assert len(names) >= 5
    html = res.html.read_text()
    assert "Feature labels (≈) are heuristic" in html and f'href="{INDEX_PAGE}"' in html
    # alternatives in a branch-point cell carry labels too, after their sign
    assert f"no steer · −{OTHER} {HEURISTIC_MARK}{shipped.label(OTHER)}" in html.replace("&#x27;", "'")
    assert f"{STATIC} {HEURISTIC_MARK}{shipped.label(STATIC)}" in html.replace("&#x27;", "'")
    assert res.report.tables["feature_usage"].set_index("feature").loc[MAIN, "label"] == shipped.label(MAIN)
    assert {"label", "card"} <= set(res.report.tables["token_types"].columns)
    cards_html = (out / CARDS_PAGE).read_text()
    assert f'id="feature-{MAIN}"' in cards_html and f'id="feature-{STATIC}"' in cards_html
    # wandb gets the same tables: label and card next to feature, ids as ints (None where a row has none)
    for key, df in res.report.tables.items():
        if "feature" in df.columns:
            cols = list(_wandb_frame(df).columns)
            assert cols[cols.index("feature") + 1 : cols.index("feature") + 3] == ["label", "card"], key
    import wandb

    wb = wandb.init(mode="disabled")
    try:
        log_to_wandb(wb, res.report)
    finally:
        wb.finish()


def test_compare_report_labels_and_links_features(tmp_path, monkeypatch, shipped):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path / "cache"))
    dirs = [write_run_dir(tmp_path / f"s{s}", _spec(shipped, run=f"s{s}", seed=s)) for s in (0, 1)]
    dirs.append(write_run_dir(tmp_path / "mm", _spec(shipped, run="mm", task="mmlu")))
    out = tmp_path / "cmp"
    res = compare_runs(CompareConfig(dirs=[str(x) for x in dirs], out_dir=str(out), n_boot=100))
    assert_self_contained(res.html.read_text())
    _check_links_and_labels(out, shipped, {MAIN, OTHER})
    assert {"top_features", "task_specificity"} <= set(res.report.tables)
    assert res.report.tables["top_features"]["label"].tolist()[:1] == [shipped.label(MAIN)]


def test_token_type_table_shows_integer_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path / "cache"))
    # No cards for this SAE: bare ids, no cards.html, and never the float form 1.4e+03 of id 1398.
    d = write_run_dir(tmp_path / "run", SyntheticSpec(main_feature=MAIN, other_feature=1590, neuronpedia_id=None))
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=100))
    tt = res.report.tables["token_types"]
    assert pd.api.types.is_integer_dtype(tt["feature"]) and set(tt["feature"]) == {NO_STEER, MAIN, 1590}
    html = res.html.read_text()
    assert "e+03" not in html and "<td>1398</td>" in html and "<td>1590</td>" in html
    assert not (d / "analysis" / CARDS_PAGE).exists() and "crl features build" in html


def test_one_token_answers_get_a_position_plot_worth_reading(tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path / "cache"))
    # compare-like: every decision at step 0
    d = write_run_dir(tmp_path / "run", SyntheticSpec(tokens=("A",), main_steps=1, neuronpedia_id=None))
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=100))
    assert_png(d / "analysis" / "feature_positions.png")
    assert "Every decision is at token step 0 (a one-token answer)" in res.html.read_text()
