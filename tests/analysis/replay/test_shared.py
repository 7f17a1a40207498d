"""Shared seed-free baselines (`crl analyze env=true shared_baselines=<dir>`, crl/analysis/replay/shared.py): the
second run of a key computes none of them and logs the same rows as its own, another key computes its own, a broken
entry is computed again, and two processes never compute one entry twice; `branch_points=false forced_effects=false`
leaves those sections out of the report with the command that adds them."""

from __future__ import annotations

import json
import re
import threading
import time

import pandas as pd
import pytest

from crl.analysis.replay.shared import SHARED_METHODS, SharedBaselines, key_fields
from crl.logs.reader import load_run
from tests.analysis.replay.planted import CuePolicy, write_real_run

SHARED_PHASES = [f"baseline:{m}:test" for m in ("random", "prompting")]  # corr, letter_prior: skipped with a note
ENTRIES = {f"{m}.json" for m in SHARED_METHODS} | {"key.json", "activations.json", "static_by_activation.json"}
CONFIG = """seed: {seed}
run:
  eval_every: {seed}
logger:
  group: study-{seed}
policy:
  hidden: {hidden}
ppo:
  num_envs: {num_envs}
  lr: {lr}
"""


def _run(tmp_path, comps, name, seed=0, layer=1, num_envs=8, wrong=frozenset()):
    """A planted run directory named `name` (run.json and rows), with a config.yaml whose seed, run, logger, policy
    and ppo.lr follow the seed."""
    d = write_real_run(tmp_path / name, comps, CuePolicy(comps, wrong))
    info = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, "run": name, "seed": seed, "layer": layer}))
    for log in ("episodes.jsonl", "interventions.jsonl"):
        (d / log).write_text((d / log).read_text().replace('"run": "planted-run"', f'"run": "{name}"'))
    (d / "config.yaml").write_text(CONFIG.format(seed=seed, hidden=64 + seed, num_envs=num_envs, lr=0.001 * (seed + 1)))
    return d


@pytest.fixture
def analyze(comps, monkeypatch, capsys):
    """`crl analyze env=true` on the planted world (its model is every run's), the cheap settings; returns stderr."""
    from crl.analysis.replay import runner
    from crl.analysis.report.analyze import analyze_run
    from crl.config import AnalyzeConfig
    from crl.run.components import Components

    monkeypatch.setattr(runner, "load_components", lambda run_dir: comps)
    monkeypatch.setattr(Components, "load_policy", lambda self, run_dir, greedy=False: CuePolicy(self))
    cheap = {"n_boot": 50, "env_seeds": [0, 1], "offtask": False, "causal": False, "feature_effects": False}

    def run(d, **settings):
        capsys.readouterr()
        res = analyze_run(AnalyzeConfig(run_dir=str(d), env=True, **{**cheap, **settings}))
        return res, capsys.readouterr().err

    return run


def _rows(d, phases=None):
    """The baseline episodes of a run without its name and episode ids, and the run's own ids of them."""
    run = load_run(d, include_train=False)
    eps = run.episodes[
        run.episodes["phase"].str.startswith("baseline:") & (run.episodes["phase"] != "baseline:none:test")
    ]
    if phases is not None:
        eps = eps[eps["phase"].isin(phases)]
    cols = ["phase", "prompt_id", "seed", "completion", "reward", "correct", "well_formed", "n_steps"]
    return eps[cols].reset_index(drop=True), eps, run


def _entries(shared):
    return {p.parent.name: sorted(q.name for q in p.parent.iterdir() if not q.name.startswith(".")) for p in
            shared.glob("*/key.json")}  # fmt: skip


