"""The causal check (crl.analysis.offline.causal, crl.analysis.replay.causal, crl.analysis.report.causal).

On the tiny planted world a policy picks the prompt's planted feature at step 0 (the only step the reward reads)
and feature 3 at step 1: each planted feature is sufficient alone, necessary, and not replaceable by a random
feature; feature 3 is none of these. The fractions are checked on a constructed case, the record is reused while
the eval is unchanged, and the report shows the section, its features linked to cards that exist."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crl.analysis.offline.causal import (
    CAUSAL_FILE,
    causal_table,
    estimates,
    is_current,
    matched_pool,
    plan,
    read_causal,
    verdict,
)
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.replay.causal import causal_checks, ensure_causal, write_causal
from crl.analysis.report.causal import TITLE, causal_section
from crl.analysis.report.document import Report
from crl.config import AnalyzeConfig
from crl.errors import CRLError
from crl.logs.reader import load_run
from tests.analysis.replay.planted import D_SAE, PLANTED, CuePolicy, write_real_run

FAST = StatsConfig(n_boot=300, seed=0)
OTHER = 3  # steered at step 1, after the answer token: it cannot matter


class CueThenOther(CuePolicy):
    """The prompt's planted feature at step 0, then feature OTHER at step 1."""

    def act(self, obs, info):
        actions, extras = super().act(obs, info)
        for r in np.flatnonzero(info["active"]):
            if info["step"][r] == 1:
                actions[r] = OTHER
        return actions, extras


@pytest.fixture(scope="module")
def run_dir(comps, tmp_path_factory):
    return write_real_run(tmp_path_factory.mktemp("causal") / "run", comps, CueThenOther(comps))


def _rows(record: dict) -> dict[int, dict]:
    return {r["feature"]: r for r in record["rows"] if r["kind"] == "feature"}


def test_the_planted_feature_is_sufficient_and_necessary_and_a_random_one_is_neither(comps, run_dir):
    run = load_run(run_dir)
    want = plan(run, n_boot=300)
    assert want["phase"] == "eval:test" and want["none_phase"] == "baseline:none:test"
    assert list(want["features"]) == [str(OTHER), *map(str, PLANTED)]  # most used first: OTHER steers every prompt
    density = np.linspace(0.0, 1.0, D_SAE)  # deciles of one or two features: the random pool is a neighbour
    rec = causal_checks(
        comps,
        want,
        run.steps_of("eval:test"),
        run.episodes_of("eval:test"),
        run.episodes_of("baseline:none:test"),
        density,
    )
    rows = _rows(rec)
    for f in PLANTED:
        r = rows[f]
        assert r["n_prompts"] == 4 and r["levels"] == [1.0] and r["members"] == [[f, 1]]
        assert (r["policy_acc"], r["none_acc"], r["gain"]) == (1.0, 0.0, 1.0)
        assert r["sufficiency"] == r["necessity_none"] == r["necessity_random"] == 1.0
        assert r["sufficiency_lo"] == 1.0 and not r["gain_unclear"]
        assert r["verdict"].startswith("sufficient alone, necessary, specific")
    r = rows[OTHER]
    assert r["n_prompts"] == 8 and r["gain"] == 1.0  # the policy's gain on its prompts comes from step 0
    assert r["alone_acc"] == 0.0 and r["replaced_none_acc"] == r["replaced_random_acc"] == 1.0
    assert r["sufficiency"] == r["necessity_none"] == r["necessity_random"] == 0.0
    assert (
        r["verdict"]
        == "not sufficient alone, not necessary, replaceable (a random feature of its density does about as well)"
    )
    assert rec["density_matched"] and not rec["one_step"] and rec["reproduced"] == {"n": 8, "agree": 8}
    # Only the arms that are neither the policy's logged episode nor no steering are replayed: OTHER's alone,
    # replaced_none and replaced_random on 8 prompts, each planted feature's 4 random replacements, the 8 checks.
    assert rec["n_replayed"] == 8 + 3 * 8 + 2 * 4 and not rec["left_out"]


