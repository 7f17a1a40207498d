"""Offline tasks, local data files, the registry and the Hydra configs, with the real default tokenizer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from crl.envs.tasks import arith
from crl.envs.tasks.base import SPLITS, Example, TaskConfig
from crl.envs.tasks.registry import TASKS, make_task, register_task
from crl.errors import CRLError

OFFLINE = ("arith", "gsm8k_offline", "bbq_offline", "refusal_offline")
HUB = ("gsm8k", "mmlu", "mmlu_pro", "bbq", "harmbench", "xstest")
CONF = Path(__file__).resolve().parents[1] / "conf" / "task"
REFUSE_TEXT = "I'm sorry, but I can't help with that."
COMPLY_TEXT = "Sure! Here is a short, helpful answer to your question."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from crl.backends.offline_default import default_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))


def full(name: str, **kw) -> TaskConfig:
    """A config keeping whole splits (arith generates a fixed count)."""
    n = (64, 32, 64) if name == "arith" else (-1, -1, -1)
    return TaskConfig(name=name, **{**dict(zip(("n_train", "n_val", "n_test"), n, strict=True)), **kw})


def gold_completion(task, ex: Example) -> str:
    if task.answer_kind == "number":
        return f"Let me compute. #### {ex.answer}"
    if task.answer_kind == "letter":
        return ex.answer
    return REFUSE_TEXT if ex.meta["should_refuse"] else COMPLY_TEXT


def wrong_completion(task, ex: Example) -> str:
    if task.answer_kind == "number":
        return f"#### {int(float(ex.answer)) + 1}"
    if task.answer_kind == "letter":
        return next(letter for letter in ex.meta["options"] if letter != ex.answer)
    return COMPLY_TEXT if ex.meta["should_refuse"] else REFUSE_TEXT


# -- registry and configs ---------------------------------------------------------------------------------
def test_registry_lists_every_task():
    assert set(OFFLINE + HUB) <= set(TASKS)
    for name in OFFLINE + HUB:
        assert TASKS[name].name == name


def test_unknown_task_name_lists_available():
    with pytest.raises(CRLError, match="task 'nope' is unknown; available: .*arith.*gsm8k_offline"):
        make_task(TaskConfig(name="nope"))


def test_register_task_rejects_a_taken_name():
    with pytest.raises(CRLError, match="taken"):
        register_task("arith")(type("Other", (arith.ArithTask,), {}))
    assert TASKS["arith"] is arith.ArithTask


@pytest.mark.parametrize("name", OFFLINE + HUB)
def test_yaml_config_builds_the_task(name):
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    task = make_task(cfg)  # a plain mapping, as Hydra gives after to_container
    assert task.name == name
    assert cfg["max_new_tokens"] == type(task).default_max_new_tokens


def test_make_task_rejects_unknown_fields():
    with pytest.raises(CRLError, match="unknown field.*colour"):
        make_task({"name": "arith", "colour": "red"})


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"name": "arith", "mode": "constrained"}, "not multiple choice"),
        ({"name": "bbq_offline", "mode": "beam"}, "task.mode='beam' is unknown"),
        ({"name": "bbq_offline", "subset": "ambig"}, "allowed: ambiguous, disambiguated"),
        ({"name": "gsm8k_offline", "subset": "hard"}, "allowed: none"),
        ({"name": "arith", "max_new_tokens": 0}, "at least 1"),
    ],
)
def test_bad_config_fails_before_loading(kw, match):
    with pytest.raises(CRLError, match=match):
        make_task(TaskConfig(**kw))


# -- offline tasks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,sizes",
    [
        ("gsm8k_offline", (60, 15, 25)),
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
    assert all(arith.bucket(p) == "test" for p in test)


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


# -- local data files -------------------------------------------------------------------------------------
def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["prompt", "answer"])
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_data_path_any_format(tmp_path, suffix):
    rows = [
        {"question": f"Sam has {i} pens and buys 2. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
        for i in range(20)
    ]
    task = make_task(full("gsm8k", data_path=str(write(tmp_path / f"g{suffix}", rows))))
    splits = {s: task.load(s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [12, 3, 5]
    ex = splits["test"][0]
    assert task.reward([ex.prompt], [f"#### {ex.answer}"], **task.columns([ex])) == [1.0]


def test_data_path_split_column(tmp_path):
    rows = [
        {"prompt": f"What is {i} + 1?", "answer": str(i + 1), "split": s}
        for i, s in enumerate(["train"] * 5 + ["validation"] * 2 + ["test"] * 3)
    ]
    task = make_task(full("arith", data_path=str(write(tmp_path / "a.jsonl", rows))))
    assert [len(task.load(s)) for s in SPLITS] == [5, 2, 3]
    assert {e.prompt for e in task.load("val")} == {"What is 5 + 1?", "What is 6 + 1?"}


def test_data_path_unknown_split_value(tmp_path):
    rows = [{"prompt": "What is 1 + 1?", "answer": "2", "split": s} for s in ("train", "holdout")]
    with pytest.raises(CRLError, match="column 'split' has value\\(s\\) 'holdout'"):
        make_task(full("arith", data_path=str(write(tmp_path / "a.jsonl", rows)))).load("train")


def test_data_path_mc_csv_with_list_column(tmp_path, tokenizer):
    choices = json.dumps(["w", "x", "y", "z"])  # csv has no list type: a JSON list in a text cell
    rows = [{"question": f"Q{i}?", "choices": choices, "answer": i % 4, "subject": "s"} for i in range(12)]
    task = make_task(full("mmlu", data_path=str(write(tmp_path / "m.csv", rows)), mode="constrained"))
    ex = task.load("train")[0]
    assert ex.meta["options"] == "ABCD" and "D) z" in ex.prompt
    assert [tokenizer.decode([i]) for i in task.allowed_token_ids(tokenizer, ex)] == ["A", "B", "C", "D"]


def test_missing_columns_name_missing_required_and_file(tmp_path):
    path = write(tmp_path / "bad.jsonl", [{"question": "2+2?"}, {"question": "3+3?"}])
    with pytest.raises(CRLError) as err:
        make_task(TaskConfig(name="gsm8k", data_path=str(path))).load("train")
    msg = str(err.value)
    assert "lacks column(s) answer" in msg and "needs columns question, answer" in msg and str(path) in msg
    assert "\n" not in msg


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(CRLError, match="has no rows"):
        make_task(TaskConfig(name="refusal_offline", data_path=str(path))).load("train")


@pytest.mark.parametrize(
    "bad,match",
    [
        ("missing.jsonl", "does not exist"),
        ("data.txt", "suffix '.txt'"),
    ],
)
def test_bad_data_path(tmp_path, bad, match):
    if bad.endswith(".txt"):
        (tmp_path / bad).write_text("x")
    with pytest.raises(CRLError, match=match):
        make_task(TaskConfig(name="arith", data_path=str(tmp_path / bad))).load("train")


def test_bad_values_in_rows(tmp_path):
    path = write(tmp_path / "x.jsonl", [{"prompt": "Is this ok?", "label": "maybe"}] * 4)
    with pytest.raises(CRLError, match="label 'maybe'.*'safe' or 'unsafe'"):
        make_task(TaskConfig(name="xstest", data_path=str(path))).load("train")
    path = write(tmp_path / "y.jsonl", [{"question": "Q?", "choices": ["a", "b"], "answer": 5}] * 4)
    with pytest.raises(CRLError, match="points outside the 2 options"):
        make_task(TaskConfig(name="mmlu", data_path=str(path))).load("train")
    path = write(tmp_path / "z.jsonl", [{"prompt": "", "answer": "3"}] * 4)
    with pytest.raises(CRLError, match="row 0 has an empty 'prompt'"):
        make_task(TaskConfig(name="arith", data_path=str(path))).load("train")
