"""`crl probe` (crl.analysis.replay.probe, crl.analysis.replay.oracle, crl.analysis.report.probe) on tiny models:

- on the planted task, whose class is linearly planted in the residual at the decision position (the cue word is the
  last prompt token), the probe reads the answer, the shuffled-label control stays at chance, and the oracle finds
  the planted features and is at least the unsteered accuracy; the command prints the table and writes its files;
- the one-token oracle's batched scoring (the layers above the SAE's, every action of a prompt in one forward with a
  4-D mask) gives exactly the environment's answer for every (prompt, action), relative and raw, resid_post and
  resid_pre, and agrees with the whole model;
- the oracle's feature shortlist is a greedy set cover of the prompts the model gets wrong, and its printed
  `crl train` line composes to masking=fixed on exactly those features;
- a number task gets the `correct` target, and with one outcome only the record says why nothing applies;
- bad input is one line before any model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import io
import json
import shlex

import numpy as np
import pytest
import torch

from crl.analysis.replay import oracle as oracle_mod
from crl.analysis.replay import probe as probe_mod
from crl.analysis.replay.oracle import Action, suffix_grid
from crl.analysis.replay.probe import ROOM, headroom
from crl.analysis.replay.runner import rollout, tagged
from crl.analysis.report import probe as report_mod
from crl.backends.hooks import HookPoint
from crl.backends.model import tiny_model
from crl.backends.sae import sae_from_decoder
from crl.config import MaskingConfig, PolicyConfig, PPOConfig, SteeringConfig, TaskConfig
from crl.config.compose import compose_config
from crl.envs.tasks.registry import make_task
from crl.run.components import Components

PLANTED = [
    "model=tiny",
    "sae=planted",
    "sae.d_sae=32",
    "task=planted",
    "masking=none",
    "steering.layer=1",
    "steering.coef=2.0",
    "steering.coef_levels=[1.0]",
    "layers=[1]",
    "oracle_max_episodes=2048",  # 64 prompts x 32 actions
]


def _cli(*argv: str) -> tuple[int, str, str]:
    """`crl probe argv...` in this process: (exit code, stdout, stderr)."""
    from crl.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["probe", *argv])
        except SystemExit as e:
            code = int(e.code)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("module", [probe_mod, oracle_mod, report_mod])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, one_thread):
    """`crl probe` on the planted task, once for the module: (record, stdout, out dir)."""
    out = tmp_path_factory.mktemp("probe") / "planted"
    code, stdout, err = _cli(*PLANTED, f"out_dir={out}")
    assert code == 0, err
    return json.loads((out / "probe.json").read_text()), stdout, out


def test_the_probe_reads_a_planted_answer_and_shuffled_labels_stay_at_chance(planted_run):
    record, _, _ = planted_run
    (layer,) = record["layers"]
    assert record["target"] == "answer" and record["classes"] == ["A", "B", "C", "D"]
    assert (record["task"], record["task_option"], record["family"]) == ("planted", "planted", None)  # no variants
    assert (record["n_train"], record["n_test"]) == (64, 64)
    assert layer["probe"]["accuracy"] >= 0.95  # the cue word is the last prompt token
    assert layer["shuffled"]["accuracy"] <= 0.45  # 4 balanced classes: chance is 0.25
    assert layer["probe"]["ci"][0] > max(record["majority"]["accuracy"], layer["shuffled"]["value"])
    lo, hi = layer["probe"]["accuracy_ci"]
    assert lo <= layer["probe"]["accuracy"] <= hi


def test_the_oracle_finds_the_planted_features_and_bounds_the_unsteered_model(planted_run):
    record, _, _ = planted_run
    (layer,) = record["layers"]
    o = layer["oracle"]
    assert o["method"].startswith("rollout")  # the planted task is free-form: first decision, then no steering
    assert o["n"] == 64 and o["actions_per_prompt"] == 32  # masking=none: every feature, one level
    assert o["accuracy"] >= o["unsteered"] == record["unsteered"]["accuracy"]
    assert o["accuracy"] == 1.0
    fixers = {f["feature"]: f["fixes"] for f in o["top_fixers"]}
    assert set(fixers) == set(layer["planted"])  # only the planted features fix a prompt
    assert all(n == 16 for n in fixers.values())  # each its own class's 16 test prompts
    assert o["best_static"]["feature"] in layer["planted"] and o["best_static"]["accuracy"] == 0.25
    assert layer["verdict"] == ROOM


def test_the_shortlist_is_the_planted_features_and_its_line_composes_to_masking_fixed(planted_run):
    record, stdout, out = planted_run
    (layer,) = record["layers"]
    short = layer["oracle"]["shortlist"]
    assert record["settings"]["shortlist_k"] == 4  # the default
    # The model gets every test prompt wrong; each planted feature fixes its own class's 16: the four of them, in id
    # order (equal gains, nothing to break), cover every prompt.
    assert short["features"] == sorted(layer["planted"]) and short["new"] == [16] * 4
    assert short["cumulative"] == [0.25, 0.5, 0.75, 1.0] and (short["covered"], short["n_wrong"]) == (64, 64)
    (line,) = [s.strip() for s in stdout.splitlines() if s.strip().startswith("shortlist")]
    assert line == f"shortlist (covers 64/64 of the prompts the model gets wrong): {short['command']}"
    args = shlex.split(line.split(": ", 1)[1])
    assert args[:2] == ["crl", "train"]
    train = compose_config("train", args[2:])  # the probe's model, SAE, task and steering, at its layer
    assert train.masking.mode == "fixed" and train.masking.features == short["features"]
    assert (train.steering.layer, train.task.name, train.sae.source, train.model.source) == (
        1,
        "planted",
        "planted",
        "tiny",
    )
    html = (out / "probe.html").read_text()
    assert "Feature shortlist for masking=fixed" in html and "masking.features=[" in html


def _grid_summary(correct: np.ndarray, unsteered: list[bool], k: int) -> dict:
    """The oracle's record of a hand-made grid over the MC world's actions (12 features x 2 levels, level-major),
    every cell scored."""
    comps = _mc_world()
    actions = [Action(f, li) for li in range(2) for f in range(12)]
    every = np.ones_like(correct)
    return oracle_mod._summary(
        comps, actions, correct, every, every, np.array(unsteered), "test", 0.0, {}, shortlist_k=k
    )


def _planted_grid() -> tuple[np.ndarray, list[bool]]:
    """Prompts 1-4 wrong unsteered (0, 5, 6, 7 right, and no action breaks them). Feature 5 (A) fixes {1, 2, 3} at
    +1; feature 2 (B) fixes {3} at +1 and {4} at -1; feature 1 (C) fixes {1} at -1."""
    unsteered = [True, False, False, False, False, True, True, True]
    correct = np.zeros((8, 24), dtype=bool)
    correct[np.array(unsteered)] = True
    for prompt, feature, level in [(1, 5, 0), (2, 5, 0), (3, 5, 0), (3, 2, 0), (4, 2, 1), (1, 1, 1)]:
        correct[prompt, level * 12 + feature] = True
    return correct, unsteered


def test_the_shortlist_is_a_greedy_set_cover_of_the_wrong_prompts(one_thread):
    correct, unsteered = _planted_grid()
    short = _grid_summary(correct, unsteered, 2)["shortlist"]
    assert short["features"] == [5, 2] and short["new"] == [3, 1]  # A, then B (its -1 level)
    assert short["cumulative"] == [0.75, 1.0] and (short["covered"], short["n_wrong"]) == (4, 4)
    # Every wrong prompt covered: the slots left go to spare levers (C covers prompt 1 again, 0 new); no feature that
    # fixes nothing is ever added.
    short = _grid_summary(correct, unsteered, 4)["shortlist"]
    assert short["features"] == [5, 2, 1] and short["new"] == [3, 1, 0] and short["cumulative"] == [0.75, 1.0, 1.0]
    assert _grid_summary(correct, unsteered, 1)["shortlist"]["features"] == [5]
    assert "shortlist" not in _grid_summary(correct, unsteered, 0)
    # A tie on new prompts goes to the feature that breaks fewer of the prompts the model gets right: feature 1 now
    # fixes prompt 4 too, like B, but its +1 level breaks prompt 0.
    correct[4, 1] = True
    correct[0, 1] = False
    assert _grid_summary(correct, unsteered, 2)["shortlist"]["features"] == [5, 2]
    correct[0, 1], correct[0, 2] = True, False  # now B breaks prompt 0 and C does not
    assert _grid_summary(correct, unsteered, 2)["shortlist"]["features"] == [5, 1]
    correct[0, 2] = True  # neither breaks anything: the lower id
    assert _grid_summary(correct, unsteered, 2)["shortlist"]["features"] == [5, 1]


def test_a_shortlist_with_nothing_to_cover_says_so(one_thread):
    correct, unsteered = _planted_grid()
    right = _grid_summary(np.ones_like(correct), [True] * 8, 4)["shortlist"]
    assert right["features"] == [] and right["n_wrong"] == 0 and right["cumulative"] == []
    assert report_mod.shortlist_line(right) == "shortlist: none (the model gets every oracle prompt right)"
    none = _grid_summary(correct & np.array(unsteered)[:, None], unsteered, 4)["shortlist"]
    assert none["features"] == [] and none["n_wrong"] == 4
    assert report_mod.shortlist_line(none).startswith("shortlist: none (no single feature fixes any of the 4")


def test_the_command_prints_the_table_and_writes_json_png_html(planted_run):
    record, stdout, out = planted_run
    assert "probe acc" in stdout and "oracle (n=64)" in stdout and "layer 1: room" in stdout
    assert (out / "probe.png").stat().st_size > 1000
    html = (out / "probe.html").read_text()
    assert "Headroom" in html and "<img" in html and "room; learning is what matters" in html
    assert record["seconds"] > 0


# -- the one-token oracle against the environment --------------------------------------------------------------------
def _mc_world(kind: str = "post", coef_mode: str = "relative", masking: str = "none") -> Components:
    lm = tiny_model("llama", n_layers=3, d_model=64, seed=0)
    task = make_task(TaskConfig(name="compare", n_train=8, n_val=8, n_test=8, mode="constrained"))
    decoder = torch.randn(12, 64, generator=torch.Generator().manual_seed(0))
    sae = sae_from_decoder(decoder, HookPoint(1, kind), "test:mc")
    coef = 4.0 if coef_mode == "relative" else 8.0
    steering = SteeringConfig(layer=1, coef=coef, coef_mode=coef_mode, coef_levels=[1.0, -1.0])
    splits = {s: task.load(s) for s in ("train", "val", "test")}
    return Components(
        lm, sae, task, splits, steering, MaskingConfig(mode=masking), PolicyConfig(), PPOConfig(num_envs=8)
    )


@pytest.mark.parametrize("kind,coef_mode", [("post", "relative"), ("pre", "raw")])
def test_the_batched_suffix_scores_every_action_as_the_environment_does(kind, coef_mode, one_thread):
    comps = _mc_world(kind, coef_mode)
    test = comps.splits["test"]
    grid = suffix_grid(comps, test, max_rows=20)  # several forwards per prompt chunk
    assert grid.fast and grid.gap is not None and grid.gap < 1e-4  # the layers above agree with the whole model
    d_sae = comps.sae.d_sae
    assert [(a.feature, a.level) for a in grid.actions] == [(f, li) for li in range(2) for f in range(d_sae)]
    batch, scripts = [], {}
    for a in grid.actions:
        for e in tagged(test, f"{a.feature}:{a.level}"):
            batch.append(e)
            scripts[e.id] = [a.level * d_sae + a.feature]  # the environment's action id
    env = np.zeros_like(grid.correct)
    ids = [e.id for e in test]
    for ep in rollout(comps, batch, None, scripts=scripts):
        pid, tag = ep.example.id.split("#")
        f, li = map(int, tag.split(":"))
        env[ids.index(pid), li * d_sae + f] = ep.correct
    assert (grid.correct == env).all()
    assert 0 < env.mean() < 1  # some actions flip answers, some do not: the comparison is not vacuous
    none = [ep.correct for ep in rollout(comps, test, None)]
    assert grid.unsteered.tolist() == none


def test_the_whole_model_fallback_gives_the_same_grid(monkeypatch, one_thread):
    comps = _mc_world()
    fast = suffix_grid(comps, comps.splits["test"], max_rows=64)
    monkeypatch.setattr(oracle_mod, "TOLERANCE", -1.0)  # nothing agrees: every chunk goes through the whole model
    slow = suffix_grid(comps, comps.splits["test"], max_rows=64)
    assert fast.fast and not slow.fast
    assert (fast.correct == slow.correct).all()


def test_the_oracle_uses_each_prompts_own_action_set_and_static_uses_the_union(one_thread):
    comps = _mc_world(masking="active")
    comps = dataclasses.replace(comps, masking=MaskingConfig(mode="active", top_k=2, threshold=1e9))
    test = comps.splits["test"]
    none = [ep.correct for ep in rollout(comps, test, None)]
    grid = suffix_grid(comps, test)
    assert grid.own.sum(axis=1).tolist() == [4] * len(test)  # top-2 features x 2 levels each
    rec = oracle_mod.suffix_oracle(comps, test, none, shortlist_k=2)
    reach = (grid.correct & grid.own).any(axis=1) | np.array(none)
    wrong = ~np.array(none)
    cover = {a.feature: set() for a in grid.actions}  # every scored cell counts: the static candidates' too
    for j, a in enumerate(grid.actions):
        cover[a.feature] |= set(np.flatnonzero(grid.correct[:, j] & wrong).tolist())
    short = rec["shortlist"]
    assert short["n_wrong"] == wrong.sum() and short["new"][0] == max(len(c) for c in cover.values()) > 0
    assert short["covered"] == len(set().union(*(cover[f] for f in short["features"])))
    assert rec["accuracy"] == reach.mean() >= np.mean(none)
    assert rec["best_static"]["accuracy"] == grid.correct.mean(axis=0).max()
    assert rec["agree_with_env"] == 1.0
    one = suffix_grid(comps, test, n_static=1)  # the static candidate: the feature in the most prompts' sets
    freq = {a.feature: int(grid.own[:, j].sum()) for j, a in enumerate(grid.actions) if a.level == 0}
    static = min(freq, key=lambda f: (-freq[f], f))
    assert one.scored[:, one.actions.index(Action(static, 1))].all()
    has = one.own[:, one.actions.index(Action(static, 0))]
    assert one.scored.sum(axis=1).tolist() == [4 + 2 * (not h) for h in has]  # its 2 levels wherever not own
    same = [grid.actions.index(a) for a in one.actions]
    assert (one.correct[one.scored] == grid.correct[:, same][one.scored]).all()


def test_the_oracle_with_masking_fixed_tries_the_listed_features_on_every_prompt(one_thread):
    comps = dataclasses.replace(_mc_world(), masking=MaskingConfig(mode="fixed", features=[7, 3]))
    grid = suffix_grid(comps, comps.splits["test"])
    assert [(a.feature, a.level) for a in grid.actions] == [(3, 0), (7, 0), (3, 1), (7, 1)]  # level-major, as the env
    assert grid.own.all() and grid.scored.all()  # every prompt's own set: so the best static is among them


# -- free-form: the correct target -----------------------------------------------------------------------------------
def test_a_number_task_probes_correctness_and_says_why_nothing_applies(tmp_path, one_thread):
    decoder = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    sae_from_decoder(decoder, HookPoint(1, "post"), "test").sae.save_model(str(tmp_path / "sae"))
    cfg = compose_config(
        "probe",
        [
            "model=tiny",
            "sae=disk",
            f"sae.path={tmp_path / 'sae'}",
            "task=arith",
            "task.n_train=16",
            "task.n_test=8",
            "task.max_new_tokens=3",
            "masking=none",
            "steering.layer=1",
            "layers=null",
            "n_oracle=2",
            "oracle_max_episodes=20",  # 16 actions a prompt: only the first prompt fits
        ],
    )
    record = headroom(cfg, probe_mod.probe_layers(cfg), progress=False)
    assert record["target"] == "correct"
    assert record["none_applies"].startswith("none applies: the model answers no train prompt correctly")
    (layer,) = record["layers"]
    assert "probe" not in layer and layer["verdict"] == record["none_applies"]
    o = layer["oracle"]  # the oracle still runs: first decision steered, then the rollout is scored
    assert o["method"].startswith("rollout") and o["n"] == 1 and o["actions_per_prompt"] == 16
    assert o["accuracy"] >= o["unsteered"]


def test_the_correct_target_is_an_auroc(one_thread):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    x = torch.as_tensor(rng.normal(size=(80, 6)) + y[:, None] * np.array([3.0, 0, 0, 0, 0, 0]))
    rec = probe_mod.probe_layer(x[:40], y[:40], x[40:], y[40:], 2, "correct", [0.1, 1.0], 4, 0, 200)
    assert rec["probe"]["value"] == rec["probe"]["auroc"] > 0.9
    assert rec["probe"]["ci"][0] > 0.5
    # A shuffled probe's ranking is a random direction: its AUROC scatters around 0.5 (widely, with one strong
    # feature), so the verdict's chance level is the larger of 0.5 and it.
    assert rec["shuffled"]["auroc"] < rec["probe"]["auroc"]


# -- bad input -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,message",
    [
        (["model=tiny", "layers=[1,5]"], "layers=[1,5] is invalid: the tiny model has 2 layers"),
        (["layers=[6,6]"], "layers=[6,6] is invalid: a layer is listed twice"),
        (["layers=[7]"], "layers: layer 7 has no SAE for smollm2-135m-instruct (shipped: 6, 15, 24)"),
        (["task=arith", "target=answer"], "target=answer needs a task whose gold answer is a class"),
        (["sae=disk", "sae.path=/x", "layers=[6,15]"], "sae=disk is one SAE, which reads one layer"),
        (["task=refusal_offline", "steering.allow_noop=false"], "needs steering.allow_noop=true"),
        (["target=maybe"], "target=maybe is invalid"),
        (["n_oracle=-1"], "n_oracle=-1 is invalid"),
        (["shortlist_k=-1"], "shortlist_k=-1 is invalid"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(argv, message, tmp_path, monkeypatch):
    import crl.run.components as components

    def no_model(*_a, **_k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(components, "load_model", no_model)
    monkeypatch.setenv("CRL_CACHE", str(tmp_path / "cache"))
    code, out, err = _cli(*argv, f"out_dir={tmp_path / 'out'}")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("crl: error: ") and message in err, err
    assert out == "" and not (tmp_path / "out").exists()


def test_a_steering_layer_override_alone_probes_that_layer():
    cfg = compose_config("probe", ["steering.layer=24"])
    assert probe_mod.probe_layers(cfg) == [6, 15, 24]  # the composed default
    assert probe_mod.probe_layers(cfg, layer_override=True) == [24]  # what `crl probe steering.layer=24` runs
    assert probe_mod.probe_layers(compose_config("probe", ["layers=null", "steering.layer=6"])) == [6]


def test_the_report_shows_what_was_not_measured(tmp_path):
    """No oracle (n_oracle=0), one layer where nothing applies: dashes in the table, the plot still drawn."""
    record = {
        "task": "arith",
        "target": "correct",
        "model": "m",
        "classes": ["0"],
        "n_train": 4,
        "n_test": 4,
        "unsteered": {"accuracy": 0.0, "ci": probe_mod.wilson(0, 4), "n": 4},
        "majority": {"class": "0", "accuracy": 1.0, "ci": probe_mod.wilson(4, 4)},
        "steering": {"coef": 1.0, "coef_mode": "relative", "coef_levels": [1.0], "allow_noop": True, "masking": "none"},
        "none_applies": "none applies: the model answers no train prompt correctly, so there is nothing to read",
        "layers": [{"layer": 3, "verdict": "none applies: ...", "why": ""}],
        "seconds": 1.0,
    }
    text = report_mod.format_table(record)
    assert "none applies" in text and "whether the unsteered model is right (AUROC)" in text
    fixed = {**record, "steering": {**record["steering"], "masking": "fixed", "masking_features": [7, 3]}}
    assert "each unmasked feature (masking=fixed [7,3], eval)" in report_mod.format_table(fixed)
    assert report_mod.table(record).iloc[0]["oracle"] == "-"
    paths = report_mod.write_probe(tmp_path, record)
    assert json.loads(paths["json"].read_text())["task"] == "arith" and paths["png"].exists()


def _answer_record(layers: list[dict]) -> dict:
    """A `crl probe` record with answer target (4 train / 4 test prompts) around the given layer entries."""
    return {
        "task": "compare",
        "target": "answer",
        "model": "m",
        "classes": ["A", "B"],
        "n_train": 4,
        "n_test": 4,
        "unsteered": {"accuracy": 0.5, "ci": probe_mod.wilson(2, 4), "n": 4},
        "majority": {"class": "A", "accuracy": 0.5, "ci": probe_mod.wilson(2, 4)},
        "steering": {"coef": 1.0, "coef_mode": "relative", "coef_levels": [1.0], "allow_noop": True, "masking": "none"},
        "layers": layers,
        "seconds": 1.0,
    }


def test_a_record_from_before_the_shortlist_renders_without_it(tmp_path):
    oracle = {"n": 4, "accuracy": 1.0, "ci": (0.5, 1.0), "unsteered": 0.5, "best_static": None, "method": "suffix"}
    oracle |= {"seconds": 1.0, "top_fixers": []}
    record = _answer_record([{"layer": 3, "verdict": "room", "why": "", "oracle": oracle}])
    assert "shortlist" not in report_mod.format_table(record)
    assert "shortlist" not in report_mod.write_probe(tmp_path / "old", record)["html"].read_text()
    short = {"features": [7, 3], "new": [1, 1], "cumulative": [0.5, 1.0], "n_wrong": 2, "covered": 2, "k": 4}
    short |= {"labels": [None, None], "command": "crl train steering.layer=3 masking=fixed 'masking.features=[7,3]'"}
    new = {**record, "layers": [{**record["layers"][0], "oracle": {**oracle, "shortlist": short}}]}
    text = report_mod.format_table(new)
    assert text.endswith(
        "layer 3: room\n  shortlist (covers 2/2 of the prompts the model gets wrong): "
        "crl train steering.layer=3 masking=fixed 'masking.features=[7,3]'"
    )
    html = report_mod.write_probe(tmp_path / "new", new)["html"].read_text()
    assert "Feature shortlist for masking=fixed" in html and "new prompts covered" in html


def _oracle_layer(layer: int, n: int, right: int, unsteered: float) -> dict:
    """A layer entry whose oracle ran on n prompts and got `right` of them (Wilson CI), as refusal_offline's did."""
    static = {"feature": 100 + layer, "level": 1.0, "coef": 1.0, "accuracy": unsteered, "n_candidates": 30}
    oracle = {"n": n, "accuracy": right / n, "ci": probe_mod.wilson(right, n), "unsteered": unsteered}
    oracle |= {"best_static": static | {"ci": probe_mod.wilson(round(unsteered * n), n)}, "method": "rollout"}
    return {"layer": layer, "verdict": "room", "why": "", "oracle": oracle | {"seconds": 1.0, "top_fixers": []}}


