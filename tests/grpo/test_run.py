"""`crl grpo` end to end on a tiny model: the run directory, the tuned weights loading back, full fine-tuning, a run
that never learns, resume, and what resume refuses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from crl.backends.model import load_model
from crl.config import ModelConfig
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run import grpo as run_grpo
from tests.grpo.conftest import coin_reward, grpo_run
from tests.run.helpers import crl

TINY = ModelConfig(source="tiny", name="llama")
# Wall-clock values: besides the run's name, the only values two identical runs do not share.
TIMED = ("speed/", "step_time", "train_runtime")


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMED) and k != "run"} for r in rows]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, one_thread) -> Path:
    from crl.envs.tasks.planted import PlantedTask

    run = tmp_path_factory.mktemp("grpo") / "lora"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PlantedTask, "reward", coin_reward)
        assert grpo_run(run, "grpo.select=last") == 0
    return run


def test_the_run_directory(lora_run):
    run = lora_run
    for name in (
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "episodes.jsonl",
        "summary.json",
        "model/crl_weights.json",
    ):
        assert (run / name).exists(), name
    assert (run / "model" / "adapter_config.json").exists() and not (run / schema.FAILED).exists()
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]  # older ones dropped
    assert json.loads((run / "run.json").read_text())["method"] == "grpo"

    metrics = read_jsonl(run / schema.METRICS)
    assert [(r["step"], r["round"], r["rollouts"]) for r in metrics] == [(1, 1, 16), (2, 2, 32), (3, 3, 48)]
    for r in metrics:
        assert {"reward", "reward_std", "frac_reward_zero_std", "grad_norm", "train/well_formed"} <= set(r)
        assert "eval/val_accuracy" in r and r["speed/completions_per_sec"] > 0
    assert any(r["grad_norm"] > 0 and r["frac_reward_zero_std"] < 1 for r in metrics)

    episodes = read_jsonl(run / schema.EPISODES)
    train = [r for r in episodes if r["phase"] == "train"]
    assert len(train) == 48 and sorted({r["update"] for r in train}) == [0, 1, 2]  # one completion = one episode
    assert [r["episode"] for r in train] == list(range(48))
    phases = {r["phase"] for r in episodes}
    assert {"baseline:none:test", "eval:test", "eval:val"} <= phases

    s = json.loads((run / "summary.json").read_text())
    for key in ("before", "after"):  # as `crl train` writes them
        assert {"accuracy", "well_formed", "n"} <= set(s[key]) and s[key]["n"] == 16
    assert s["training"]["rollouts"] == 48 and s["training"]["completions_per_sec"] > 0
    assert s["learning"]["started"] is True and s["learning"]["why"] is None
    assert s["selection"]["selected_round"] == 3 and [r["round"] for r in s["selection"]["val_curve"]] == [0, 1, 2, 3]
    assert s["weights"] == {"dir": "model", "kind": "lora", "selected_round": 3}
    assert s["free"] is None  # the planted task is free text already


def test_the_tuned_weights_load_back_differ_from_base_and_are_the_ones_tested(lora_run, coin):
    from crl.config import TrainConfig
    from crl.envs.rollout import accuracy
    from crl.run.components import build
    from crl.run.evaluate import evaluate

    base = load_model(TINY)
    tuned = load_model(dataclasses.replace(TINY, weights=str(lora_run)))
    assert tuned.weights == str(lora_run / "model")
    changed = [n for n, p in tuned.model.state_dict().items() if not torch.equal(p, base.model.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # LoRA touched the linear layers only

    # CRL's evaluator on the loaded model reproduces the run's own test result.
    cfg = run_grpo.saved_config(lora_run)
    comps = build(
        TrainConfig(
            model=dataclasses.replace(cfg.model, weights=str(lora_run)),
            sae=cfg.sae,
            task=cfg.task,
            steering=cfg.steering,
            seed=cfg.seed,
        )
    )
    after = evaluate(comps, "test", None, cfg.seed)
    summary = json.loads((lora_run / "summary.json").read_text())
    assert accuracy(after)["accuracy"] == summary["after"]["accuracy"]
    rows = [r for r in read_jsonl(lora_run / schema.EPISODES) if r["phase"] == "eval:test"]
    assert [ep.completion for ep in after] == [r["completion"] for r in rows]


def test_full_fine_tuning(tmp_path, one_thread, coin):
    run = tmp_path / "full"
    assert grpo_run(run, "grpo.lora=false", "grpo.rollouts=16", "grpo.select=last") == 0
    assert (run / "model" / "model.safetensors").exists() and not (run / "model" / "adapter_config.json").exists()
    base, tuned = load_model(TINY), load_model(dataclasses.replace(TINY, weights=str(run)))
    assert not all(torch.equal(a, b) for a, b in zip(base.model.parameters(), tuned.model.parameters(), strict=True))
    assert json.loads((run / "summary.json").read_text())["weights"]["kind"] == "full"


def test_minibatches_make_several_optimizer_steps_a_round_like_ppo(tmp_path, one_thread, coin):
    run = tmp_path / "mb"  # 2 rounds of 16 completions, 2 minibatches x 2 passes: 4 optimizer steps a round
    extra = ("grpo.rollouts=32", "grpo.minibatches=2", "grpo.num_iterations=2", "grpo.eval_every=1")
    assert grpo_run(run, *extra) == 0
    rows = read_jsonl(run / schema.METRICS)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["round"] for r in rows] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [r["rollouts"] for r in rows] == [16] * 4 + [32] * 4  # one generation a round, not one a step
    assert [r for r in rows if "eval/val_accuracy" in r] == [rows[3], rows[7]]  # val after each whole round
    train = [r for r in read_jsonl(run / schema.EPISODES) if r["phase"] == "train"]
    assert [sum(r["update"] == u for r in train) for u in (0, 1)] == [16, 16]


def test_constrained_completions_are_one_allowed_letter_token(tmp_path, one_thread, coin, monkeypatch):
    """grpo.constrained samples only the tokens CRL's env allows (two ordinary ids here), one token each."""
    from crl.envs.tasks.planted import PlantedTask

    monkeypatch.setattr(PlantedTask, "allowed_token_ids", lambda self, tok, ex: [300, 301])
    run = tmp_path / "letters"
    assert grpo_run(run, "grpo.rollouts=32", "grpo.constrained=true", "grpo.free_eval=false") == 0
    allowed = {load_model(TINY).tokenizer.decode([i]) for i in (300, 301)}
    train = [r for r in read_jsonl(run / schema.EPISODES) if r["phase"] == "train"]
    assert len(train) == 32 and {r["completion"] for r in train} <= allowed


