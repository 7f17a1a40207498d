"""`crl train`'s run directory (crl/commands/train.py + crl.logs.lifecycle): unique default names, nothing left
by bad input, no new run into a used directory, and `resume=` of a run killed before its first checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.lifecycle import preflight
from crl.logs.reader import read_jsonl
from tests.run.helpers import QUICK, crl

ONE = [*QUICK, "ppo.total_updates=1"]


def _rows(run: Path) -> dict[str, list[dict]]:
    """Every log's rows, without the wall-clock metrics (the only values two identical runs do not share)."""
    timed = ("charts/update_seconds", "charts/decisions_per_sec")
    return {n: [{k: v for k, v in r.items() if k not in timed} for r in read_jsonl(run / n)] for n in schema.LOGS}


def _crl(*argv: str) -> int:
    return crl("train", *argv)


def test_preflight_checks_the_directories_before_hydra_makes_one(tmp_path):
    with pytest.raises(CRLError, match="resume=.*nope is not a CRL run directory \\(it does not exist\\)"):
        preflight([f"resume={tmp_path / 'nope'}"])
    with pytest.raises(CRLError, match="has no run.json"):
        preflight([f"resume={tmp_path}"])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CRLError, match="is not empty; a new run needs a new directory"):
        preflight(["seed=1", f"hydra.run.dir={tmp_path}"])
    assert preflight([f"hydra.run.dir={tmp_path / 'new'}", "seed=1"]) == []
    assert not (tmp_path / "nope").exists() and not (tmp_path / "new").exists()


def test_run_dirs_bad_input_and_a_restart_before_the_first_checkpoint(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    # Bad input found after Hydra made the directory (the layer is checked against the loaded model).
    assert _crl(*ONE, "steering.layer=99") == 2
    assert "steering.layer=99 is out of range" in capsys.readouterr().err
    assert not runs.exists() or not list(runs.iterdir())

    assert _crl(*ONE) == 0
    (run,) = runs.iterdir()
    assert f"-{os.getpid():x}-planted-" in run.name  # ${crl_tag:}: runs started in the same second stay apart
    rows = _rows(run)

    assert _crl(*ONE, f"hydra.run.dir={run}") == 2  # a new run never writes into a used directory
    assert "not empty" in capsys.readouterr().err

    # As if killed before its first checkpoint: `resume=` starts it again from the beginning, in place.
    for name in (schema.CHECKPOINT, "checkpoints/best.pt", schema.SUMMARY, "policy.pt"):
        (run / name).unlink(missing_ok=True)
    with (run / schema.EPISODES).open("a") as fh:
        fh.write('{"phase": "train", "upd')  # and with a torn last line
    assert _crl(f"resume={run}") == 0
    assert "starting it again from the beginning" in capsys.readouterr().out
    assert _rows(run) == rows
    assert [p.name for p in runs.iterdir()] == [run.name] and not (run / schema.FAILED).exists()
    assert Path(run / schema.SUMMARY).exists()