def test_the_record_is_reused_while_the_eval_is_unchanged_and_the_budget_stops_features(comps, run_dir):
    loads = []

    def load():
        loads.append(1)
        return comps

    rec, note = ensure_causal(run_dir, n_boot=300, load=load)
    assert note is None and loads == [1] and read_causal(run_dir) == json.loads(json.dumps(rec))
    again, _ = ensure_causal(run_dir, n_boot=300, load=load)
    assert loads == [1] and again == read_causal(run_dir)  # current: read back, no model
    _, _ = ensure_causal(run_dir, n_boot=300, load=load, force=True)
    assert loads == [1, 1]
    one, _ = ensure_causal(run_dir, top=1, n_boot=300, load=load)  # another plan: measured again
    assert [r["feature"] for r in one["rows"]] == [OTHER] and loads == [1, 1, 1]
    assert is_current(read_causal(run_dir), plan(load_run(run_dir), top=1, n_boot=300))
    assert not is_current(read_causal(run_dir), plan(load_run(run_dir), top=1, prompts=2, n_boot=300))

    # A clock at 0, 1, 2, ... seconds, read before each batch of 8 replays: the check (8 prompts) and OTHER's three
    # arms (8 each) fit in 4.5 s; the planted features' random replacements (the 5th batch) do not.
    ticks = iter(range(100))
    run = load_run(run_dir)
    want = plan(run, n_boot=300, max_seconds=4.5)
    rec = causal_checks(
        comps,
        want,
        run.steps_of("eval:test"),
        run.episodes_of("eval:test"),
        run.episodes_of("baseline:none:test"),
        clock=lambda: float(next(ticks)),
    )
    assert [r["feature"] for r in rec["rows"]] == [OTHER]
    assert [x["members"] for x in rec["left_out"]] == [[[f, 1]] for f in PLANTED] and not rec["density_matched"]

    _, note = ensure_causal(run_dir, force=True)  # the hand-written config.yaml cannot be rebuilt: a note
    assert note.startswith("not measured: the run's model and SAE could not be rebuilt")


def test_fractions_are_ratios_of_the_accuracy_differences_to_the_gain():
    policy = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    none = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])  # gain 0.6 - 0.2 = 0.4
    alone = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])  # (0.3 - 0.2) / 0.4
    replaced_none = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])  # (0.6 - 0.2) / 0.4
    replaced_random = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])  # (0.6 - 0.5) / 0.4
    arms = dict(policy=policy, none=none, alone=alone, replaced_none=replaced_none, replaced_random=replaced_random)
    r = estimates(arms, FAST)
    assert r["n_prompts"] == 10 and r["gain"] == pytest.approx(0.4) and not r["gain_unclear"]
    assert r["sufficiency"] == pytest.approx(0.25) and r["sufficiency_delta"] == pytest.approx(0.1)
    assert r["necessity_none"] == pytest.approx(1.0) and r["necessity_none_delta"] == pytest.approx(0.4)
    assert r["necessity_random"] == pytest.approx(0.25) and r["necessity_random_delta"] == pytest.approx(0.1)
    for name in ("gain", "sufficiency", "necessity_random", "sufficiency_delta"):
        assert r[f"{name}_lo"] <= r[name] <= r[f"{name}_hi"], name
    assert r["necessity_none_lo"] == r["necessity_none_hi"] == 1.0  # replaced_none == none on every prompt
    assert r["verdict"] == "sufficiency unclear, necessary, necessity random unclear"  # 10 prompts: wide CIs

    # A gain whose interval includes 0: the verdict reads no fraction and says why.
    small = estimates({**arms, "policy": np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])}, FAST)
    assert small["gain"] == pytest.approx(0.1) and small["gain_unclear"]
    assert "not distinguishable from 0" in small["verdict"] and "read the accuracy differences" in small["verdict"]
    zero = estimates({**arms, "policy": none}, FAST)
    assert np.isnan(zero["sufficiency"]) and zero["verdict"].startswith("no gain over no steering")
    assert (
        "undefined (no gain)" in causal_table({"rows": [{"kind": "feature", "feature": 1, **zero}]})["sufficiency"][0]
    )
    with pytest.raises(CRLError, match="one outcome per prompt"):
        estimates({**arms, "alone": alone[:5]}, FAST)
    assert verdict({**r, "gain": -0.4, "gain_lo": -0.6, "gain_hi": -0.2}).startswith("the policy does worse")
    # One decision per episode: alone is the policy's episode and removing f is no steering; only random is read.
    assert verdict(r, one_step=True).startswith("sufficient and necessary by construction (one decision per episode), ")


def test_the_random_replacement_is_drawn_from_the_features_density_decile():
    density = np.repeat(np.arange(10.0), 3)  # 30 features, three per decile
    assert matched_pool(4, density, 30).tolist() == [3, 5]
    assert matched_pool(4, None, 6).tolist() == [0, 1, 2, 3, 5]
    alone = np.arange(10.0) ** 3  # one feature per decile: the nearest in density instead
    assert matched_pool(5, alone, 10).tolist() == [4]


def test_the_report_section_shows_the_table_and_says_what_was_run(comps, run_dir):
    rep = Report("t")
    cfg = AnalyzeConfig(run_dir=str(run_dir), n_boot=300)
    causal_section(rep, load_run(run_dir), cfg, load=lambda: comps)
    (title, parts) = rep.sections[0]
    table = rep.tables["causal"].set_index("feature")
    assert title == TITLE and set(table.index) == {OTHER, *PLANTED}
    assert table.loc[PLANTED[0], "sufficiency"] == "1.00 [1.00, 1.00]; Δacc +1.00 [+1.00, +1.00]"
    assert table.loc[OTHER, "necessity_none"].startswith("0.00 [0.00, 0.00]")
    text = "".join(parts)
    assert (
        "uniformly random feature (no feature cards" in text and "reproduces the logged policy outcome on 8/8" in text
    )

    rep = Report("t")
    causal_section(rep, load_run(run_dir), AnalyzeConfig(run_dir=str(run_dir), causal=False))
    assert "causal" in rep.tables  # the stored record, shown without the model


