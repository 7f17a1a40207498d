"""`crl train`'s closing lines: the top features carry their card's heuristic label (crl/commands/train.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from crl.cards.label import HEURISTIC_MARK
from crl.cards.store import load_cards
from crl.commands.train import print_summary
from crl.run.evaluate import feature_usage

SHIPPED = Path(__file__).resolve().parents[2] / "crl" / "saes" / "smollm2-135m-instruct" / "layer15" / "cards"


def _summary(top: list[dict]) -> dict:
    return {
        "before": {"accuracy": 0.46, "well_formed": 1.0, "n": 200},
        "after": {"accuracy": 0.9, "well_formed": 1.0, "n": 200},
        "split": "test",
        "wall_seconds": 500.0,
        "selection": None,
        "top_features": top,
    }


def _comps(identity: str, model: str) -> SimpleNamespace:
    # The two names feature_usage reads to find the cards, and the Neuronpedia link (None: not a hub SAE).
    sae = SimpleNamespace(identity=identity, neuronpedia_url=lambda f: None)
    return SimpleNamespace(sae=sae, lm=SimpleNamespace(name=model))


def _episodes(features: list[list[int]]) -> list[SimpleNamespace]:
    return [SimpleNamespace(features=fs, reward=1.0) for fs in features]


def test_top_features_carry_labels_from_the_shipped_cards(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    cards = load_cards(SHIPPED)
    eps = _episodes([[-1]] * 54 + [[1398]] * 23 + [[652]] * 9 + [[7]] * 14)
    rows = feature_usage(eps, _comps(cards.identity, cards.meta["model"]), 10)
    assert [r["feature"] for r in rows] == [-1, 1398, 7, 652]
    assert rows[1]["label"] == cards.label(1398) and rows[0]["label"] == "no steer"
    assert rows[1]["card"] == "analysis/cards.html#feature-1398" and rows[0]["card"] is None
    json.dumps(rows)  # summary.json holds them as they are

    print_summary(_summary(rows), tmp_path)
    out = capsys.readouterr().out
    assert "[crl] top features (eval, greedy):" in out
    assert f"1398 {HEURISTIC_MARK}{cards.label(1398)}" in out and f"652 {HEURISTIC_MARK}{cards.label(652)}" in out
    assert all(len(line) <= 120 for line in out.splitlines())  # long labels: one feature per line
    lines = [line for line in out.splitlines() if "1398" in line]
    assert len(lines) == 1 and lines[0].startswith("[crl]    23%  1398 ")


def test_without_cards_the_line_keeps_bare_ids_and_builds_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    eps = _episodes([[-1]] * 54 + [[1398]] * 23 + [[652]] * 9 + [[7]] * 14)
    rows = feature_usage(eps, _comps("default|tiny|d_sae=64", "t"), 3)
    assert [r["label"] for r in rows] == ["no steer", None, None] and not list(tmp_path.iterdir())
    print_summary(_summary(rows), tmp_path)
    assert "[crl] top features (eval, greedy):  no-steer 54%, 1398 23%, 7 14%\n" in capsys.readouterr().out


def test_old_summaries_without_labels_still_print():
    # summary.json of runs from before the cards: no label key
    print_summary(_summary([{"feature": 5, "share": 0.5}, {"feature": -1, "share": 0.5}]), Path("runs/x"))
