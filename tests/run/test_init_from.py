"""`crl train init_from=<run>` (crl/run/init_from.py): a new run that starts from another run's trained policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import crl.run.components as components
import crl.run.train as run_train
from crl.agent.ppo import ppo_update
from crl.config import TrainConfig, load
from crl.config.compose import compose_config
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run.components import POLICY_FILE, build, saved_config
from crl.run.init_from import read_source
from crl.run.train import resume_config, train
from tests.run.helpers import QUICK, compose_train, crl

# Standardized observations and a knn abstention fit, so the test sees whether both come with the policy.
SOURCE = [
    *QUICK,
    "policy.obs_norm=standardize",
    "policy.obs_stats_prompts=16",
    "policy.abstain=knn",
    "ppo.total_updates=2",
    "run.eval_every=0",
    "run.select=last",
]
# Another seed, and statistics that would differ from the source's if they were measured (8 prompts, not 16).
NEW = [
    *[o for o in SOURCE if not o.startswith(("ppo.total_updates=", "policy.obs_stats_prompts="))],
    "policy.obs_stats_prompts=8",
    "ppo.total_updates=1",
    "seed=1",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("init") / "source"
    train(compose_train(SOURCE), run_dir)
    return run_dir


def _first_update(monkeypatch: pytest.MonkeyPatch, overrides: list[str], run_dir: Path) -> dict:
    """Train with `overrides`; the policy as the first PPO update receives it (before changing it): its logits and
    values on that update's observations, and its state dict."""
    seen: dict = {}

    def spy(net, optimizer, episodes, *args):
        if not seen:
            obs = torch.cat([ep.obs for ep in episodes if ep.obs is not None and len(ep.obs)])
            with torch.no_grad():
                seen.update(obs=obs, logits=net.logits(obs), value=net.get_value(obs))
            seen["state"] = {k: v.clone() for k, v in net.state_dict().items()}
        return ppo_update(net, optimizer, episodes, *args)

    monkeypatch.setattr(run_train, "ppo_update", spy)
    train(compose_train(overrides), run_dir)
    return seen


def test_a_run_initialised_from_another_starts_from_its_policy(source, tmp_path, monkeypatch, capsys):
    init = _first_update(monkeypatch, [*NEW, f"init_from={source}"], tmp_path / "init")
    assert f"[crl] init_from {source}: starting from its {POLICY_FILE}" in capsys.readouterr().out
    loaded = build(saved_config(source)).load_policy(source).net  # what `crl eval` would load
    with torch.no_grad():
        torch.testing.assert_close(init["logits"], loaded.logits(init["obs"]))
        torch.testing.assert_close(init["value"], loaded.get_value(init["obs"]))
    want = loaded.state_dict()
    assert init["state"].keys() == want.keys()
    for key in ("obs_mean", "obs_std", "abstain_threshold", "abstain_sample"):  # not measured again
        assert torch.equal(init["state"][key], want[key]), key
    record = json.loads((tmp_path / "init" / schema.RUN_JSON).read_text())["init_from"]
    assert record["run_dir"] == str(source.resolve()) and record["policy"] == POLICY_FILE
    assert record["update"] == 2 and "not measured" in record["obs_stats"]

    # The same run without init_from starts elsewhere: the assertions above can fail.
    fresh = _first_update(monkeypatch, NEW, tmp_path / "fresh")
    with torch.no_grad():
        assert not torch.allclose(fresh["logits"], loaded.logits(fresh["obs"]), atol=1e-3)
    assert not torch.allclose(fresh["state"]["obs_mean"], want["obs_mean"])  # measured on its own 8 prompts
    assert json.loads((tmp_path / "fresh" / schema.RUN_JSON).read_text())["init_from"] is None


def test_a_checkpointed_run_gives_its_last_checkpoint(source, tmp_path):
    ckpt_only = tmp_path / "ckpt_only"
    shutil.copytree(source, ckpt_only)
    (ckpt_only / POLICY_FILE).unlink()
    src = read_source(load(TrainConfig, compose_train([*NEW, f"init_from={ckpt_only}"])))
    assert (src.policy_file, src.update) == (schema.CHECKPOINT, 2)
    ckpt = torch.load(ckpt_only / schema.CHECKPOINT, weights_only=False)["policy"]
    assert all(torch.equal(src.state[k], ckpt[k]) for k in ckpt)