def test_constrained_on_a_free_task_is_one_line(tmp_path, one_thread, capsys):
    assert grpo_run(tmp_path / "free", "grpo.rollouts=16", "grpo.constrained=true") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("crl: error: grpo.constrained=true needs a constrained task") and "task.mode=" in err


def test_a_run_that_never_learns_says_so(tmp_path, one_thread, capsys):
    run = tmp_path / "flat"  # the planted task's own reward: a random model never earns it, so every group is flat
    assert grpo_run(run, "grpo.rollouts=16") == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["learning"]["started"] is False and "frac_reward_zero_std=1" in s["learning"]["why"]
    assert all(r["frac_reward_zero_std"] == 1.0 for r in read_jsonl(run / schema.METRICS))
    err = capsys.readouterr().err
    assert f"crl: warning: GRPO never learned in {run}: every group of completions got identical rewards" in err
    # Selection kept round 0, the base model: its weights are the base's.
    base, tuned = load_model(TINY), load_model(dataclasses.replace(TINY, weights=str(run)))
    assert all(torch.equal(a, b) for a, b in zip(base.model.parameters(), tuned.model.parameters(), strict=True))


def test_resume_continues_from_the_last_complete_checkpoint(tmp_path, lora_run, coin, monkeypatch, capsys):
    run = tmp_path / "killed"
    real = run_grpo.GRPORun.on_checkpoint

    def crash_after_step_2(self, step):
        real(self, step)
        if step == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(run_grpo.GRPORun, "on_checkpoint", crash_after_step_2)
    assert grpo_run(run, "grpo.select=last") == 1  # Hydra prints the traceback and exits 1
    assert "RuntimeError: simulated crash" in capsys.readouterr().err
    assert (run / schema.FAILED).exists() and not (run / schema.SUMMARY).exists()
    assert json.loads((run / schema.FAILED).read_text())["resume"] == f"crl grpo resume={run}"
    assert len(read_jsonl(run / schema.METRICS)) == 2
    monkeypatch.setattr(run_grpo.GRPORun, "on_checkpoint", real)

    assert crl("grpo", f"resume={run}") == 0
    assert f"resuming {run} from step 2/3" in capsys.readouterr().out
    assert not (run / schema.FAILED).exists()
    # Every log as the uninterrupted run wrote it: no step or completion lost or repeated.
    for log in schema.LOGS:
        assert _untimed(read_jsonl(run / log)) == _untimed(read_jsonl(lora_run / log)), log
    for name in ("model/adapter_model.safetensors",):
        assert (run / name).read_bytes() == (lora_run / name).read_bytes()


