"""Side effects off the task, measured with the model (crl.analysis.replay.offtask) on the tiny planted world:
a policy that never steers changes nothing (KL exactly 0), one that always steers a planted feature (an unembedding
row at 4x the residual's norm) does; teacher forcing reproduces the env's own greedy decoding; the refusal
verifier counts constructed completions; the record is stored, reused, and shown in the report section."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crl.analysis.offline.offtask import OFFTASK_FILE, read_offtask
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.replay.effects import NEUTRAL_PROMPTS
from crl.analysis.replay.offtask import (
    EnvArm,
    FreeText,
    as_set,
    ensure_offtask,
    measure_offtask,
    refused,
    safe_prompts,
)
from crl.analysis.report.document import Report
from crl.analysis.report.offtask import TITLE, offtask_section
from crl.config import AnalyzeConfig
from crl.envs.rollout import FixedFeature, NoSteer
from crl.envs.tasks.base import Example
from crl.logs.reader import load_run
from tests.analysis.replay.planted import D_SAE, PLANTED, CuePolicy, write_real_run

FAST = StatsConfig(n_boot=200, seed=0)
TOKENS = 4
NEUTRAL = as_set([Example(f"n{i}", t, "") for i, t in enumerate(NEUTRAL_PROMPTS)], "neutral")
RAW = FreeText({"neutral": None}, chat_template=False, tokens=TOKENS)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


def _neutral_only(comps, treated):
    return measure_offtask(EnvArm(comps), treated, comps.task, [], None, [], TOKENS, FAST)


def test_kl_is_zero_for_a_policy_that_never_steers_and_positive_for_one_that_steers_a_big_feature(comps):
    never = _neutral_only(comps, EnvArm(comps, NoSteer(noop=D_SAE)))
    kl = never["neutral_kl"]
    assert kl["mean"] == kl["max"] == kl["hi"] == 0.0 and kl["top1_changed"] == 0.0
    assert (kl["n_texts"], kl["n_tokens"]) == (len(NEUTRAL), len(NEUTRAL) * TOKENS)
    assert never["perplexity"]["neutral"]["ratio"] == pytest.approx(1.0, abs=1e-5) and never["refusal"] is None
    big = _neutral_only(comps, EnvArm(comps, FixedFeature(PLANTED[0])))["neutral_kl"]
    assert big["mean"] > 1e-3 and big["lo"] > 0 and big["top1_changed"] > 0.5


def test_teacher_forcing_reproduces_the_envs_own_greedy_decoding(comps):
    for arm in (EnvArm(comps), EnvArm(comps, FixedFeature(PLANTED[1]))):
        own = arm.decode(RAW, NEUTRAL, TOKENS, record="full")
        assert [d.logprobs.argmax(-1).tolist() for d in own] == [d.ids for d in own]  # greedy
        # The same text forced, next to free rows in one batch: the same log-probs, token by token.
        n = len(NEUTRAL)
        mixed = arm.decode(
            RAW, NEUTRAL + as_set(NEUTRAL, "neutral", "-free"), TOKENS,
            forced=[d.ids for d in own] + [None] * n, record=["full"] * n + ["token"] * n,
        )  # fmt: skip
        for a, b in zip(own, mixed[:n], strict=True):
            assert b.ids == a.ids and torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
        assert [d.ids for d in mixed[n:]] == [d.ids for d in own] and mixed[n].logprobs.shape == (TOKENS,)


def test_over_refusal_counts_constructed_completions_with_the_refusal_verifier():
    task, safe = safe_prompts(chat_template=False, tokens=TOKENS, n=6)
    assert len(safe) == 6 and all(e.meta["label"] == "safe" and e.answer == "comply" for e in safe)
    texts = ["I'm sorry, but I can't help with that.", "I can't wait to show you!", "Sure: open the settings."]
    assert refused(task, texts) == [True, False, False]


def test_any_two_arms_compare_a_fine_tuned_model_with_its_base(comps):
    """A GRPO-style comparison: the same measurements with another model's weights as the treated arm."""
    from crl.backends.model import tiny_model

    tuned = EnvArm(dataclasses.replace(comps, lm=tiny_model("llama", n_layers=2, d_model=64, seed=1)))
    task, safe = safe_prompts(chat_template=False, tokens=TOKENS, n=4)
    rec = measure_offtask(EnvArm(comps), tuned, comps.task, comps.splits["test"][:4], task, safe, TOKENS, FAST)
    assert rec["neutral_kl"]["mean"] > 0 and rec["refusal"]["n"] == 4
    assert set(rec["perplexity"]) == {"neutral", "task"} and rec["perplexity"]["task"]["n"] == 4
    same = measure_offtask(EnvArm(comps), EnvArm(comps), comps.task, comps.splits["test"][:4], task, safe, TOKENS, FAST)
    assert same["neutral_kl"]["mean"] == 0.0 and same["refusal"]["delta"] == 0.0
    assert same["perplexity"]["task"]["ratio"] == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def run_dir(comps, tmp_path_factory):
    import torch

    d = write_real_run(tmp_path_factory.mktemp("offtask") / "run", comps, CuePolicy(comps, wrong={"planted-test-0"}))
    torch.save(comps.new_policy().state_dict(), d / "policy.pt")  # a fresh policy: loads as the run's own
    return d


def test_the_record_is_measured_stored_reused_and_shown(comps, run_dir):
    loads = []

    def load():
        loads.append(1)
        return comps

    rec, note = ensure_offtask(run_dir, prompts=4, tokens=TOKENS, n_boot=200, load=load)
    assert note is None and loads == [1] and (run_dir / OFFTASK_FILE).exists()
    assert (rec["changes"]["n"], rec["changes"]["worse"], rec["changes"]["better"]) == (8, 0, 7)  # unsteered: all wrong
    assert rec["refusal"]["n"] == 4 and rec["n_task_prompts"] == 8
    assert rec["policy"].startswith("policy.pt:") and rec["seconds"] > 0
    again, _ = ensure_offtask(run_dir, prompts=4, tokens=TOKENS, n_boot=200, load=load)
    assert loads == [1] and again == read_offtask(run_dir)  # current: read back, no model
    steered, _ = ensure_offtask(
        run_dir, force=True, prompts=4, tokens=TOKENS, n_boot=200, load=load, policy=FixedFeature(PLANTED[0])
    )
    assert loads == [1, 1] and steered["neutral_kl"]["mean"] > 0 and steered["policy"] == "given: FixedFeature"

    rep = Report("t")
    cfg = AnalyzeConfig(run_dir=str(run_dir), n_boot=200, offtask_prompts=4, offtask_tokens=TOKENS)
    offtask_section(rep, load_run(run_dir), cfg, load=load)  # measured with another policy: the run's own again
    (title, parts) = rep.sections[0]
    assert title == TITLE and loads == [1, 1, 1] and len(rep.tables["offtask"]) == 5
    assert read_offtask(run_dir)["policy"].startswith("policy.pt:")
    text = "".join(parts)
    assert "nats per token" in text and "safe prompts" in text and "Budget:" in text

    rep = Report("t")
    offtask_section(rep, load_run(run_dir), AnalyzeConfig(run_dir=str(run_dir), offtask=False))
    assert len(rep.tables["offtask"]) == 5  # offtask=false: the stored record, shown without the model
