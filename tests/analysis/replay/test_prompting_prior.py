"""The prompting and letter-prior baselines: known answers on constructed logits, the tiny models and the planted
world."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from crl.analysis.replay.baselines import BaselineConfig, run_baselines
from crl.analysis.replay.letter_prior import fit_letter_prior, letter_logits, predict
from crl.analysis.replay.prompting import PromptCandidate, apply_prefix, candidates, select_prompt
from crl.analysis.replay.runner import rollout
from crl.errors import CRLError
from tests.analysis.replay.planted import check_val_outcomes


# -- the letter prior on constructed logits ---------------------------------------------------------------------------
def _sampled(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits and gold letters drawn from their softmax."""
    rng = np.random.default_rng(seed)
    clean = rng.normal(0, 1.5, (n, k))
    p = np.exp(clean - clean.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    gold = np.array([rng.choice(k, p=row) for row in p])
    return clean, gold


def test_the_fit_recovers_a_planted_plus_two_on_a():
    clean, gold = _sampled(20_000, 2)
    shifted = clean + np.array([2.0, 0.0])  # the model says "A" 2 logits too readily
    bias = fit_letter_prior(shifted, gold)
    assert bias[0] == 0.0 and bias[1] == pytest.approx(2.0, abs=0.08)  # A fixed at 0: B gets the 2 back
    assert np.mean(predict(shifted, bias) == gold) > np.mean(predict(shifted, np.zeros(2)) == gold) + 0.05


def test_the_fit_with_three_letters_and_prompts_that_have_two():
    clean, gold = _sampled(30_000, 3, seed=1)
    shifted = clean + np.array([2.0, 0.0, -1.0])
    two = np.arange(len(gold)) % 3 == 0  # every third prompt has options A and B only
    shifted[two, 2] = -np.inf
    clean2 = clean.copy()
    clean2[two, 2] = -np.inf
    p = np.exp(clean2[two] - clean2[two].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rng = np.random.default_rng(5)
    gold[two] = [rng.choice(3, p=row) for row in p]  # gold drawn among the options those prompts have
    bias = fit_letter_prior(shifted, gold)
    assert bias == pytest.approx([0.0, 2.0, 3.0], abs=0.1)
    assert (predict(shifted[two], bias) < 2).all()  # a missing option is never answered


def test_the_fit_moves_exactly_with_a_shift_of_the_logits():
    clean, gold = _sampled(500, 2, seed=2)
    base = fit_letter_prior(clean, gold)
    assert fit_letter_prior(clean + np.array([1.5, -0.5]), gold) == pytest.approx(base + [0.0, 2.0], abs=1e-6)
    with pytest.raises(CRLError, match="logits"):
        fit_letter_prior(clean, gold[:3])


# -- the letter prior on a tiny model ---------------------------------------------------------------------------------
def _mc_world(n: int = 48):
    from crl.backends.hooks import HookPoint
    from crl.backends.model import tiny_model
    from crl.backends.sae import sae_from_decoder
    from crl.config import MaskingConfig, PolicyConfig, PPOConfig, SteeringConfig, TaskConfig
    from crl.envs.tasks.registry import make_task
    from crl.run.components import Components

    lm = tiny_model("llama", n_layers=2, d_model=64, seed=0)
    task = make_task(TaskConfig(name="compare", n_train=n, n_val=16, n_test=16, mode="constrained"))
    sae = sae_from_decoder(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)), HookPoint(1, "post"), "t")
    splits = {s: task.load(s) for s in ("train", "val", "test")}
    steering = SteeringConfig(layer=1, coef=4.0, coef_levels=[1.0])
    return Components(
        lm, sae, task, splits, steering, MaskingConfig(mode="none"), PolicyConfig(), PPOConfig(num_envs=8)
    )


@pytest.fixture(scope="module")
def mc():
    return _mc_world()


def test_zero_bias_answers_what_the_unsteered_environment_answers(mc):
    test = mc.splits["test"]
    logits, gold, allowed = letter_logits(mc, test)
    env = rollout(mc, test, None)
    letters = [mc.lm.tokenizer.decode([a[int(p)]]) for a, p in zip(allowed, predict(logits, np.zeros(2)), strict=True)]
    assert letters == [e.completion for e in env]
    assert [e.example.answer for e in env] == ["AB"[g] for g in gold]


