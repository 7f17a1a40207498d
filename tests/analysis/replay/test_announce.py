"""`crl analyze` says what it runs with the model: the phases up front, each phase's start (with its size), the
progress of its rollouts and its end (with its wall time); a measurement taken from its stored file says "reused"."""

from __future__ import annotations

import re

from tests.analysis.replay.planted import CuePolicy, write_real_run


def _lines(err: str, pattern: str) -> list[str]:
    return re.findall(rf"^\[crl analyze\] {pattern}.*$", err, re.M)


def test_analyze_prints_each_replay_phase_and_what_it_reuses(comps, tmp_path, monkeypatch, capsys):
    import crl.progress
    from crl.analysis.replay import runner
    from crl.analysis.report.analyze import analyze_run
    from crl.config import AnalyzeConfig
    from crl.run.components import Components

    d = write_real_run(tmp_path / "run", comps, CuePolicy(comps))
    monkeypatch.setattr(crl.progress, "EVERY_S", 0.0)  # every rollout step prints its progress line
    monkeypatch.setattr(runner, "load_components", lambda run_dir: comps)  # the planted world is the run's model
    monkeypatch.setattr(Components, "load_policy", lambda self, run_dir, greedy=False: CuePolicy(self))
    settings = {"run_dir": str(d), "n_boot": 50, "env_seeds": [0], "offtask": False}  # offtask: no safe prompts here

    # Outside `crl analyze` a labelled rollout prints nothing and gives the same episodes.
    test = comps.splits["test"]
    plain = runner.rollout(comps, test, CuePolicy(comps))
    labelled = runner.rollout(comps, test, CuePolicy(comps), progress="a label")
    assert [e.completion for e in labelled] == [e.completion for e in plain]
    assert capsys.readouterr().err == ""

    analyze_run(AnalyzeConfig(**settings, env=True))
    err = capsys.readouterr().err
    (first,) = _lines(err, "phases that run the model: ")
    assert err.startswith(first)
    assert "baselines (random, static, corr, prompting, letter_prior; none logged already)" in first
    assert "causal checks" in first and "reused" not in first
    (start,) = _lines(err, "baselines: static feature — ")
    assert re.search(r"— \d+ candidates × 1 level × 8 train prompts, then 3 coefficients × 8 val prompts$", start)
    steps = _lines(err, r"baselines: static feature, candidate \d+/\d+ \(feature \d+, level \+1\) on train  \d+/")
    assert steps and all(re.search(r"prompts \([\d.]+%\) .* ETA", s) for s in steps)
    assert _lines(err, "baselines: static feature done in ")
    assert _lines(err, r"baselines on test — random, static, prompting × 8 test prompts$")
    assert _lines(err, r"baselines on test, random, seed 0  \d+/24 prompts")
    assert _lines(err, r"baselines on test done in \d+s \(24 prompts\)$")
    for name in ("baselines: prompting", "branch points", "coefficient sweep", "steering effects", "causal checks"):
        assert _lines(err, f"{name} — ") and _lines(err, f"{name} done in "), name

    analyze_run(AnalyzeConfig(**settings))  # nothing changed: the stored measurements are current
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "[crl analyze] phases that run the model: none; steering effects: reused (stored "
        "analysis/feature_effects.json); causal checks: reused (stored analysis/causal.json)"
    )
    assert _lines(err, r"causal checks: reused \(stored analysis/causal.json\)$")
    assert not _lines(err, ".* done in ")
