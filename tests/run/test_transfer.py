"""`crl transfer` end to end on a tiny model with a planted answer: a policy that always steers the answer to one letter
is a GAIN where that letter is always right and a HARM where it is always wrong; with an abstention rule the report
carries both policies, and abstention switches steering off on a variant far from the training sample."""

from __future__ import annotations

import json
import math
import sys

import pandas as pd
import pytest
import torch

from crl import cli
from crl.analysis.offline.abstention import M_GRID
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.transfer import read_transfer, transfer_table
from crl.backends.hooks import HookPoint
from crl.backends.model import tiny_model
from crl.backends.sae import sae_from_decoder
from crl.config.compose import compose_config
from crl.envs.tasks.compare import CompareTask
from crl.envs.tasks.registry import TASKS, register_task
from crl.errors import CRLError
from crl.logs import schema
from crl.run.components import POLICY_FILE, build
from crl.run.train import config_yaml
from crl.run.transfer import transfer_outcomes

pytestmark = pytest.mark.usefixtures("one_thread")

STEER = 3  # the planted feature: its decoder row is the direction that makes the tiny model answer the other letter


@register_task("compare_sorted_test")
class SortedCompare(CompareTask):
    """compare with the two numbers always in increasing order: "larger" is always B, "smaller" always A."""

    def variant_rows(self, variants, split, n, at_most=False):
        rows = super().variant_rows(variants, split, n, at_most)
        for r in rows:
            r["options"] = sorted(r["options"], key=int)
            r["answer"] = "B" if r["kind"] == "larger" else "A"
        return rows


def _letter_ids(tok) -> dict[str, int]:
    return {c: tok(c, add_special_tokens=False)["input_ids"][0] for c in "AB"}


def planted(tmp_path, abstain: str = "off"):
    """(config, components, the letter steering answers) of the sorted compare family on the tiny model: an SAE in
    tmp_path/sae with a planted "answer the other letter" feature, STEER."""
    lm = tiny_model()
    ids = _letter_ids(lm.tokenizer)
    cfg = compose_config(
        "train",
        [
            "model=tiny",
            "sae=disk",
            f"sae.path={tmp_path / 'sae'}",
            "steering.layer=1",
            "steering.coef=4.0",
            "task.name=compare_sorted_test",
            "task.family.enabled=true",
            "task.family.wordings=[plain]",
            "task.family.directions=[larger]",
            "task.n_train=48",
            "task.n_val=24",
            "task.n_test=24",
            "masking=none",
            "policy.hidden=16",
            "policy.obs_stats_prompts=48",
            f"policy.abstain={abstain}",
            "ppo.num_envs=24",
        ],
    )
    # What the unsteered tiny model answers: the planted feature pushes towards the other letter.
    emb = lm.model.get_input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(0)
    decoder = torch.randn(8, lm.d_model, generator=g)
    decoder[STEER] = emb[ids["A"]] - emb[ids["B"]]  # provisional; flipped below if the model already answers A
    sae_from_decoder(decoder, HookPoint(1, "post"), "test").sae.save_model(str(tmp_path / "sae"))
    comps = build(cfg, splits=("train", "val", "test"))
    from crl.run.evaluate import evaluate

    none = evaluate(comps, "test", None, 0)
    answers = {ep.completion.strip() for ep in none}
    assert len(answers) == 1, answers  # the tiny model answers one letter whatever the numbers
    if answers == {"A"}:
        decoder[STEER] = -decoder[STEER]
        sae_from_decoder(decoder, HookPoint(1, "post"), "test").sae.save_model(str(tmp_path / "sae"))
        comps = build(cfg, splits=("train", "val", "test"))
    wrong = "A" if answers == {"B"} else "B"  # the letter the policy steers to, never the unsteered answer
    return cfg, comps, wrong


def always(net, feature: int = STEER, level: int = 0):
    """`net` made to pick `feature` at level index `level` at every decision, whatever the residual."""
    with torch.no_grad():
        net.feature_bias[feature] = 50.0
        net.level_head[-1].bias.copy_(torch.tensor([5.0, -5.0] if level == 0 else [-5.0, 5.0]))
        net.noop_head[-1].bias.fill_(-50.0)
    return net


