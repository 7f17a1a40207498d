"""`crl rl-compare` end to end on tiny runs: a planted `crl train` run and a GRPO run directory in `crl grpo`'s layout
whose full weights shift every token's embedding along the CRL run's first planted feature (made by hand: a real tiny
GRPO run never learns the planted task). The command finds that feature and writes its tables, summary and report;
bad input is one line before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from crl.analysis.diffing.diff import SUMMARY_FILE
from crl.backends.model import FULL_WEIGHTS, TUNED_DIR, WEIGHTS_INFO
from crl.logs import schema
from tests.run.helpers import QUICK as RUN_QUICK
from tests.run.helpers import crl

QUICK = [*RUN_QUICK, "ppo.total_updates=2"]
FAST = ["n=16", "ks=[1,3,5]", "n_null=100", "n_causal_null=2", "n_boot=200"]


def fake_grpo_run(crl_dir: Path, out: Path, shift: float) -> tuple[Path, int]:
    """A finished `crl grpo` run of the CRL run's model, SAE and task, whose tuned full weights add `shift` times the
    first planted feature's unit decoder direction to every token's embedding; returns it and that feature."""
    from safetensors.torch import save_model

    from crl.analysis.replay.runner import load_components

    comps = load_components(crl_dir)
    feature = comps.planted[0]
    with torch.no_grad():
        comps.lm.model.get_input_embeddings().weight += shift * comps.sae.directions(unit=True)[feature]
    (out / TUNED_DIR).mkdir(parents=True)
    save_model(comps.lm.model, str(out / TUNED_DIR / FULL_WEIGHTS))
    (out / TUNED_DIR / WEIGHTS_INFO).write_text(json.dumps({"kind": "full", "base_model": comps.lm.name}))
    info = json.loads((crl_dir / schema.RUN_JSON).read_text())
    (out / schema.RUN_JSON).write_text(json.dumps({**info, "run": "grpo-fake", "method": "grpo"}))
    shutil.copy(crl_dir / schema.CONFIG_YAML, out / schema.CONFIG_YAML)
    (out / schema.SUMMARY).write_text("{}")
    return out, feature


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> tuple[Path, Path, int]:
    root = tmp_path_factory.mktemp("rl_compare")
    assert crl("train", *QUICK, f"hydra.run.dir={root / 'crl'}") == 0
    grpo, feature = fake_grpo_run(root / "crl", root / "grpo", shift=0.5)
    return root / "crl", grpo, feature


def test_rl_compare_finds_the_planted_change_and_writes_everything(runs, capsys):
    crl_dir, grpo_dir, feature = runs
    assert crl("rl-compare", f"crl_run={crl_dir}", f"grpo_run={grpo_dir}", *FAST) == 0
    stdout = capsys.readouterr().out
    out = grpo_dir / "rl_compare" / crl_dir.name
    for name in ("features.csv", "crl_usage.csv", "overlap.csv", "agreement.csv", "causal.csv", SUMMARY_FILE):
        assert (out / name).exists(), name
    assert (out / "report.html").exists() and (out / "moved_features.png").exists()
    table = pd.read_csv(out / "features.csv")
    assert feature in table.sort_values("rank_shift")["feature"].head(3).tolist()
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["settings"]["crl_run"] == str(crl_dir) and summary["settings"]["weights_kind"] == "full"
    assert summary["shift"]["delta_p"] < 0.05
    assert stdout.count("\n- ") == len(summary["verdict"]) and "GRPO moved the residual at layer 1" in stdout


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("crl: error: ")
    return err[0]


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: bad input must stop before."""

    def loaded(*_a, **_k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr("crl.analysis.replay.runner.load_components", loaded)
    monkeypatch.setattr("crl.backends.model.load_model", loaded)


def _variant(grpo_dir: Path, tmp_path: Path, **run_json) -> Path:
    d = tmp_path / "variant"
    shutil.copytree(grpo_dir, d, ignore=shutil.ignore_patterns("rl_compare"))
    info = json.loads((d / schema.RUN_JSON).read_text())
    (d / schema.RUN_JSON).write_text(json.dumps({**info, **run_json}))
    return d


@pytest.mark.parametrize(
    "change,expect",
    [
        ({"task": "compare"}, "not comparable: task: crl_run has 'planted', grpo_run 'compare'"),
        ({"sae_identity": "shipped:layer15|x"}, "not comparable: sae_identity"),
        ({"method": "crl"}, "is not a `crl grpo` run"),
    ],
)
def test_runs_of_different_tasks_or_saes_are_one_line(runs, tmp_path, capsys, no_model, change, expect):
    crl_dir, grpo_dir, _ = runs
    bad = _variant(grpo_dir, tmp_path, **change)
    assert crl("rl-compare", f"crl_run={crl_dir}", f"grpo_run={bad}", *FAST) == 2
    assert expect in _one_line(capsys)


def test_unfinished_or_failed_grpo_runs_are_one_line(runs, tmp_path, capsys, no_model):
    crl_dir, grpo_dir, _ = runs
    bad = _variant(grpo_dir, tmp_path)
    (bad / schema.SUMMARY).unlink()
    assert crl("rl-compare", f"crl_run={crl_dir}", f"grpo_run={bad}") == 2
    assert "has not finished (no summary.json)" in _one_line(capsys)
    (bad / schema.SUMMARY).write_text("{}")
    shutil.rmtree(bad / TUNED_DIR)
    assert crl("rl-compare", f"crl_run={crl_dir}", f"grpo_run={bad}") == 2
    assert "without model/" in _one_line(capsys)
    (bad / schema.FAILED).write_text(json.dumps({"error": "boom"}))
    assert crl("rl-compare", f"crl_run={crl_dir}", f"grpo_run={bad}") == 2
    assert "failed" in _one_line(capsys)


def test_missing_or_swapped_runs_are_one_line(runs, tmp_path, capsys, no_model):
    crl_dir, grpo_dir, _ = runs
    assert crl("rl-compare", f"crl_run={crl_dir}") == 2
    assert "needs crl_run=" in _one_line(capsys)
    assert crl("rl-compare", f"crl_run={grpo_dir}", f"grpo_run={crl_dir}") == 2
    assert "is a `crl grpo` run" in _one_line(capsys)
    assert crl("rl-compare", f"crl_run={tmp_path / 'nope'}", f"grpo_run={grpo_dir}") == 2
    assert "does not exist" in _one_line(capsys)
