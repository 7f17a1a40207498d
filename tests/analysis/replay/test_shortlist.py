"""`crl train masking=shortlist` (crl/analysis/replay/shortlist.py), with known answers on the planted task:

- the shortlist read from the train prompts is the planted features, and nothing but train prompts is read;
- a tiny `crl train masking=shortlist` writes shortlist.json, records masking=fixed on its features in config.yaml,
  steers with those features only, and trains exactly as masking=fixed on them would;
- resume reuses shortlist.json and never computes it again (a bare resume, a restart before the first checkpoint, a
  resume that repeats masking=shortlist); a resume it cannot serve is one line;
- an empty cover and bad settings are one line, the bad settings before any model loads (`crl train
  masking.shortlist_k=0` before the command is imported: tests/test_config.py, BAD);
- experiment=compare_xor_shortlist is compare_xor's recipe with the shortlist picked per run, at any layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import io
import json
import shutil
from pathlib import Path

import pytest

from crl import cli
from crl.analysis.replay import probe as probe_mod
from crl.analysis.replay import shortlist as shortlist_mod
from crl.config import ConfigError, MaskingConfig
from crl.config.compose import check_command, compose_config
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import read_jsonl
from tests.run.helpers import QUICK

# Every feature a candidate (the planted SAE's activations are random, so masking=active's top 16 would miss some
# planted features on most prompts), 8 train prompts (2 of each planted class) x 32 features x 1 level = 256 rollouts.
SHORTLIST = ["masking=shortlist", "masking.top_k=32", "masking.shortlist_prompts=8"]
RUN = [*QUICK, *SHORTLIST, "ppo.total_updates=1"]


def _cli(*argv: str) -> tuple[int, str, str]:
    """`crl argv...` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(list(argv))
        except SystemExit as e:
            code = int(e.code)
    return code, out.getvalue(), err.getvalue()


def _rows(run: Path) -> dict[str, list[dict]]:
    """Every log's rows, without the wall-clock metrics and the run's name."""
    timed = ("charts/update_seconds", "charts/decisions_per_sec", "run")
    return {n: [{k: v for k, v in r.items() if k not in timed} for r in read_jsonl(run / n)] for n in schema.LOGS}


