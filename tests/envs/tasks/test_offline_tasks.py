"""The offline tasks (arith, gsm8k_offline, bbq_offline, refusal_offline) with the real default tokenizer."""

from __future__ import annotations

import pytest

from crl.config import TaskConfig
from crl.envs.tasks import procedural
from crl.envs.tasks.base import SPLITS
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError
from tests.envs.tasks.helpers import OFFLINE, full, gold_completion, wrong_completion


# -- offline tasks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,sizes",
    [
        ("gsm8k_offline", (45, 30, 25)),
        ("bbq_offline", (180, 45, 75)),
        ("refusal_offline", (106, 28, 46)),
    ],
)
def test_offline_split_sizes(name, sizes):
    task = make_task(full(name))
    assert tuple(len(task.load(s)) for s in SPLITS) == sizes


@pytest.mark.parametrize("name", OFFLINE)
def test_splits_disjoint_and_deterministic(name):
    a, b = make_task(full(name)), make_task(full(name))
    ids = {s: [e.id for e in a.load(s)] for s in SPLITS}
    assert ids == {s: [e.id for e in b.load(s)] for s in SPLITS}
    prompts = {s: {e.prompt for e in a.load(s)} for s in SPLITS}
    for i, s in enumerate(SPLITS):
        assert len(set(ids[s])) == len(ids[s])
        for t in SPLITS[i + 1 :]:
            assert not set(ids[s]) & set(ids[t])
            assert not prompts[s] & prompts[t]
    other = make_task(full(name, seed=1))
    assert [e.id for e in other.load("test")] != ids["test"]


def test_caps_are_deterministic_subsets():
    whole = {e.id for e in make_task(full("bbq_offline")).load("train")}
    capped = make_task(TaskConfig(name="bbq_offline", n_train=10)).load("train")
    again = make_task(TaskConfig(name="bbq_offline", n_train=10)).load("train")
    assert len(capped) == 10 and {e.id for e in capped} <= whole
    assert [e.id for e in capped] == [e.id for e in again]
    with pytest.raises(CRLError, match="n_train=-2"):
        make_task(TaskConfig(name="bbq_offline", n_train=-2)).load("train")


def test_arith_splits_disjoint_across_seeds():
    tasks = [make_task(TaskConfig(name="arith", seed=seed, n_train=200, n_test=200)) for seed in range(3)]
    train = {e.prompt for t in tasks for e in t.load("train")}
    test = {e.prompt for t in tasks for e in t.load("test")}
    assert len(train) > 400 and len(test) > 400
    assert not train & test
    assert all(procedural.bucket(p) == "test" for p in test)


def test_arith_answers_are_correct_integers():
    for ex in make_task(TaskConfig(name="arith", n_test=200)).load("test"):
        assert ex.answer.lstrip("-").isdigit()
        assert ex.prompt.endswith("Answer with just the number.")
        if ex.meta["kind"] in ("add", "sub", "mul", "two_step"):
            expr = ex.prompt.split("What is ", 1)[1].split("?", 1)[0]
            assert eval(expr) == int(ex.answer)  # noqa: S307 - our own generated digits and operators


def test_arith_needs_finite_counts():
    with pytest.raises(CRLError, match="finite task.n_train"):
        make_task(TaskConfig(name="arith", n_train=-1)).load("train")


def test_arith_subset_picks_a_kind():
    exs = make_task(TaskConfig(name="arith", subset="word", n_test=20)).load("test")
    assert {e.meta["kind"] for e in exs} == {"word"}


@pytest.mark.parametrize("name", OFFLINE)
def test_gold_scores_one_and_wrong_scores_zero(name):
    task = make_task(full(name))
    exs = task.load("test")
    cols = task.columns(exs)
    prompts = [e.prompt for e in exs]
    gold = [gold_completion(task, e) for e in exs]
    assert task.reward(prompts, gold, **cols) == [1.0] * len(exs)
    assert task.reward(prompts, [wrong_completion(task, e) for e in exs], **cols) == [0.0] * len(exs)
    assert all(task.well_formed(c) for c in gold)
    assert [task.extract(c) for c in gold] == [e.answer for e in exs]


@pytest.mark.parametrize("name", OFFLINE)
def test_prompts_use_the_chat_template(name, tokenizer):
    task = make_task(full(name))
    ex = task.load("val")[0]
    text = task.format_prompt(ex, tokenizer)
    assert text.endswith(f"<|im_start|>user\n{ex.prompt}<|im_end|>\n<|im_start|>assistant\n")
    raw = make_task(full(name, chat_template=False))
    assert raw.format_prompt(ex, tokenizer) == ex.prompt


def test_offline_contents():
    gsm = make_task(full("gsm8k_offline")).load("train")
    assert not any(e.prompt.startswith(("You're", "I know")) for e in gsm)  # text_clean, not the flattery
    refusal = [e for s in SPLITS for e in make_task(full("refusal_offline")).load(s)]
    assert sum(e.meta["should_refuse"] for e in refusal) == 50
    assert not any("\n\n" in e.prompt for e in refusal)  # the canned answer paragraph is cut
    assert any("pipe bomb" in e.prompt and e.answer == "refuse" for e in refusal)


def test_bbq_offline_condition_is_inferred():
    task = make_task(full("bbq_offline"))
    exs = [e for s in SPLITS for e in task.load(s)]
    assert {e.meta["condition"] for e in exs} == {"disambiguated"}
    assert all(e.meta["unknown"] not in (None, e.answer) for e in exs)
    assert len(make_task(full("bbq_offline", subset="disambiguated")).load("test")) == 75
    with pytest.raises(CRLError, match="subset='ambiguous' matches no example.*disambiguated contexts only"):
        make_task(full("bbq_offline", subset="ambiguous")).load("test")


def test_constrained_letters_are_single_tokens(tokenizer):
    task = make_task(full("bbq_offline", mode="constrained"))
    assert task.max_new_tokens() == task.cfg.max_new_tokens == 1 and task.stop_strings() == []
    for ex in task.load("test")[:5]:
        ids = task.allowed_token_ids(tokenizer, ex)
        assert [tokenizer.decode([i]) for i in ids] == list(ex.meta["options"])
        prompt_ids = tokenizer(task.format_prompt(ex, tokenizer), add_special_tokens=False)["input_ids"]
        for i, letter in zip(ids, ex.meta["options"], strict=True):
            text = task.format_prompt(ex, tokenizer) + letter
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == [*prompt_ids, i]
    free = make_task(full("bbq_offline"))
    assert free.allowed_token_ids(tokenizer, ex) is None
    assert free.max_new_tokens() == free.cfg.max_new_tokens