def test_a_bias_planted_in_the_model_comes_back_in_the_fit(mc):
    train = mc.splits["train"]
    logits, gold, allowed = letter_logits(mc, train)
    base = fit_letter_prior(logits, gold)
    a_id = allowed[0][0]
    shift = torch.zeros(mc.lm.model.lm_head.weight.shape[0])
    shift[a_id] = 2.0  # +2 on "A" at every position
    handle = mc.lm.model.lm_head.register_forward_hook(lambda m, i, o: o + shift.to(o.dtype))
    try:
        biased, _, _ = letter_logits(mc, train)
        fitted = fit_letter_prior(biased, gold)
    finally:
        handle.remove()
    gap = lambda x: x[:, 0] - x[:, 1]
    assert gap(biased) - gap(logits) == pytest.approx(2.0, abs=1e-4)  # "A" over "B" by 2 more
    assert fitted - base == pytest.approx([0.0, 2.0], abs=1e-3)  # the fit takes the planted 2 back off "A"


def test_the_letter_prior_baseline_runs_and_records_its_budget(mc):
    res = run_baselines(mc, BaselineConfig(seeds=[0, 1], methods=["none", "letter_prior"], prior_prompts=40))
    bias = np.array(res.chosen["letter_prior_bias"])
    logits, gold, _ = letter_logits(mc, mc.splits["test"])
    eps = res.episodes["baseline:letter_prior:test"]
    assert [e.correct for e in eps] == (predict(logits, bias) == gold).tolist()
    assert all(e.well_formed and not e.steps for e in eps) and set(res.seeds["baseline:letter_prior:test"]) == {0}
    rows = res.selection[res.selection["method"] == "letter_prior"]
    assert rows["stage"].tolist() == ["fit@train", "score@val"] and rows["rollouts"].tolist() == [40, 16]
    assert res.budgets == {"none": 0, "letter_prior": 56} and res.chosen["letter_prior_rollouts"] == 56
    check_val_outcomes(res.selection, mc.splits["val"], 16)  # per prompt, as accuracy_of counts them
    v_logits, v_gold, _ = letter_logits(mc, mc.splits["val"])
    val_row = rows[rows["stage"] == "score@val"].iloc[0]
    assert [o[1] for o in val_row["outcomes"]] == (predict(v_logits, bias) == v_gold).astype(int).tolist()
    eps_frame, _ = res.frames()
    assert set(eps_frame["phase"]) == {"baseline:none:test", "baseline:letter_prior:test"}


def test_the_letter_prior_is_skipped_with_a_note_off_multiple_choice(comps):
    res = run_baselines(comps, BaselineConfig(seeds=[0], methods=["none", "letter_prior"]))
    assert set(res.episodes) == {"baseline:none:test"}
    assert any(n.startswith("letter_prior skipped: task 'planted'") for n in res.notes)
    assert "letter_prior" not in res.budgets


# -- prompting ------------------------------------------------------------------------------------------------------
def test_selection_picks_the_best_on_val_ties_to_the_shorter_and_never_scores_shots():
    from crl.envs.tasks.base import Example

    ex = {s: [Example(f"{s}{i}", f"q{i}", "A") for i in range(6)] for s in ("train", "val")}
    cands = [
        PromptCandidate("as_is"),
        PromptCandidate("long", "a long instruction\n\n"),
        PromptCandidate("short", "short\n\n", shot_ids=("train0",)),
        PromptCandidate("train_best", "x\n\n"),
    ]
    val = {"as_is": 0.5, "long": 0.7, "short": 0.7, "train_best": 0.6}
    train = {"as_is": 0.5, "long": 0.9, "short": 0.1, "train_best": 1.0}
    seen: dict[str, list[str]] = {}

    def score(c, split, examples):
        seen[split] = [e.id for e in examples]
        outs = [[e.id, int(i % 2 == 0), 1] for i, e in enumerate(examples)]
        return ({"train": train, "val": val}[split][c.name], 1.0, len(examples), outs)

    chosen, rows = select_prompt(cands, ex, score, max_prompts=4, max_pick_prompts=3)
    assert chosen.name == "short"  # best on val (0.7, tied with "long"), shorter prefix; train scores do not pick
    assert seen == {"train": ["train1", "train2", "train3", "train4"], "val": ["val0", "val1", "val2"]}
    assert [(r["candidate"], r["stage"]) for r in rows[:2]] == [("as_is", "prompt@train"), ("as_is", "prompt@val")]
    assert sum(r["rollouts"] for r in rows) == 4 * (4 + 3)
    # The scorer's outcomes go on the val rows only, as it gave them.
    assert all("outcomes" not in r for r in rows if r["stage"] == "prompt@train")
    assert all(r["outcomes"] == [["val0", 1, 1], ["val1", 0, 1], ["val2", 1, 1]] for r in rows[1::2])
    select_prompt(cands, ex, score, max_prompts=4)
    assert seen["val"] == [f"val{i}" for i in range(6)]  # no val cap: the whole val split
    val["as_is"] = 0.7
    assert select_prompt(cands, ex, score, max_prompts=4)[0].name == "as_is"  # a tie with no prefix: keep the prompt