def _never_again(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(comps):
        raise AssertionError("the shortlist was computed again")

    monkeypatch.setattr(shortlist_mod, "train_shortlist", fail)


def test_doctests():
    assert doctest.testmod(shortlist_mod).failed == 0


# -- the shortlist itself ------------------------------------------------------------------------------------------
def test_the_train_shortlist_is_the_planted_features_read_from_train_prompts_only(monkeypatch, capsys, one_thread):
    import crl.progress
    from crl.run.components import build

    monkeypatch.setattr(crl.progress, "EVERY_S", 0.0)  # every step's progress line

    cfg = compose_config("train", [*QUICK, *SHORTLIST])
    comps = build(cfg, splits=("train",))  # no val or test prompts are even loaded: reading one would fail
    seen: list[str] = []
    real = probe_mod.unsteered_pass

    def spy(c, examples, layers, progress=None):
        seen.extend(e.id for e in examples)
        return real(c, examples, layers, progress)

    monkeypatch.setattr(probe_mod, "unsteered_pass", spy)
    short = shortlist_mod.train_shortlist(comps)
    train_ids = [e.id for e in comps.splits["train"][:8]]
    assert seen == train_ids and short["prompt_ids"] == train_ids and short["split"] == "train"
    assert all(i.startswith("planted-train-") for i in seen)
    # The tiny model gets every prompt wrong; each planted feature fixes its own class's prompts (2 of the 8 each).
    assert sorted(short["features"]) == sorted(comps.planted)
    assert (short["n_prompts"], short["n_wrong"], short["layer"]) == (8, 8, 1)
    assert short["covered"] == sum(short["new"]) and short["covered"] >= 7
    assert short["method"].startswith("rollout") and short["seconds"] > 0
    assert short["candidates"] == {"mode": "active", "threshold": 0.0, "top_k": 32}
    # Progress while it runs (crl.progress on stderr): the unsteered pass, then the oracle's rollouts as they end.
    err = capsys.readouterr().err.splitlines()
    unsteered = [line for line in err if line.startswith("[crl] shortlist: train prompts (no steering)  ")]
    assert unsteered[0].endswith("0/8 prompts ...") and unsteered[-1].endswith("done")
    oracle = [line for line in err if line.startswith("[crl] shortlist oracle  ")]
    assert oracle[0] == "[crl] shortlist oracle  0/256 episodes ..." and oracle[-1].endswith("done")
    done = [int(line.split()[3].split("/")[0]) for line in oracle[1:-1]]  # the lines in between, as batches end
    assert done and done == sorted(set(done)) and done[0] > 0 and done[-1] < 256
    assert all("/256 episodes (" in line and "ETA" in line for line in oracle[1:-1])


def test_one_token_multiple_choice_takes_the_suffix_oracle_on_train_prompts(one_thread):
    from crl.analysis.replay.oracle import oracle
    from tests.analysis.replay.test_probe import _mc_world

    comps = _mc_world(masking="none")  # a tiny random model, 12 features x 2 levels, constrained compare
    train = comps.splits["train"][:8]
    episodes, resid = probe_mod.unsteered_pass(comps, train, [1])
    direct = oracle(comps, train, [ep.correct for ep in episodes], resid[1], shortlist_k=3)
    m = MaskingConfig(mode="shortlist", top_k=12, shortlist_k=3, shortlist_prompts=8)  # every feature a candidate
    short = shortlist_mod.train_shortlist(dataclasses.replace(comps, masking=m))
    assert short["method"].startswith("suffix") and short["prompt_ids"] == [e.id for e in train]
    assert short["features"] and short["covered"] == sum(short["new"])  # this world: feature 0 fixes 5 of 5 wrong
    assert {k: short[k] for k in ("features", "new", "n_wrong", "covered")} == {
        k: direct["shortlist"][k] for k in ("features", "new", "n_wrong", "covered")
    }


def test_an_empty_cover_is_one_line_that_says_what_to_try():
    base = {"n_prompts": 64, "layer": 6, "coef": 8.0, "coef_levels": [1.0, -1.0], "features": []}
    with pytest.raises(CRLError, match="no feature fixes any of the 31 of 64 train prompts .* try another steering"):
        shortlist_mod.check_cover({**base, "n_wrong": 31})
    with pytest.raises(CRLError, match="answers all 64 train prompts it tried right at layer 6"):
        shortlist_mod.check_cover({**base, "n_wrong": 0})
    shortlist_mod.check_cover({**base, "n_wrong": 31, "features": [3]})


# -- crl train masking=shortlist -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shortlist_run(tmp_path_factory, one_thread) -> tuple[Path, str, str]:
    """One tiny `crl train masking=shortlist` run for the module: (run dir, stdout, stderr)."""
    run = tmp_path_factory.mktemp("shortlist") / "run"
    code, out, err = _cli("train", *RUN, f"hydra.run.dir={run}")
    assert code == 0, err
    return run, out, err


def test_a_shortlist_run_records_its_features_and_steers_with_them_only(shortlist_run):
    run, out, err = shortlist_run
    short = json.loads((run / schema.SHORTLIST).read_text())
    planted = json.loads((run / schema.RUN_JSON).read_text())["planted"]
    assert sorted(short["features"]) == sorted(planted) and short["split"] == "train"
    assert len(short["new"]) == len(short["cumulative"]) == len(short["features"])
    (start,) = [line for line in err.splitlines() if line.startswith("[crl] shortlist: the unsteered model")]
    assert "then every level" in start and "8 train prompts" in start
    assert "[crl] shortlist oracle  0/256 episodes ..." in err.splitlines()  # then its progress lines (above)
    (line,) = [line for line in out.splitlines() if line.startswith("[crl] shortlist")]
    features = ", ".join(map(str, short["features"]))
    assert line == f"[crl] shortlist (train, 8 prompts, 8 wrong): features [{features}] cover {short['covered']}/8"
    from crl.run.components import saved_config

    masking = saved_config(run).masking  # what eval, analyze, transfer, compare and a bare resume read
    assert (masking.mode, masking.features) == ("fixed", short["features"])
    assert json.loads((run / schema.SUMMARY).read_text())["config"]["masking"]["mode"] == "fixed"
    used = {r["feature"] for r in read_jsonl(run / schema.INTERVENTIONS)}
    assert used - {schema.NO_STEER} <= set(short["features"]) and len(used) > 1


def test_the_run_is_masking_fixed_on_its_shortlist_and_a_restart_never_recomputes_it(
    shortlist_run, tmp_path, monkeypatch
):
    run, _, _ = shortlist_run
    features = json.loads((run / schema.SHORTLIST).read_text())["features"]
    _never_again(monkeypatch)
    # The same run with the features given by hand: the same logs, so the shortlist drew no random numbers of its own.
    fixed = tmp_path / "fixed"
    code, _, err = _cli("train", *QUICK, "ppo.total_updates=1", "masking=fixed", "masking.top_k=32",
                        f"masking.features=[{','.join(map(str, features))}]", f"hydra.run.dir={fixed}")  # fmt: skip
    assert code == 0, err
    assert _rows(fixed) == _rows(run)
    # Killed before its first checkpoint: a bare resume starts it again from config.yaml (masking=fixed), the same.
    again = tmp_path / "again"
    shutil.copytree(run, again)
    for name in (schema.CHECKPOINT, "checkpoints/best.pt", schema.SUMMARY, "policy.pt"):
        (again / name).unlink(missing_ok=True)
    code, out, err = _cli("train", f"resume={again}")
    assert code == 0, err
    assert "starting it again from the beginning" in out and _rows(again) == _rows(run)
    assert (again / schema.SHORTLIST).read_text() == (run / schema.SHORTLIST).read_text()


def test_a_resume_that_repeats_masking_shortlist_reuses_shortlist_json(shortlist_run, tmp_path, monkeypatch):
    run, _, _ = shortlist_run
    _never_again(monkeypatch)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    path = resumed / schema.SHORTLIST
    short = json.loads(path.read_text())
    short["features"] = short["features"][:2]  # edited: the resumed update must steer with these two only
    path.write_text(json.dumps(short))
    code, out, err = _cli("train", f"resume={resumed}", *RUN[:-1], "ppo.total_updates=2")
    assert code == 0, err
    assert f"cover {short['covered']}/8 (stored in {path})" in out
    second = [r for r in read_jsonl(resumed / schema.INTERVENTIONS) if r["phase"] == "train" and r["update"] == 1]
    assert second and {r["feature"] for r in second} - {schema.NO_STEER} <= set(short["features"])

    other = tmp_path / "other"
    shutil.copytree(run, other)
    code, _, err = _cli("train", f"resume={other}", *RUN[:-1], "masking.shortlist_k=3", "ppo.total_updates=2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "masking.shortlist_k=3 (recorded: 4); resume with `crl train resume=" in err
    assert "or with `masking.shortlist_k=4`" in err
    (other / schema.SHORTLIST).unlink()
    code, _, err = _cli("train", f"resume={other}", *RUN[:-1], "ppo.total_updates=2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"has no {schema.SHORTLIST}: it was not trained with masking=shortlist" in err


def test_a_resume_with_another_masking_is_one_line_before_the_model_loads(shortlist_run, tmp_path, monkeypatch):
    """config.yaml records masking=fixed on the shortlist; a resume that asks for another action set is refused. The
    allowed one, masking=shortlist again: test_a_resume_that_repeats_masking_shortlist_reuses_shortlist_json."""
    import crl.run.train as train_mod

    run, _, _ = shortlist_run
    features = json.loads((run / schema.SHORTLIST).read_text())["features"]
    recorded = f"[{','.join(map(str, features))}]"
    fewer = f"[{','.join(map(str, features[:-1]))}]"

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(train_mod, "build", no_model)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    cases = [  # (overrides, what the line says differs, the overrides it offers)
        (["masking=fixed", f"masking.features={fewer}"],  # top_k differs too, but masking=fixed does not read it
         f"masking.features={fewer} (recorded: {recorded})", f"masking.features={recorded}"),
        (["masking=active", "masking.top_k=32"],
         f"masking.mode=active (recorded: fixed), masking.features=null (recorded: {recorded})",
         f"masking.mode=fixed masking.features={recorded}"),
        (["masking=shortlist", "masking.shortlist_prompts=8"],  # top_k left at its default
         "masking.top_k=16 (recorded: 32)", "masking.top_k=32"),
    ]  # fmt: skip
    for argv, said, fix in cases:
        code, _, err = _cli("train", f"resume={resumed}", *QUICK, *argv, "ppo.total_updates=2")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"resume={resumed} conflicts with the run's config.yaml: {said}; " in err, err
        assert f"resume with `crl train resume={resumed}` alone, or with `{fix}`, or start a new run" in err


# -- bad settings: one line, before any model loads ----------------------------------------------------------------
@pytest.mark.parametrize(
    "name,argv,message",
    [
        (
            "train",
            ["masking=shortlist", "masking.features=[1,2]"],
            "masking.features=[1,2] is invalid: masking=shortlist picks the features itself, from the train prompts",
        ),
        ("train", ["masking=shortlist", "masking.shortlist_k=0"], "masking.shortlist_k=0 is invalid: out of range"),
        ("train", ["masking=shortlist", "masking.shortlist_prompts=0"], "masking.shortlist_prompts=0 is invalid"),
        (
            "probe",
            ["masking=shortlist"],
            "masking.mode=shortlist is invalid: the feature shortlist is computed by `crl train`, not by `crl probe`",
        ),
        ("bench_policy", ["masking=shortlist"], "masking.mode=shortlist is invalid: the feature shortlist is"),
    ],
)
def test_bad_shortlist_settings_are_one_line(name, argv, message):
    with pytest.raises(ConfigError) as err:
        check_command(name, argv)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_an_unresolved_shortlist_never_builds_a_masker():
    from crl.agent.masking import FeatureMasker

    with pytest.raises(CRLError, match="masking=shortlist has no features yet"):
        FeatureMasker(MaskingConfig(mode="shortlist"), d_sae=8, allow_noop=True)


# -- the preset ----------------------------------------------------------------------------------------------------
def test_the_xor_shortlist_preset_is_compare_xor_with_a_per_run_shortlist_at_any_layer():
    xor = compose_config("train", ["experiment=compare_xor"])
    for layer in (6, 15, 24):
        cfg = compose_config("train", ["experiment=compare_xor_shortlist", f"steering.layer={layer}"])
        assert cfg.masking == MaskingConfig(mode="shortlist") and cfg.steering.layer == layer
        same = dataclasses.replace(cfg, masking=xor.masking, steering=xor.steering)
        assert same == xor  # the recipe (both directions, no-op prior, 16 epochs at lr 1e-3) is compare_xor's


def test_the_shortlist_recipe_applies_to_any_task_and_keeps_its_episodes():
    xor = compose_config("train", ["experiment=compare_xor_shortlist"])
    for task in ("bbq_offline", "refusal_offline", "compare"):
        base = compose_config("train", [f"task={task}"])
        cfg = compose_config("train", [f"task={task}", "experiment=shortlist_recipe"])
        assert cfg.task == base.task and cfg.masking == MaskingConfig(mode="shortlist")
        assert cfg.ppo.episodes_per_update == base.ppo.episodes_per_update  # the task's budget per update
        assert (cfg.ppo.total_updates, cfg.ppo.update_epochs, cfg.ppo.learning_rate) == (
            xor.ppo.total_updates,
            xor.ppo.update_epochs,
            xor.ppo.learning_rate,
        )
        assert cfg.policy.noop_init_bias == xor.policy.noop_init_bias != base.policy.noop_init_bias