def write_run(run, cfg, comps, net, seed: int = 0):
    """A run directory of `cfg` with `net` as its trained policy."""
    run.mkdir(parents=True)
    (run / schema.CONFIG_YAML).write_bytes(config_yaml(cfg))
    comps.run_info(run.name, seed).write(run)
    torch.save(net.state_dict(), run / POLICY_FILE)
    return run


def _run_dir(tmp_path, abstain: str = "off"):
    """A run dir of `planted`, with a policy that always steers with STEER (amplify)."""
    cfg, comps, wrong = planted(tmp_path, abstain)
    net = always(comps.new_policy())
    if abstain != "off":
        sample = comps.observation_sample("train", 48)
        net.set_obs_stats(sample)
        net.fit_abstention(sample, comps.observation_sample("val", 24))
    return write_run(tmp_path / "run", cfg, comps, net), wrong


def test_a_planted_harm_is_harm_and_a_planted_gain_is_gain(tmp_path):
    run, steered_to = _run_dir(tmp_path)
    specs = ["direction:larger", "direction:smaller"]  # gold B always / A always
    outcomes, variants, settings = transfer_outcomes(run, specs, n=24)
    frame = pd.DataFrame(outcomes)
    table = transfer_table(frame, variants, StatsConfig(n_boot=500)).set_index("variant")
    gain, harm = ("direction:larger", "direction:smaller") if steered_to == "B" else specs[::-1]
    assert table.loc[gain, "none"] == 0.0 and table.loc[gain, "crl"] == 1.0
    assert table.loc[gain, "crl_verdict"] == "GAIN" and table.loc[gain, "crl_p"] < 1e-4
    assert table.loc[harm, "none"] == 1.0 and table.loc[harm, "crl"] == 0.0
    assert table.loc[harm, "crl_verdict"] == "HARM" and table.loc[harm, "crl_hi"] < 0
    assert (table["crl_steered"] == 1.0).all() and (table["n"] == 24).all()
    assert "ood_ratio" not in frame and (frame["decisions"] == 1).all()  # no rule: no ratio; one-token answers
    assert table.loc["direction:smaller", "held_out"] == "direction" and table.loc["direction:larger", "held_out"] == ""
    assert settings["trained"] == "wording plain | direction larger | range 2digit" and settings["abstain"] == "off"


def test_the_command_prints_the_table_writes_files_and_ablates_abstention(tmp_path, monkeypatch, capsys):
    run, _ = _run_dir(tmp_path, abstain="zscore")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli.main(["transfer", f"run_dir={run}", "n=16", "n_boot=200", "variants=[trained,range:3digit]"])
    out, err = capsys.readouterr()
    assert "crl_abstain" in out and "crl_no_abstain" in out and "verdict" in out
    assert "[crl] transfer 1/2 trained: 16 test prompts" in err and "[crl] transfer 2/2 range:3digit" in err
    table = read_transfer(run)
    assert list(table["variant"]) == ["trained", "range:3digit"]
    assert {"crl_abstain", "crl_no_abstain", "crl_abstain_abstained", "crl_no_abstain_verdict"} <= set(table.columns)
    assert (table["crl_no_abstain_steered"] == 1.0).all()  # without the rule the policy always steers
    trained = table.set_index("variant").loc["trained"]
    assert trained["crl_abstain_abstained"] <= 0.2  # in distribution the rule rarely fires
    saved = json.loads((run / "analysis" / "transfer.json").read_text())
    assert saved["abstain"] == "zscore" and len(saved["variants"]) == 2 and saved["n"] == 16
    prompts = pd.read_csv(run / "analysis" / "transfer_prompts.csv")
    assert len(prompts) == 32 and prompts["prompt_id"].is_unique
    # d(x)/tau at the first decision: positive, > 1 exactly where the rule abstained; one decision each, so the
    # offline threshold ablation runs, and its m = 1 row is crl_abstain's
    assert (prompts["ood_ratio"] > 0).all() and (prompts["decisions"] == 1).all()
    assert ((prompts["ood_ratio"] > 1) == prompts["crl_abstain_abstained"]).all()
    assert "abstention threshold ablation (offline)" in out and "d/tau p10|med|p90" in out
    rows = pd.DataFrame(saved["abstention_ablation"]["rows"])
    assert len(rows) == 2 * len(M_GRID) and saved["abstention_ablation"]["note"] == ""
    at1 = rows[rows["m"] == 1.0].set_index("variant")
    assert (at1["acc"] == table.set_index("variant")["crl_abstain"]).all()
    assert table["ood_ratio_median"].notna().all()


