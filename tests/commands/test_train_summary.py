"""`crl train`'s closing lines: the top features carry their card's heuristic label, and a task family's accuracy
comes per variant too, printed and in summary.json (crl/commands/train.py)."""

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


def test_a_task_family_gets_one_line_per_variant_under_the_overall_accuracy(capsys):
    rows = [
        {"axis": "wording", "value": "bigger", "none": 0.548, "selected": 0.75, "selected_n": 104, "diff": 0.202}
        | {"diff_lo": 0.115, "diff_hi": 0.279, "verdict": "GAIN"},
        {"axis": "wording", "value": "pick", "none": 0.593, "selected": 0.593, "selected_n": 91, "diff": 0.0}
        | {"diff_lo": 0.0, "diff_hi": 0.0, "verdict": "TIE"},
    ]
    print_summary({**_summary([]), "variants": rows}, Path("runs/x"))
    out = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(out) if line.startswith("[crl] test accuracy"))
    assert (
        out[at + 1] == "[crl]   wording bigger  before 0.548  after 0.750  diff +0.202 [+0.115, +0.279] GAIN  (n=104)"
    )
    assert out[at + 2] == "[crl]   wording pick    before 0.593  after 0.593  diff +0.000 [+0.000, +0.000] TIE   (n=91)"
    assert out[at + 3].startswith("[crl] well-formed rate")
    print_summary(_summary([]), Path("runs/x"))  # not a family: the lines as before
    out = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(out) if line.startswith("[crl] test accuracy"))
    assert out[at + 1].startswith("[crl] well-formed rate")


def test_crl_train_on_a_task_family_prints_and_stores_the_accuracy_per_variant(
    tmp_path, monkeypatch, capsys, one_thread
):
    import torch

    from crl.backends.hooks import HookPoint
    from crl.backends.model import tiny_model
    from crl.backends.sae import sae_from_decoder
    from crl.logs import schema
    from tests.run.helpers import crl

    decoder = torch.randn(16, tiny_model().d_model, generator=torch.Generator().manual_seed(0))
    sae_from_decoder(decoder, HookPoint(1, "post"), "test").sae.save_model(str(tmp_path / "sae"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    family = ["task=compare_family", "task.n_train=64", "task.n_val=24", "task.n_test=48"]
    small = ["policy.hidden=16", "policy.obs_stats_prompts=32", "ppo.total_updates=1", "ppo.episodes_per_update=32"]
    tiny = ["model=tiny", "sae=disk", f"sae.path={tmp_path / 'sae'}", "steering.layer=1", "masking=none"]
    quiet = ["logger=disabled", "run.analyze=false", "ppo.num_envs=32", f"hydra.run.dir={run}"]
    assert crl("train", *tiny, *family, *small, *quiet) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads((run / schema.SUMMARY).read_text())
    rows = summary["variants"]  # 4 wordings x 2 directions, one range (not reported)
    assert [(r["axis"], r["value"]) for r in rows] == [
        *(("wording", w) for w in ("bigger", "pick", "plain", "value")),
        *(("direction", d) for d in ("larger", "smaller")),
    ]
    assert sum(r["selected_n"] for r in rows[:4]) == summary["after"]["n"] == 48
    at = next(i for i, line in enumerate(out) if line.startswith("[crl] test accuracy"))
    assert [line.split()[1:3] for line in out[at + 1 : at + 7]] == [[r["axis"], r["value"]] for r in rows]
    assert out[at + 7].startswith("[crl] well-formed rate")
