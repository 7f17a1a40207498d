"""Checkpoint selection on val: the best update wins, ties go to the earlier one, patience stops, resume agrees."""

from __future__ import annotations

import pytest
import torch

from crl.config import RunConfig
from crl.envs.rollout import Episode
from crl.envs.tasks.base import Example
from crl.errors import CRLError
from crl.logs.writer import RunWriter
from crl.run import selection
from crl.run.selection import BEST_FILE, Selection


def _episodes(accuracy: float, n: int = 20) -> list[Episode]:
    k = round(accuracy * n)
    steps = [
        {
            "feature": -1,
            "step": 0,
            "position": 0,
            "token_id": 0,
            "token": "",
            "coef": 0.0,
            "feature_act": 0.0,
            "resid_norm": 1.0,
        }
    ]
    return [Episode(Example(f"p{i}", "q", "a"), "c", float(i < k), i < k, True, "eos", steps) for i in range(n)]


def _run(tmp_path, monkeypatch, val_curve: list[float], **run_kw) -> tuple[Selection, list[int]]:
    """Feed `val_curve` (val accuracy at updates 0, 1, 2, ...) through Selection with a net whose weights mark the
    update, as training would; returns the selection and the updates actually evaluated."""
    accs = iter(val_curve)
    monkeypatch.setattr("crl.run.evaluate.evaluate", lambda *a, **k: _episodes(next(accs)))
    sel = Selection(tmp_path, RunConfig(**run_kw))
    net = torch.nn.Linear(1, 1)
    evaluated = []
    writer = RunWriter(tmp_path / "logs")
    try:
        for update in range(len(val_curve)):
            if sel.stopped:
                break
            with torch.no_grad():
                net.weight.fill_(update)
            sel.evaluate(None, net, update, writer, "run", 0)
            evaluated.append(update)
    finally:
        writer.close()
    return sel, evaluated


def test_best_update_is_selected_and_its_weights_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "PolicyAgent", lambda net, greedy: None)
    sel, _ = _run(tmp_path, monkeypatch, [0.50, 0.55, 0.70, 0.60, 0.65])
    assert sel.chosen(last_update=4) == 2
    assert sel.best_state()["weight"].item() == 2.0  # checkpoints/best.pt holds update 2's policy
    summary = sel.summary(2, 4, None, _episodes(0.9))
    assert summary["val_before"] == 0.5 and summary["val_selected"] == 0.7
    assert [r["update"] for r in summary["val_curve"]] == [0, 1, 2, 3, 4]


def test_ties_keep_the_earlier_update_so_no_gain_means_no_steering(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "PolicyAgent", lambda net, greedy: None)
    sel, _ = _run(tmp_path, monkeypatch, [0.60, 0.60, 0.55, 0.60])
    assert sel.chosen(last_update=3) == 0  # update 0 is the untrained (no-steering) policy


def test_select_last_ignores_val(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "PolicyAgent", lambda net, greedy: None)
    sel, _ = _run(tmp_path, monkeypatch, [0.5, 0.9, 0.6], select="last")
    assert sel.chosen(last_update=2) == 2


def test_patience_stops_after_evals_without_improvement(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "PolicyAgent", lambda net, greedy: None)
    sel, evaluated = _run(tmp_path, monkeypatch, [0.5, 0.6, 0.6, 0.55, 0.9, 0.9], patience=2)
    assert evaluated == [0, 1, 2, 3] and sel.stopped_at == 3  # 2 evals without a better val accuracy
    assert sel.chosen(last_update=3) == 1


def test_state_round_trip_and_a_stale_best_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "PolicyAgent", lambda net, greedy: None)
    sel, _ = _run(tmp_path, monkeypatch, [0.5, 0.7])
    again = Selection(tmp_path, RunConfig())
    again.load_state_dict(sel.state_dict())
    assert again.chosen(1) == 1 and again.best_state()["weight"].item() == 1.0
    again.best_update = 0  # e.g. best.pt from another run: the selection cannot be honoured silently
    with pytest.raises(CRLError, match="not the selected"):
        again.best_state()
    (tmp_path / BEST_FILE).write_bytes(b"torn")
    with pytest.raises(CRLError, match="missing or corrupt"):
        sel.best_state()