def test_layers_with_different_oracle_n_share_one_oracle_column_with_n_per_cell(tmp_path):
    """refusal_offline: the 1,024-rollout cap gave layers 6 and 15 n=16 prompts and layer 24 n=8. One oracle column,
    each cell with its own n, no NaN; the same n for every layer keeps it in the header."""
    record = _answer_record([_oracle_layer(6, 16, 14, 0.8125), _oracle_layer(15, 16, 14, 0.8125)])
    record["layers"].append(_oracle_layer(24, 8, 7, 0.875))
    df = report_mod.table(record)
    assert [c for c in df.columns if c.startswith("oracle")] == ["oracle"]
    assert list(df["oracle"]) == [
        "0.875 [0.640, 0.965] (n=16)",
        "0.875 [0.640, 0.965] (n=16)",
        "0.875 [0.529, 0.978] (n=8)",
    ]
    assert list(df["no steer, same prompts"]) == ["0.812", "0.812", "0.875"]
    assert list(df["best static"]) == ["0.812 (106 @ +1)", "0.812 (115 @ +1)", "0.875 (124 @ +1)"]
    assert not df.isna().any().any()
    text = report_mod.format_table(record)
    assert "NaN" not in text and "oracle (n=" not in text and text.count("(n=8)") == 1
    html = report_mod.write_probe(tmp_path / "mixed", record)["html"].read_text()
    assert "oracle (n=" not in html and "(n=8)" in html and "(n=16)" in html and "nan" not in html.lower()

    same = _answer_record([_oracle_layer(6, 16, 14, 0.8125), _oracle_layer(24, 16, 15, 0.875)])
    df = report_mod.table(same)
    assert [c for c in df.columns if c.startswith("oracle")] == ["oracle (n=16)"]
    assert list(df["oracle (n=16)"]) == ["0.875 [0.640, 0.965]", "0.938 [0.717, 0.989]"]
    assert "(n=16)" not in report_mod.write_probe(tmp_path / "same", same)["html"].read_text().replace(
        "oracle (n=16)", ""
    )