def test_the_second_seed_reuses_every_shared_baseline_and_logs_the_same_rows(comps, analyze, tmp_path):
    shared = tmp_path / "shared"
    a = _run(tmp_path, comps, "cell-s0", seed=0)
    b = _run(tmp_path, comps, "cell-s1", seed=1, wrong={comps.splits["test"][0].id})  # another policy
    plain = _run(tmp_path, comps, "plain", seed=0)

    _, err_a = analyze(a, shared_baselines=str(shared))
    (key,) = _entries(shared)
    assert set(_entries(shared)[key]) == ENTRIES  # one entry per shared method, and static's shared parts
    assert re.search(rf"baselines: random, corr, prompting, letter_prior .*computed here and stored in {shared} "
                     rf"\(key {key}\)$", err_a, re.M)  # fmt: skip
    assert "reused from" not in err_a
    stamps = {p.name: p.stat().st_mtime_ns for p in (shared / key).iterdir()}

    _, err_b = analyze(b, shared_baselines=str(shared))
    first = err_b.splitlines()[0]
    assert "prompting, letter_prior stored in" in first and "random, corr, " in first  # said up front
    line = f"[crl analyze] baselines: random, corr, prompting, letter_prior (the unsteered pass, static's candidates " \
           f"by activation) reused from {shared} (key {key})"  # fmt: skip
    assert line in err_b.splitlines() and "computed here" not in err_b
    assert "baselines: prompting — " not in err_b and "baselines on test, random" not in err_b  # nothing of them ran
    assert "baselines: unsteered activations" not in err_b
    assert re.search(r"baselines: static feature — .*\(\d+ candidate scores shared\)$", err_b, re.M)  # static ran
    assert {p.name: p.stat().st_mtime_ns for p in (shared / key).iterdir()} == stamps  # nothing stored again
    assert list(_entries(shared)) == [key]

    # B's shared phases are A's rows under B's name and B's own episode ids, after B's training rows.
    rows_a, _, _ = _rows(a, SHARED_PHASES)
    rows_b, eps_b, run_b = _rows(b, SHARED_PHASES)
    pd.testing.assert_frame_equal(rows_a, rows_b)
    assert len(rows_b) == 2 * 8 + 8 and set(eps_b["run"]) == {"cell-s1"}  # random: 2 seeds; prompting: one
    _, new_b, _ = _rows(b)  # every phase `crl analyze` added
    assert new_b["episode"].is_unique and new_b["episode"].min() == 8  # after the 8 logged ones (ids 0-7)
    steps_b = run_b.steps[run_b.steps["phase"].isin(SHARED_PHASES)]
    assert set(steps_b["episode"]) <= set(eps_b["episode"]) and set(steps_b["run"]) == {"cell-s1"}
    assert "baseline:static:test" in run_b.phases  # static stays each run's own

    # Shared or not, a run logs the same baselines and the same selection table.
    analyze(plain)
    rows_plain, _, _ = _rows(plain)
    rows_a_all, _, _ = _rows(a)
    pd.testing.assert_frame_equal(rows_a_all, rows_plain)
    sel = lambda d: pd.read_csv(d / "analysis" / "baseline_selection.csv")  # noqa: E731
    pd.testing.assert_frame_equal(sel(a), sel(plain))
    outs = lambda d: pd.read_csv(d / "analysis" / "baseline_val_outcomes.csv")  # noqa: E731
    pd.testing.assert_frame_equal(outs(a), outs(plain))  # the val outcomes too
    sel_b = sel(b)
    pd.testing.assert_frame_equal(
        sel_b[sel_b["method"] == "prompting"].reset_index(drop=True),
        sel(a)[sel(a)["method"] == "prompting"].reset_index(drop=True),
    )


def test_another_layer_or_other_env_seeds_get_their_own_key(comps, analyze, tmp_path):
    shared = tmp_path / "shared"
    analyze(_run(tmp_path, comps, "l1"), shared_baselines=str(shared))
    _, err = analyze(_run(tmp_path, comps, "l0", layer=0), shared_baselines=str(shared))
    assert "reused from" not in err and "computed here and stored" in err
    _, err = analyze(_run(tmp_path, comps, "l1-one-seed"), shared_baselines=str(shared), env_seeds=[0])
    assert "reused from" not in err and "computed here and stored" in err
    keys = _entries(shared)
    assert len(keys) == 3 and all(set(v) == ENTRIES for v in keys.values())
    one = load_run(tmp_path / "l1-one-seed").episodes_of("baseline:random:test")
    assert sorted(set(one["seed"])) == [0]


def test_the_key_drops_what_cannot_change_the_baselines(comps, tmp_path):
    from crl.analysis.replay.baselines import BaselineConfig

    cfg = BaselineConfig(seeds=[0, 1])
    key = lambda d, c=cfg: SharedBaselines.for_run(tmp_path / "s", d, c).key  # noqa: E731
    s0 = key(_run(tmp_path, comps, "s0", seed=0))
    assert key(_run(tmp_path, comps, "s3", seed=3)) == s0  # seed, run, logger, policy, ppo.lr: the same key
    assert key(_run(tmp_path, comps, "batch", num_envs=4)) != s0  # the lockstep batch size can change the numerics
    assert key(tmp_path / "s0", BaselineConfig(seeds=[0, 1], n_usage=2)) == s0  # n_usage: static's own candidates
    assert key(tmp_path / "s0", BaselineConfig(seeds=[0, 1], max_select_prompts=4)) != s0
    fields = key_fields(tmp_path / "s0", cfg)
    assert set(fields["config"]) == {"ppo"} and fields["config"]["ppo"] == {"num_envs": 8}
    assert fields["identity"]["layer"] == 1 and fields["identity"]["sae_identity"] == comps.sae.identity
    assert fields["baselines"]["seeds"] == [0, 1] and "methods" not in fields["baselines"]