@pytest.mark.parametrize(
    "override,says",
    [
        ("steering.layer=0", "steering.layer: the run has 1, this run 0"),
        ("sae.d_sae=16", "sae.d_sae: the run has 32, this run 16"),
        ("policy.hidden=32", "policy.hidden: the run has 256, this run 32"),
    ],
)
def test_a_mismatch_is_one_line_before_the_model_loads(source, tmp_path, monkeypatch, override, says):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(components, "load_model", no_model)
    with pytest.raises(CRLError, match=f"init_from={source} is invalid: .*{says}.*; valid: ") as e:
        train(compose_train([*NEW, override, f"init_from={source}"]), tmp_path / "new")
    assert "\n" not in str(e.value)


def test_a_source_with_another_sae_is_refused_once_loaded(source, tmp_path):
    # The planted SAE is built from the task's train prompts: another task seed, another decoder (same config keys).
    with pytest.raises(CRLError, match=r"init_from=.*another model or SAE \(sae_identity: ") as e:
        train(compose_train([*NEW, "task.seed=1", f"init_from={source}"]), tmp_path / "new")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "new" / schema.RUN_JSON).exists()  # refused before anything was written


def test_missing_not_a_run_no_policy_and_resume_are_one_line_errors(source, tmp_path, capsys):
    def error(init_from: Path) -> str:
        with pytest.raises(CRLError) as e:
            train(compose_train([*NEW, f"init_from={init_from}"]), tmp_path / "new")
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error(tmp_path / "nowhere").startswith(f"init_from={tmp_path / 'nowhere'} is invalid: no such directory")
    (tmp_path / "empty").mkdir()
    assert "not a `crl train` run directory (no run.json or config.yaml)" in error(tmp_path / "empty")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (schema.RUN_JSON, schema.CONFIG_YAML):
        shutil.copy(source / name, bare / name)
    assert "no trained policy yet" in error(bare)

    with pytest.raises(CRLError, match=f"init_from={source} is invalid: resume= continues") as e:
        compose_config("train", [*NEW, f"init_from={source}", f"resume={source}"])
    assert "\n" not in str(e.value)
    assert crl("train", *NEW, f"init_from={source}", f"resume={source}") == 2  # before the run directory is touched
    err = capsys.readouterr().err.strip()
    assert err.startswith("crl: error: init_from=") and "\n" not in err


def test_a_run_started_with_init_from_resumes_from_its_checkpoint(source, tmp_path, monkeypatch):
    src, run = tmp_path / "src", tmp_path / "run"
    shutil.copytree(source, src)
    calls = []

    def killed_at_update_2(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return ppo_update(*args)

    monkeypatch.setattr(run_train, "ppo_update", killed_at_update_2)
    overrides = [*[o for o in NEW if not o.startswith("ppo.total_updates=")], "ppo.total_updates=2"]
    with pytest.raises(RuntimeError, match="killed"):
        train(compose_train([*overrides, f"init_from={src}"]), run)
    monkeypatch.setattr(run_train, "ppo_update", ppo_update)
    shutil.rmtree(src)  # the checkpoint holds the policy: resume never reads the source again

    assert resume_config(TrainConfig(), run, [f"resume={run}"]).init_from is None
    summary = train(compose_train([f"resume={run}"]), run, user_overrides=[f"resume={run}"])
    assert summary["after"]["n"] > 0
    assert [m["update"] for m in read_jsonl(run / schema.METRICS)] == [0, 1]
    assert json.loads((run / schema.RUN_JSON).read_text())["init_from"]["run_dir"] == str(src.resolve())


def test_a_run_killed_before_its_first_checkpoint_starts_again_from_its_init_from(source, tmp_path, capsys):
    first = tmp_path / "first"
    train(compose_train([*NEW, f"init_from={source}"]), first)
    again = tmp_path / "again"  # run.json and config.yaml written, nothing else: killed while loading
    again.mkdir()
    for name in (schema.RUN_JSON, schema.CONFIG_YAML):
        shutil.copy(first / name, again / name)
    capsys.readouterr()
    assert crl("train", f"resume={again}") == 0
    assert f"[crl] init_from {source}: starting from its {POLICY_FILE}" in capsys.readouterr().out
    assert json.loads((again / schema.RUN_JSON).read_text())["init_from"]["run_dir"] == str(source.resolve())
    # The same start as the first run, so the same training.
    rows = {d: [r["feature"] for r in read_jsonl(d / schema.INTERVENTIONS)] for d in (first, again)}
    assert rows[first] == rows[again]