def test_what_resume_refuses(tmp_path, lora_run, monkeypatch, capsys):
    assert crl("grpo", f"resume={lora_run}") == 2
    assert f"resume={lora_run}: the run finished (it has summary.json); start a new run" in capsys.readouterr().err
    assert crl("grpo", f"resume={lora_run}", "grpo.learning_rate=1") == 2
    assert "continues a run with its own config, so grpo.learning_rate=1 cannot apply" in capsys.readouterr().err
    assert crl("grpo", f"resume={tmp_path / 'nope'}") == 2
    assert "is not a CRL run directory (it does not exist)" in capsys.readouterr().err
    assert crl("grpo", *["model=tiny"], f"hydra.run.dir={lora_run}") == 2
    assert "is not empty; a new run needs a new directory" in capsys.readouterr().err


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_again(tmp_path, coin, monkeypatch, capsys):
    run = tmp_path / "early"

    def crash(self, step):  # TRL saved checkpoint-1, CRL's state never made it complete
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(run_grpo.GRPORun, "on_checkpoint", crash)
    assert grpo_run(run, "grpo.rollouts=16") == 1
    assert (run / schema.FAILED).exists() and (run / "checkpoints" / "checkpoint-1").is_dir()
    monkeypatch.undo()
    monkeypatch.setattr("crl.envs.tasks.planted.PlantedTask.reward", coin_reward)
    assert crl("grpo", f"resume={run}") == 0
    assert "stopped before its first checkpoint: starting it again from the beginning" in capsys.readouterr().out
    assert not (run / schema.FAILED).exists() and (run / schema.SUMMARY).exists()
    assert len([r for r in read_jsonl(run / schema.EPISODES) if r["phase"] == "train"]) == 16


def test_a_val_split_too_small_to_select_on_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_grpo, "build", lambda *a, **k: pytest.fail("the model loaded before the check"))
    assert grpo_run(tmp_path / "run", "task.n_val=5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "crl: error: the val split has 5 prompts, fewer than 20: too few to select on; enlarge it (task.n_val) or "
        "set grpo.select=last"
    )
    assert not (tmp_path / "run").exists()  # nothing useful was written: no run directory is left


def test_a_sweep_is_ranked_by_val(lora_run, tmp_path):
    import shutil

    other = tmp_path / "sweep" / "1-grpo-planted-s0"
    shutil.copytree(lora_run, other.parent / "0-grpo-planted-s0")
    other.mkdir(parents=True)
    summary = json.loads((lora_run / "summary.json").read_text())
    summary["selection"]["val_selected"] = 2.0  # better than any real one
    (other / "summary.json").write_text(json.dumps(summary))
    ranked = run_grpo.by_val(run_grpo.sweep_summaries(tmp_path / "sweep"))
    assert [Path(r["run"]).name for r in ranked] == ["1-grpo-planted-s0", "0-grpo-planted-s0"]


def test_doctests():
    import doctest

    assert doctest.testmod(run_grpo).failed == 0


def test_the_printed_summary_of_a_constrained_task(lora_run, capsys):
    from crl.commands.grpo import print_summary

    summary = json.loads((lora_run / "summary.json").read_text())
    summary["free"] = {
        "max_new_tokens": 8,
        "before": {"accuracy": 0.4, "well_formed": 1.0, "n": 16},
        "after": {"accuracy": 0.5, "well_formed": 0.875, "n": 16},
    }
    print_summary(summary, lora_run)
    out = capsys.readouterr().out
    assert "[crl] free generation (8 tokens, as GRPO samples)   accuracy before 0.400  after 0.500" in out
    assert "well-formed before 1.000  after 0.875" in out
    assert f"load them with model.weights={lora_run}" in out and "completions/s" in out
