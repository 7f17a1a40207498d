"""Training acceptance: learning on the planted task, kill-and-resume, sweeps, and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crl.config import TrainConfig
from crl.config.compose import compose_config
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run.components import build
from crl.run.train import config_yaml, resume_config, train
from tests.run.helpers import QUICK, compose_train, crl

CRL = [sys.executable, "-m", "crl.cli", "train"]


def planted_choice_rate(run_dir: Path, phase: str) -> float:
    """Share of decisive steps (step 0) where the greedy policy chose the prompt's planted feature."""
    planted = json.loads((run_dir / schema.RUN_JSON).read_text())["planted"]
    cls = {r["prompt_id"]: r["meta"]["cls"] for r in read_jsonl(run_dir / schema.EPISODES) if r["phase"] == phase}
    rows = [r for r in read_jsonl(run_dir / schema.INTERVENTIONS) if r["phase"] == phase and r["step"] == 0]
    return sum(r["feature"] == planted[cls[r["prompt_id"]]] for r in rows) / len(rows)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("planted")
    cfg = compose_train(["experiment=planted", "logger=disabled", "run.analyze=false"])
    return run_dir, train(cfg, run_dir)


def test_learning_finds_the_planted_features(planted_run):
    run_dir, summary = planted_run
    assert summary["before"]["accuracy"] <= 0.3  # unsteered, the tiny model does not know the answers
    assert summary["after"]["accuracy"] >= 0.95
    assert planted_choice_rate(run_dir, "eval:test") >= 0.90
    top = {r["feature"] for r in summary["top_features"][:4]}
    assert top == set(summary["planted"])