def test_an_xor_answer_is_read_by_the_policy_shaped_mlp_and_not_by_the_linear_probe(one_thread):
    """The compare family's shape: the gold class is the XOR of two things the residual holds linearly (the question's
    direction, the comparison). A linear readout stays at chance; the policy-shaped MLP reads it, and with shuffled
    labels it does not; the verdict goes by the MLP."""
    gen = torch.Generator().manual_seed(0)

    def data(n: int) -> tuple[torch.Tensor, np.ndarray]:
        a, b = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen)
        x = torch.randn(n, 8, generator=gen) * 0.3
        x[:, 0] += 2.0 * a - 1
        x[:, 1] += 2.0 * b - 1
        return x, (a ^ b).numpy()

    (xtr, ytr), (xte, yte) = data(800), data(400)
    spec = probe_mod.MLPProbe()  # the defaults `crl probe` uses
    out = probe_mod.probe_layer(xtr, ytr, xte, yte, 2, "answer", [1e-2], 2, 0, 100, spec)
    assert out["probe"]["accuracy"] < 0.6 and out["shuffled"]["accuracy"] < 0.6
    assert out["mlp"]["accuracy"] > 0.95 and out["mlp_shuffled"]["accuracy"] < 0.6
    assert probe_mod.best_reader(out) == "mlp"
    # Without the MLP (mlp_steps=0) only the linear reader is there.
    assert "mlp" not in probe_mod.probe_layer(xtr, ytr, xte, yte, 2, "answer", [1e-2], 2, 0, 100, None)