def test_transfer_refuses_what_it_cannot_do(tmp_path, monkeypatch, capsys):
    run, _ = _run_dir(tmp_path)
    with pytest.raises(CRLError, match="variant 'wording' is not 'trained'"):
        transfer_outcomes(run, ["wording"], n=4)
    with pytest.raises(CRLError, match="not a CRL run directory"):
        transfer_outcomes(tmp_path / "nothing", None, n=4)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit):
        cli.main(["transfer"])
    assert capsys.readouterr().err.strip() == (
        "crl: error: crl transfer needs run_dir=<a run directory>, or run_dirs=[<run directories>] to pool seeds"
    )
    assert TASKS["compare_sorted_test"] is SortedCompare


def test_a_run_of_a_task_without_variants_is_refused_before_the_model_loads(tmp_path):
    from crl.run.train import train
    from tests.run.helpers import QUICK, compose_train

    run = tmp_path / "planted"
    train(compose_train([*QUICK, "ppo.total_updates=1"]), run)
    with pytest.raises(CRLError, match="task 'planted' has no variants, so crl transfer has nothing to hold out"):
        transfer_outcomes(run, None, n=4)


def test_the_abstaining_run_taken_from_the_other_two_equals_rolling_it_out(tmp_path):
    from crl.agent.ppo import PolicyAgent
    from crl.run.components import saved_config
    from crl.run.transfer import _with_rule, variant_rollouts

    run, _ = _run_dir(tmp_path, abstain="zscore")
    comps = build(saved_config(run), splits=())
    agent = comps.load_policy(run, greedy=True)
    task = comps.task
    examples = task.variant_examples(task.family_axes.parse("range:3digit", task.variants(), task.name), "test", 24)
    none = variant_rollouts(comps, examples, None, 0, None)
    free = variant_rollouts(comps, examples, PolicyAgent(agent.net, greedy=True, abstain=False), 0, None)
    taken = _with_rule(comps, examples, agent, none, free, 0, "test")
    direct = variant_rollouts(comps, examples, agent, 0, None)
    key = lambda ep: (ep.example.id, ep.completion, ep.correct, ep.features, [s["abstained"] for s in ep.steps])  # noqa: E731
    assert [key(ep) for ep in taken] == [key(ep) for ep in direct]
    abstained = [ep.steps[0]["abstained"] for ep in direct]
    assert any(abstained) and not all(abstained)  # both kinds of prompt, so both shortcuts are checked


def test_transfer_takes_another_greedy_rule_and_records_it(tmp_path, monkeypatch, capsys):
    """A policy whose steering mass (0.6) is spread over its 16 actions: argmax never steers, steer_if_likely always
    steers with the most likely of them (STEER, amplified); transfer.json says which rule ran."""
    from crl.run.components import saved_config

    run, _ = _run_dir(tmp_path)
    net = build(saved_config(run), splits=()).load_policy(run).net
    with torch.no_grad():  # logits independent of the residual: feature bias + level bias, and the no-op's
        for head in (net.actor, net.level_head, net.noop_head):
            head[-1].weight.zero_()
            head[-1].bias.zero_()
        net.feature_bias.zero_()
        net.feature_bias[STEER] = 1.0
        net.level_head[-1].bias.copy_(torch.tensor([0.0, -30.0]))  # suppressing: no mass
        steer_mass = math.e + (len(net.feature_bias) - 1)
        net.noop_head[-1].bias.fill_(math.log(steer_mass * 0.4 / 0.6))  # P(no-op) = 0.4
    torch.save(net.state_dict(), run / POLICY_FILE)
    outcomes, _, settings = transfer_outcomes(run, ["trained"], n=8)
    assert settings["greedy_rule"] == "argmax" and not any(r["crl_steered"] for r in outcomes)
    monkeypatch.chdir(tmp_path)  # Hydra's job log goes to the working directory
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli.main(["transfer", f"run_dir={run}", "n=8", "n_boot=50", "variants=[trained]", "greedy_rule=steer_if_likely"])
    capsys.readouterr()
    saved = json.loads((run / "analysis" / "transfer.json").read_text())
    assert saved["greedy_rule"] == "steer_if_likely"
    assert read_transfer(run)["crl_steered"].tolist() == [1.0]