def test_learning_criterion_fails_when_learning_is_broken(tmp_path):
    # The same criterion with a zero learning rate must not pass: the test above can fail.
    cfg = compose_train(
        ["experiment=planted", "logger=disabled", "run.analyze=false", "ppo.learning_rate=0", "ppo.total_updates=3"]
    )
    summary = train(cfg, tmp_path)
    assert summary["after"]["accuracy"] < 0.95 or planted_choice_rate(tmp_path, "eval:test") < 0.90


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [r for r in read_jsonl(run_dir / schema.INTERVENTIONS) if r["phase"] == "train"]
    return [{k: v for k, v in r.items() if k != "run"} for r in rows]


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    args = [*QUICK, "ppo.total_updates=6"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*CRL, *args, f"hydra.run.dir={full}"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        [*CRL, *args, f"hydra.run.dir={killed}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(read_jsonl(killed / schema.METRICS)) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed; the test proves nothing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / schema.SUMMARY).exists()
    subprocess.run([*CRL, f"resume={killed}"], check=True, env=env, capture_output=True)
    a, b = _train_rows(full), _train_rows(killed)
    assert len(a) == len(b) > 0
    assert a == b  # no duplicated and no missing rows, identical content
    pa, pb = torch.load(full / "policy.pt"), torch.load(killed / "policy.pt")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_sweep_writes_separate_complete_run_dirs(tmp_path):
    sweep = tmp_path / "sweep"
    subprocess.run(
        [
            *CRL,
            "-m",
            "seed=0,1",
            "steering.layer=0,1",
            *QUICK,
            "ppo.total_updates=1",
            "ppo.episodes_per_update=8",
            "ppo.num_envs=8",
            "sae.d_sae=16",
            "task.n_test=8",
            f"hydra.sweep.dir={sweep}",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(runs) == 4
    meta = [json.loads((r / schema.RUN_JSON).read_text()) for r in runs]
    ids = {(m["seed"], m["layer"]) for m in meta}
    assert ids == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for r in runs:
        for name in (schema.CONFIG_YAML, schema.CHECKPOINT, schema.INTERVENTIONS, schema.METRICS):
            assert (r / name).exists(), f"{r}/{name} missing"


def test_unknown_config_group_option_is_a_clear_error():
    out = subprocess.run([*CRL, "task=no_such_task"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "no_such_task" in out.stderr and "arith" in out.stderr  # names the option and the choices


def test_masking_that_leaves_no_action_fails_before_training():
    cfg = compose_train(
        [*QUICK, "masking=active", "masking.top_k=0", "masking.threshold=1e9", "steering.allow_noop=false"]
    )
    with pytest.raises(CRLError, match="masking.top_k=0 is invalid: .*no valid action"):
        build(cfg)


def test_incompatible_missing_and_corrupt_resume(planted_run, tmp_path):
    run_dir, _ = planted_run
    cfg = compose_train(["experiment=planted", "logger=disabled", f"resume={run_dir}", "model.seed=1"])
    with pytest.raises(CRLError, match="incompatible.*model"):
        train(cfg, run_dir, user_overrides=[f"resume={run_dir}", "model.seed=1"])
    bare = tmp_path / "no_ckpt"
    bare.mkdir()
    for name in (schema.RUN_JSON, schema.CONFIG_YAML):
        (bare / name).write_bytes((run_dir / name).read_bytes())
    cfg = compose_train([f"resume={bare}"])
    with pytest.raises(CRLError, match="no checkpoint"):
        train(cfg, bare, user_overrides=[f"resume={bare}"])
    (bare / "checkpoints").mkdir()
    (bare / schema.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CRLError, match="corrupt"):
        train(cfg, bare, user_overrides=[f"resume={bare}"])


def test_an_old_runs_config_still_resumes(tmp_path):
    # config.yaml of a run made before steering.fixed_length and task.refusal_classifier existed
    old = (
        config_yaml(TrainConfig())
        .decode()
        .replace("  fixed_length: false\n", "")
        .replace("  refusal_classifier: null\n", "")
    )
    assert "fixed_length" not in old and "refusal_classifier" not in old
    (tmp_path / schema.CONFIG_YAML).write_text(old)
    assert resume_config(TrainConfig(), tmp_path, [f"resume={tmp_path}"]) == TrainConfig(resume=str(tmp_path))
    now = compose_config("train", ["ppo.total_updates=20"])  # the same model, SAE, task and layer
    assert resume_config(now, tmp_path, [f"resume={tmp_path}", "ppo.total_updates=20"]) is now
    with pytest.raises(CRLError, match="incompatible with this config: task differ"):
        resume_config(compose_config("train", ["task.n_test=8"]), tmp_path, [f"resume={tmp_path}", "task.n_test=8"])


def _resume_with(run_dir):
    """(resume, refused) on `run_dir`: `crl train resume=<run_dir>` with these overrides composed and checked (the
    composed config comes back), or refused: its one-line message, which names the run and config.yaml."""

    def resume(*argv: str) -> TrainConfig:
        cfg = compose_config("train", list(argv))
        assert resume_config(cfg, run_dir, [f"resume={run_dir}", *argv]) is cfg
        return cfg

    def refused(*argv: str) -> str:
        with pytest.raises(CRLError) as e:
            resume(*argv)
        said = str(e.value)
        assert "\n" not in said and said.startswith(f"resume={run_dir} conflicts with the run's config.yaml: ")
        return said

    return resume, refused


def test_a_resume_keeps_the_runs_masking(tmp_path):
    """A masking the recorded one does not match is one line naming the key, the recorded value and the fix; only
    the settings the recorded mode reads count, and masking=shortlist matches a shortlist run's masking=fixed."""
    import doctest

    import crl.config.groups as groups_mod
    import crl.run.train as train_mod

    assert doctest.testmod(train_mod).failed == 0 and doctest.testmod(groups_mod).failed == 0
    fixed = ["masking=fixed", "masking.features=[3,5]", "masking.shortlist_prompts=8"]
    (tmp_path / schema.CONFIG_YAML).write_bytes(config_yaml(compose_config("train", fixed)))

    resume, refused = _resume_with(tmp_path)
    resume(*fixed, "ppo.total_updates=20")
    resume("masking=fixed", "masking.features=[3,5]", "masking.top_k=4")  # masking=fixed reads no top_k
    assert "masking.features=[3,6] (recorded: [3,5]); resume with `crl train resume=" in refused(
        "masking=fixed", "masking.features=[3,6]"
    )
    said = refused("ppo.total_updates=20")  # the default masking (adaptive) is not the run's
    assert "masking.mode=adaptive (recorded: fixed), masking.features=null (recorded: [3,5]); " in said
    assert said.endswith("alone, or with `masking.mode=fixed masking.features=[3,5]`, or start a new run")
    # masking=shortlist: only where the run has a shortlist.json (then resolve reuses it)
    shortlist = ["masking=shortlist", "masking.shortlist_prompts=8"]
    with pytest.raises(CRLError, match="has no shortlist.json: it was not trained with masking=shortlist"):
        resume(*shortlist)
    (tmp_path / schema.SHORTLIST).write_text(json.dumps({"features": [3, 5]}))
    assert resume(*shortlist).masking.mode == "shortlist"
    assert "masking.shortlist_prompts=64 (recorded: 8)" in refused("masking=shortlist")
    assert "masking.top_k=4 (recorded: 16)" in refused(*shortlist, "masking.top_k=4")


def test_a_resume_keeps_the_runs_action_ids_and_policy_network(tmp_path):
    """Steering that defines the action ids (coef, coef_mode, the order of coef_levels, the no-op) and the policy
    network's shape and meaning must match config.yaml: each differing key in one line with the recorded value and
    the overrides that match; settings the checkpoint replaces (init_scale) or that change no weight pass."""
    run = ["steering.coef=4", "policy.abstain=knn", "policy.abstain_k=5"]
    (tmp_path / schema.CONFIG_YAML).write_bytes(config_yaml(compose_config("train", run)))

    resume, refused = _resume_with(tmp_path)
    resume(*run, "ppo.total_updates=20", "policy.init_scale=2", "policy.greedy_rule=steer_if_likely")
    resume(*run, "steering.coef_levels=[1,-1]", "policy.hidden=256")  # the recorded values (levels written as ints)
    said = refused("policy.abstain=knn", "steering.coef=2")
    assert said.endswith(
        ": steering.coef=2.0 (recorded: 4.0); resume with `crl train "
        f"resume={tmp_path}` alone, or with `steering.coef=4.0`, or start a new run"
    )
    # [-1,1] swaps what action ids 0..d_sae-1 and d_sae..2*d_sae-1 do in the checkpoint's policy
    assert ": steering.coef_levels=[-1.0,1.0] (recorded: [1.0,-1.0]); " in refused(*run, "steering.coef_levels=[-1,1]")
    said = refused("steering.coef=4", "steering.allow_noop=false")  # abstention needs the no-op: abstain=off too
    assert ": steering.allow_noop=false (recorded: true), policy.abstain=off (recorded: knn); " in said
    assert "or with `steering.allow_noop=true policy.abstain=knn`" in said
    assert ": steering.coef_mode=raw (recorded: relative); " in refused(*run, "steering.coef_mode=raw")
    said = refused("steering.coef=4", "policy.hidden=64", "policy.head=dense", "policy.obs_norm=layer")
    assert ": policy.hidden=64 (recorded: 256), policy.head=dense (recorded: sae), policy.obs_norm=layer " in said
    assert "policy.abstain=off (recorded: knn); " in said
    assert said.endswith(
        "`policy.hidden=256 policy.head=sae policy.obs_norm=standardize policy.abstain=knn`, or start a new run"
    )
    assert ": policy.abstain_k=3 (recorded: 5); " in refused(*run, "policy.abstain_k=3")
    # every group in one line, masking first (its message as before)
    said = refused("masking=fixed", "masking.features=[3]", "steering.coef=2", "policy.abstain=knn")
    assert ": masking.mode=fixed (recorded: adaptive), steering.coef=2.0 (recorded: 4.0); " in said
    assert "or with `masking.mode=adaptive steering.coef=4.0`" in said
    # abstain_k counts only where the run abstains by knn (the distance its threshold was fitted on)
    off = tmp_path / "off"
    off.mkdir()
    (off / schema.CONFIG_YAML).write_bytes(config_yaml(compose_config("train", ["policy.abstain_k=5"])))
    cfg = compose_config("train", ["policy.abstain_k=3"])
    assert resume_config(cfg, off, [f"resume={off}", "policy.abstain_k=3"]) is cfg


def test_a_resume_with_another_coef_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """steering.coef=2 on a coef-4 run would continue its checkpoint with other actions: refused by `train` and by
    `crl train` (exit 2, one line) before the model or the checkpoint is loaded."""
    import crl.run.train as train_mod

    def no_model(*args, **kwargs):
        raise AssertionError("the model or the checkpoint was loaded")

    monkeypatch.setattr(train_mod, "build", no_model)
    monkeypatch.setattr(train_mod, "load_checkpoint", no_model)
    (tmp_path / schema.CONFIG_YAML).write_bytes(config_yaml(compose_config("train", [*QUICK, "steering.coef=4"])))
    (tmp_path / schema.RUN_JSON).write_text("{}")  # train only checks that it exists before the config
    argv = [f"resume={tmp_path}", *QUICK, "steering.coef=2"]
    with pytest.raises(CRLError, match=r"steering\.coef=2\.0 \(recorded: 4\.0\); resume with `crl train resume="):
        train(compose_train(argv), tmp_path, argv)
    assert crl("train", *argv) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert f"resume={tmp_path} conflicts with the run's config.yaml: steering.coef=2.0 (recorded: 4.0); " in err
    assert not (tmp_path / schema.FAILED).exists()


def _hurting_task(cfg) -> type:
    """The planted task with the reward turned around: 1 iff the completion is the unsteered model's own, so every
    intervention that changes the output can only hurt."""
    from crl.envs.rollout import NoSteer, run_episodes
    from crl.envs.tasks.planted import PlantedTask

    comps = build(cfg)
    own: dict[str, str] = {}
    for split in ("train", "val", "test"):
        env = comps.env(split)
        for ep in run_episodes(env, comps.splits[split], NoSteer(env)):
            own[comps.task.format_prompt(ep.example, comps.lm.tokenizer)] = ep.completion
        env.close()

    class Hurting(PlantedTask):
        def reward(self, prompts, completions, **columns):
            return [float(c == own[p]) for p, c in zip(prompts, completions, strict=True)]

    return Hurting


@pytest.mark.parametrize(
    "pull", [["ppo.regularizer=steer_cost", "ppo.reg_coef=0.1"], ["ppo.regularizer=kl", "ppo.reg_coef=0.5"]]
)
def test_no_steer_pull_keeps_the_policy_unsteered_when_steering_only_hurts(tmp_path, monkeypatch, pull):
    from crl.envs.tasks.registry import TASKS

    args = [*QUICK, "policy.noop_init_bias=4.2", "ppo.total_updates=12", "ppo.advantage=unsteered", "ppo.group_size=4"]
    monkeypatch.setitem(TASKS, "planted", _hurting_task(compose_train(args)))
    pulled = train(compose_train([*args, *pull, "ppo.ent_coef=0"]), tmp_path / "pulled")
    train(compose_train([*args, "ppo.regularizer=none", "ppo.ent_coef=0.1"]), tmp_path / "free")
    noop = {
        name: [m["charts/noop_share"] for m in read_jsonl(tmp_path / name / schema.METRICS)]
        for name in ("pulled", "free")
    }
    assert summary_noop(pulled) == 1.0 and pulled["after"]["accuracy"] == 1.0
    assert noop["pulled"][-1] >= noop["pulled"][0] + 0.1  # sampling steers less than at the start, not more
    # The same run without the pull drifts into steering: the assertions above can fail.
    assert noop["free"][-1] < noop["free"][0] - 0.1


def summary_noop(summary: dict) -> float:
    return sum(r["share"] for r in summary["top_features"] if r["feature"] == schema.NO_STEER)


# A tiny run with every phase before update 1 (the unsteered test evaluation, the observation statistics, val at
# update 0), in lockstep batches of 8 prompts, so each phase has lines between its first and its last.
PHASED = [
    *[o for o in QUICK if not o.startswith("run.eval_before=")],
    "run.eval_before=true",
    "policy.obs_norm=standardize",
    "policy.obs_stats_prompts=16",
    "ppo.num_envs=8",
    "ppo.episodes_per_update=16",
    "ppo.total_updates=2",
    "run.eval_every=1",
]
TIMING = re.compile(r"seconds|per_sec|wall|_time\b|\btime_")  # as the soak: keys that measure wall time


def _phase_lines(lines: list[str], phase: str) -> tuple[list[str], list[str], list[str]]:
    """(first lines, lines in between, last lines) of the progress of `phase`."""
    head = re.escape(f"[crl] {phase}")
    first = [ln for ln in lines if re.fullmatch(rf"{head}  0/\d+ prompts \.\.\.", ln)]
    rate = r"[\d.,]+ prompts/s  elapsed \S+"
    between = [ln for ln in lines if re.fullmatch(rf"{head}  \d+/\d+ prompts \([\d.]+%\)  {rate}  ETA \S+", ln)]
    last = [ln for ln in lines if re.fullmatch(rf"{head}  (\d+)/\1 prompts \(100\.0%\)  {rate}  done", ln)]
    return first, between, last


def test_phases_before_update_1_print_progress_on_stderr_and_logs_stay_identical(tmp_path, monkeypatch, capsys):
    from crl import progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line whenever a step finishes episodes
    train(compose_train(PHASED), tmp_path / "every")
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "it/s" not in captured.err  # plain lines, no tqdm bar
    lines = captured.err.splitlines()
    episodes = read_jsonl(tmp_path / "every" / schema.EPISODES)
    n_val = sum(r["phase"] == "eval:val" and r["update"] == 0 for r in episodes)
    assert n_val > 8  # more than one batch
    for phase, n in [
        ("test before training (no steering)", 16),
        ("observation statistics (train)", 16),
        ("val at update 0", n_val),
    ]:
        first, between, last = _phase_lines(lines, phase)
        assert len(first) == 1 and len(last) == 1, (phase, captured.err)
        assert lines.index(first[0]) < lines.index(between[0]) < lines.index(last[0]), (phase, captured.err)
        assert last[0].startswith(f"[crl] {phase}  {n}/{n} prompts (100.0%)"), last[0]
    updates = [ln.split("  ")[0] for ln in lines if re.match(r"\[crl\] update \d+/2  reward ", ln)]
    assert updates == ["[crl] update 1/2", "[crl] update 2/2"]  # the update lines, on stderr too

    monkeypatch.setattr(progress, "EVERY_S", 1e9)  # first and last lines only
    train(compose_train(PHASED), tmp_path / "quiet")
    for name in (schema.INTERVENTIONS, schema.EPISODES, schema.METRICS):
        every, quiet = read_jsonl(tmp_path / "every" / name), read_jsonl(tmp_path / "quiet" / name)
        assert [_untimed(r) for r in every] == [_untimed(r) for r in quiet], name  # progress goes to stderr only


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "run" and not TIMING.search(k)}


def test_evaluations_never_change_training(tmp_path):
    # Evaluating (test before training, val every update) must not touch what training does: the same train rows
    # with every evaluation switched off.
    train(compose_train(PHASED), tmp_path / "evals")
    quiet = [o for o in PHASED if not o.startswith(("run.eval_before=", "run.eval_every="))]
    train(compose_train([*quiet, "run.eval_before=false", "run.eval_every=0", "run.select=last"]), tmp_path / "none")
    for name in (schema.INTERVENTIONS, schema.EPISODES):
        rows = {
            d: [_untimed(r) for r in read_jsonl(tmp_path / d / name) if r["phase"] == "train"]
            for d in ("evals", "none")
        }
        assert rows["evals"] and rows["evals"] == rows["none"], name


def test_training_does_not_depend_on_random_numbers_drawn_while_loading(tmp_path, monkeypatch):
    # The first run on a machine converts the default model (a random init inside transformers); later runs load the
    # cache and draw nothing. Both must train the same policy.
    import crl.run.train as run_train

    train(compose_train(PHASED), tmp_path / "warm")

    def cold_build(*args, **kwargs):
        comps = build(*args, **kwargs)
        torch.rand(1000)  # what a conversion's model init draws
        return comps

    monkeypatch.setattr(run_train, "build", cold_build)
    train(compose_train(PHASED), tmp_path / "cold")
    for name in (schema.INTERVENTIONS, schema.EPISODES):
        rows = {d: [_untimed(r) for r in read_jsonl(tmp_path / d / name)] for d in ("warm", "cold")}
        assert rows["warm"] and rows["warm"] == rows["cold"], name