def test_a_killed_or_damaged_entry_is_computed_again(comps, analyze, tmp_path):
    shared = tmp_path / "shared"
    a = _run(tmp_path, comps, "a")
    analyze(a, shared_baselines=str(shared))
    (key,) = _entries(shared)
    entry = shared / key
    # A run killed while writing random.json leaves only the temp file; prompting.json was cut short.
    text = (entry / "random.json").read_text()
    (entry / "random.json").unlink()
    (entry / ".random.json.tmp").write_text(text[: len(text) // 2])
    (entry / "prompting.json").write_text((entry / "prompting.json").read_text()[:-10])
    b = _run(tmp_path, comps, "b", seed=1)
    _, err = analyze(b, shared_baselines=str(shared))
    assert re.search(r"baselines: random, prompting computed here and stored in ", err)
    assert re.search(r"baselines: corr, letter_prior \(.*\) reused from ", err)
    assert json.loads((entry / "random.json").read_text())["key"].startswith(key)  # whole again
    pd.testing.assert_frame_equal(_rows(a, SHARED_PHASES)[0], _rows(b, SHARED_PHASES)[0])


def test_a_stored_entry_keeps_the_val_outcomes(comps, tmp_path):
    from crl.analysis.replay.baselines import BaselineConfig, run_baselines, write_rows
    from tests.analysis.replay.planted import check_val_outcomes

    cfg = BaselineConfig(seeds=[0], methods=["prompting"], max_select_prompts=2)
    fields = {"any": "key"}
    stored = SharedBaselines(tmp_path / "s", fields).method(comps, cfg, "prompting")
    second = SharedBaselines(tmp_path / "s", fields)
    read = second.method(comps, cfg, "prompting")  # read back from its JSON
    assert second.reused == ["prompting"] and not second.stored
    fresh = run_baselines(comps, cfg).rows().selection
    assert read.selection == stored.selection == fresh
    check_val_outcomes(pd.DataFrame(read.selection), comps.splits["val"], len(comps.splits["val"]))
    d = _run(tmp_path, comps, "cell")
    write_rows(d, read)
    outs = pd.read_csv(d / "analysis" / "baseline_val_outcomes.csv")
    val_rows = [i for i, r in enumerate(fresh) if r["stage"] == "prompt@val"]
    assert sorted(set(outs["row"])) == val_rows and len(outs) == len(val_rows) * len(comps.splits["val"])


def test_two_processes_compute_one_entry_once(tmp_path):
    fields = {"any": "key"}
    calls: list[str] = []

    def slow(who: str):
        def compute():
            calls.append(who)
            time.sleep(0.3)
            return {"by": who}

        return compute

    got: dict[str, object] = {}
    first, second = SharedBaselines(tmp_path, fields), SharedBaselines(tmp_path, fields)
    t = threading.Thread(target=lambda: got.update(first=first.get("random", slow("first"))))
    t.start()
    time.sleep(0.1)  # the first holds the entry's lock and computes
    got["second"] = second.get("random", slow("second"))
    t.join()
    assert calls == ["first"] and got == {"first": {"by": "first"}, "second": {"by": "first"}}
    assert first.stored == ["random"] and second.reused == ["random"]
    assert sorted(p.name for p in first.dir.iterdir()) == [".random.lock", "key.json", "random.json"]


def test_without_branch_points_and_forced_effects_the_report_names_the_command(comps, analyze, tmp_path):
    d = _run(tmp_path, comps, "cell")
    res, err = analyze(d, branch_points=False, forced_effects=False)
    first = err.splitlines()[0]
    assert "branch points" not in first and "forced-feature effects" not in first and "side effects" not in first
    assert not {"branch_points.csv", "effects.csv", "side_effects.csv"} & {p.name for p in (d / "analysis").iterdir()}
    html = res.html.read_text()
    command = f"crl analyze run_dir={d} env=true"
    assert "Not computed: branch points" in html and command in html
    assert "Not computed: KL on neutral prompts" in html
    assert "Forced-feature effects vs no steering: not computed" in html
    assert "coefficient tolerance" in html  # the rest still ran