def test_candidates_and_a_prefix_inside_the_chat_template(mc):
    train = mc.splits["train"]
    cands = {c.name: c for c in candidates("letter", train)}
    assert list(cands) == ["as_is", "think", "letter", "any_letter", "shots2", "shots4"]
    shots = [e for e in train if e.id in cands["shots4"].shot_ids]
    assert sorted(e.answer for e in shots) == ["A", "A", "B", "B"]  # balanced gold letters
    assert all(f"{e.prompt}\nAnswer: {e.answer}\n\n" in cands["shots4"].prefix for e in shots)
    assert [c.name for c in candidates("number", train)] == ["as_is", "think", "shots2", "shots4"]
    assert [c.name for c in candidates("refusal", train)] == ["as_is", "think"]
    e = mc.splits["test"][0]
    tok, task = mc.lm.tokenizer, mc.task
    plain = task.format_prompt(e, tok)
    pre = task.format_prompt(apply_prefix([e], "PREFIX\n\n")[0], tok)
    assert pre != plain and pre.replace("PREFIX\n\n", "", 1) == plain
    assert pre.index("PREFIX") == plain.index(e.prompt)  # where the user message starts, after the template's head
    assert task.allowed_token_ids(tok, apply_prefix([e], "PREFIX\n\n")[0]) == task.allowed_token_ids(tok, e)
    assert apply_prefix([e], "") == [e]  # unused: nothing changes


def test_the_prompting_baseline_on_the_planted_world(comps):
    res = run_baselines(comps, BaselineConfig(seeds=[0], methods=["none", "prompting"], max_select_prompts=3))
    rows = res.selection
    assert set(rows["candidate"]) == {"as_is", "think", "shots2", "shots4"}  # planted answers are tokens, not letters
    assert rows["rollouts"].tolist() == [3, 8] * 4 and res.budgets["prompting"] == 44  # 3 train, the whole val (8)
    check_val_outcomes(rows, comps.splits["val"], 8)
    val = rows[rows["stage"] == "prompt@val"]
    best = val.sort_values(["accuracy", "prefix_chars"], ascending=[False, True]).iloc[0]
    assert res.chosen["prompting_candidate"] == best["candidate"]
    eps = res.episodes["baseline:prompting:test"]
    assert [e.example.id for e in eps] == [e.example.id for e in res.episodes["baseline:none:test"]]
    if best["candidate"] == "as_is":  # no prefix: exactly the unsteered episodes
        assert [e.completion for e in eps] == [e.completion for e in res.episodes["baseline:none:test"]]


def test_a_candidate_that_does_not_fit_the_context_is_left_out(mc):
    short = dataclasses.replace(mc, lm=_Short(mc.lm))
    res = run_baselines(short, BaselineConfig(seeds=[0], methods=["prompting"], max_select_prompts=2))
    assert "shots4" not in set(res.selection["candidate"]) and "as_is" in set(res.selection["candidate"])


class _Short:
    """The tiny model with a context that holds a plain compare prompt but not four solved examples before it."""

    def __init__(self, lm):
        self._lm = lm

    def __getattr__(self, name):
        return 150 if name == "max_context" else getattr(self._lm, name)
