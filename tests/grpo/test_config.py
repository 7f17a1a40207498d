"""`crl grpo`'s config: the grpo group states no schema default, and bad input is one line before any model loads."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from crl import cli
from crl.config import COMMAND_GROUPS, ConfigError, GRPOGroupConfig, GRPOTrainConfig
from crl.config.compose import check_command, compose_config
from crl.paths import CONF_DIR
from tests.test_config import _restated

CONF = Path(CONF_DIR)

BAD = [
    (
        "grpo.batch_size=100",
        "grpo.batch_size=100 is invalid: not a multiple of grpo.num_generations=8: each round samples whole groups; "
        "valid: a multiple of 8, e.g. 96 or 104",
    ),
    (
        "grpo.rollouts=1000",
        "grpo.rollouts=1000 is invalid: not a multiple of grpo.batch_size=128; valid: a multiple of",
    ),
    ("grpo.micro_batch_size=48", "grpo.micro_batch_size=48 is invalid: does not divide the 128 completions of an"),
    ("grpo.minibatches=3", "grpo.minibatches=3 is invalid: does not divide grpo.batch_size=128; valid: a divisor"),
    ("grpo.num_generations=1", "grpo.num_generations=1 is invalid: out of range; valid: an integer >= 2"),
    ("grpo.eval_every=0", "grpo.eval_every=0 is invalid: select=best_val needs val evaluations"),
    ("grpo.eval_split=val", "grpo.eval_split=val is invalid: the split that selects the model cannot also"),
    ("grpo.temperature=0", "grpo.temperature=0.0 is invalid: out of range; valid: a number > 0"),
    ("grpo.loss_type=ppo", "grpo.loss_type=ppo is invalid: unknown choice; valid: grpo, dr_grpo, dapo, bnpo"),
    ("grpo.lora_target_modules=[]", "grpo.lora_target_modules=[] is invalid: out of range"),
    ("model.weights=runs/x", "model.weights=runs/x is invalid: `crl grpo` tunes the model itself"),
    ("sae=planted", "sae.source=planted is invalid: the planted SAE is built for the planted task"),
    ("grpo.foo=1", "grpo.foo=1 is invalid: no such key; valid: rollouts, num_generations, "),
]


def test_defaults_are_crl_trains_budget_in_its_shape():
    from crl.config import PPOConfig, RunConfig, TrainConfig

    g, ppo = GRPOGroupConfig(), PPOConfig()
    assert g.rollouts == ppo.total_updates * ppo.episodes_per_update  # one completion = one episode
    assert (g.rounds, g.batch_size, g.eval_every) == (ppo.total_updates, ppo.episodes_per_update, RunConfig.eval_every)
    cfg = compose_config("grpo", [])
    assert cfg == GRPOTrainConfig()
    train = TrainConfig()  # the same model, SAE, task and steering as `crl train`: the same prompts
    assert (cfg.model, cfg.sae, cfg.task, cfg.steering, cfg.seed) == (
        train.model,
        train.sae,
        train.task,
        train.steering,
        train.seed,
    )


def test_no_grpo_yaml_restates_a_schema_default():
    restated = []
    for group, cls in COMMAND_GROUPS.items():
        for path in sorted((CONF / group).glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            assert f"base_{group}" in data.get("defaults", []), f"{path} does not pull in its schema"
            restated += [f"{path.relative_to(CONF)}: {k}" for k in _restated(data, dataclasses.asdict(cls()))]
    assert not restated, restated


@pytest.mark.parametrize("override,message", BAD)
def test_bad_values_are_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        check_command("grpo", [override])
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_a_sweep_is_checked_value_by_value():
    check_command(
        "grpo", ["-m", "grpo.learning_rate=1e-5,3e-5,1e-4", "grpo.temperature=1.0,1.5", "grpo.num_generations=4,8"]
    )
    with pytest.raises(ConfigError, match="^grpo.batch_size=128 is invalid: not a multiple of grpo.num_generations=3"):
        check_command("grpo", ["-m", "grpo.num_generations=4,3"])


def test_lora_without_peft_is_one_line_and_full_fine_tuning_needs_none(monkeypatch):
    import crl.config.groups as groups

    monkeypatch.setattr(groups, "_installed", lambda module: module != "peft")
    with pytest.raises(ConfigError) as err:
        check_command("grpo", [])
    assert str(err.value) == (
        "grpo.lora=true is invalid: LoRA needs peft, which is not installed; valid: false, or `pip install peft`"
    )
    check_command("grpo", ["grpo.lora=false"])


def test_bad_input_stops_before_the_command_is_imported(monkeypatch, capsys):
    def command() -> None:
        raise AssertionError("the command ran: validation must come first")

    monkeypatch.setitem(sys.modules, "_crl_test_command", types.SimpleNamespace(main=command))
    monkeypatch.setitem(cli.COMMANDS, ("grpo",), "_crl_test_command:main")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["grpo", "grpo.batch_size=100"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("crl: error: grpo.batch_size=100 is invalid: ") and len(err.strip().splitlines()) == 1


def test_bad_input_is_one_line_from_the_shell_in_seconds(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "CRL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "crl.cli", "grpo", "grpo.rollouts=100", f"hydra.run.dir={tmp_path / 'run'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crl: error: grpo.rollouts=100 is invalid: "), proc.stderr
    assert proc.stdout == "" and time.perf_counter() - t0 < 10
    assert not (tmp_path / "run").exists() and (not cache.exists() or not any(cache.iterdir()))