def test_report_links_every_checked_feature_to_its_card(tmp_path, monkeypatch):
    """A synthetic run on the shipped layer-15 SAE with a current causal.json: the full report shows the section,
    every feature labelled and linked to a card in cards.html."""
    from crl.analysis.report.analyze import analyze_run
    from crl.cards.store import load_cards
    from tests.analysis.report.test_feature_cards import MAIN, SHIPPED, _check_links_and_labels
    from tests.analysis.report.test_feature_cards import OTHER as OTHER_FEATURE
    from tests.analysis.synthetic import SyntheticSpec, write_run_dir

    monkeypatch.setenv("CRL_CACHE", str(tmp_path / "cache"))
    shipped = load_cards(SHIPPED)
    spec = SyntheticSpec(
        model=shipped.meta["model"],
        layer=15,
        sae_identity=shipped.identity,
        neuronpedia_id=None,
        main_feature=MAIN,
        other_feature=OTHER_FEATURE,
        n_prompts=20,
    )
    d = write_run_dir(tmp_path / "run", spec)
    want = plan(load_run(d), n_boot=200, max_seconds=AnalyzeConfig.causal_seconds)
    ones, zeros = np.ones(6), np.zeros(6)
    arms = dict(policy=ones, none=zeros, alone=ones, replaced_none=zeros, replaced_random=zeros)
    rows = [
        {"kind": "feature", "feature": f, "members": [[f, 1]], "levels": [1.0], **estimates(arms, FAST)}
        for f in (int(x) for x in want["features"])
    ]
    group = {"kind": "group", "members": [[MAIN, 1], [OTHER_FEATURE, 1]], "levels": [1.0], **estimates(arms, FAST)}
    write_causal(d, {**want, "rows": [*rows, group], "density_matched": True, "one_step": False, "left_out": []})
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=200))  # current: shown as stored, no model
    out = res.html.parent
    assert (d / CAUSAL_FILE).exists() and TITLE in res.html.read_text()
    assert set(res.report.tables["causal"]["feature"]) == {MAIN, OTHER_FEATURE}
    _check_links_and_labels(out, shipped, {MAIN, OTHER_FEATURE})
    members = res.report.tables["causal_groups"]["members"][0]
    assert members.startswith(f"+{MAIN} ≈") and shipped.label(OTHER_FEATURE) in members
    assert "a random feature of the same activation-density decile" in res.html.read_text()


def test_a_trained_planted_run_gets_the_check_by_default_and_env_true_computes_the_replay_tables(tmp_path):
    """End to end on a real (tiny) `crl train` run: the report measures the check with the run's own rebuilt model,
    the replay reproduces the logged episodes, a planted feature carries its gain, and `env=true` (the command the
    report's notes name) writes the replay tables."""
    from crl.analysis.report.analyze import analyze_run
    from crl.run.train import train
    from tests.run.helpers import QUICK, compose_train

    d = tmp_path / "planted"
    summary = train(compose_train([o for o in QUICK if not o.startswith("run.eval_before")]), d)
    html = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=200)).html.read_text()
    rec = read_causal(d)
    assert TITLE in html and f"crl analyze run_dir={d} env=true" in html  # the replay tables' notes name the command
    assert rec["reproduced"]["agree"] == rec["reproduced"]["n"] > 0 and rec["none_phase"] == "baseline:none:test"
    planted = [r for r in rec["rows"] if r["kind"] == "feature" and r["feature"] in summary["planted"]]
    assert planted and rec["rows"][0]["feature"] in summary["planted"]
    assert any(r["sufficiency"] >= 0.9 and r["necessity_none"] >= 0.9 and not r["gain_unclear"] for r in planted)

    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=200, env=True, env_seeds=[0]))
    assert {"effects.csv", "branch_points.csv", "side_effects.csv"} <= {p.name for p in (d / "analysis").iterdir()}
    assert "effect" in res.report.tables["feature_usage"].columns and "env=true" not in res.html.read_text()


def test_logged_rows_replay_at_the_level_the_policy_chose(comps):
    """Action ids of logged rows (the causal check's and `forced_feature_effects`' replays): level index * d_sae +
    feature, the no-op last; a coefficient that is no level of the run is refused."""
    import dataclasses

    from crl.analysis.replay.runner import action_id, noop_action
    from crl.config import SteeringConfig
    from crl.logs.schema import NO_STEER

    two = dataclasses.replace(comps, steering=SteeringConfig(coef=8.0, coef_levels=[1.0, -1.0]))
    assert (action_id(two, 3, 8.0), action_id(two, 3, -8.0), noop_action(two)) == (3, D_SAE + 3, 2 * D_SAE)
    assert action_id(two, NO_STEER, 0.0) == 2 * D_SAE and noop_action(comps) == D_SAE
    with pytest.raises(CRLError, match="not one of the run's levels"):
        action_id(two, 3, 4.0)
