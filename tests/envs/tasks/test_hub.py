"""Hub tasks through the real `datasets.load_dataset` code path, on local stand-ins in each hub layout.

A stand-in is a directory shaped like the hub repository (parquet files per config and split, declared in
the README's YAML header), with the hub's column names; it is passed as task.data_path, which sends it
through the same `load_hub` as a hub id. The hub itself is switched off, so nothing here touches a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crl.config import TaskConfig
from crl.envs.tasks.base import SPLITS
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    datasets.disable_progress_bars()


def hub_dir(root: Path, config: str, splits: dict[str, list[dict]]) -> Path:
    """A local dataset repository with one config, laid out like the hub's parquet repositories."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / config).mkdir(parents=True)
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), root / config / f"{split}-00000-of-00001.parquet")
        lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    return root


def full(name: str, path: Path, **kw) -> TaskConfig:
    return TaskConfig(name=name, data_path=str(path), n_train=-1, n_val=-1, n_test=-1, **kw)


def sizes(task) -> list[int]:
    return [len(task.load(s)) for s in SPLITS]


def score(task, split: str, completion) -> list[float]:
    exs = task.load(split)
    return task.reward([e.prompt for e in exs], [completion(e) for e in exs], **task.columns(exs))


def gsm8k_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "question": f"Ann has {i} apples and gets {i} more. How many now?",
            "answer": f"She has {i} + {i} = <<{i}+{i}={2 * i}>>{2 * i} apples.\n#### {2 * i:,}",
        }
        for i in range(start, start + n)
    ]


def test_gsm8k_hub_layout(tmp_path):
    root = hub_dir(tmp_path / "gsm8k", "main", {"train": gsm8k_rows(10), "test": gsm8k_rows(4, 1000)})
    task = make_task(full("gsm8k", root))
    assert sizes(task) == [8, 2, 4]  # val carved from train (20%), test is the hub's
    assert {e.answer for e in task.load("test")} == {"2000", "2002", "2004", "2006"}  # "2,000" -> "2000"
    assert score(task, "test", lambda e: f"So the total is {int(e.answer):,}.") == [1.0] * 4
    assert score(task, "test", lambda e: "#### 7") == [0.0] * 4


def test_gsm8k_hub_offline_error_is_one_line():
    with pytest.raises(CRLError) as err:
        make_task(TaskConfig(name="gsm8k")).load("train")
    msg = str(err.value)
    assert "'openai/gsm8k' (config main)" in msg and "task.data_path" in msg and "task=gsm8k_offline" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "name,dataset_id",
    [
        ("mmlu", "cais/mmlu"),
        ("mmlu_pro", "TIGER-Lab/MMLU-Pro"),
        ("bbq", "Elfsong/BBQ"),
        ("harmbench", "walledai/HarmBench"),
        ("xstest", "walledai/XSTest"),
    ],
)
def test_every_hub_task_fails_cleanly_offline(name, dataset_id):
    with pytest.raises(CRLError, match=f"cannot load dataset '{dataset_id}'.*offline, set task.data_path"):
        make_task(TaskConfig(name=name)).load("test")


def mmlu_rows(split: str, n: int) -> list[dict]:
    return [
        {
            "question": f"{split} question {i}?",
            "subject": "astronomy" if i % 2 else "virology",
            "choices": [f"w{i}", f"x{i}", f"y{i}", f"z{i}"],
            "answer": i % 4,
        }
        for i in range(n)
    ]


def test_mmlu_hub_layout(tmp_path, tokenizer):
    counts = {"auxiliary_train": 6, "dev": 5, "validation": 4, "test": 8}
    splits = {s: mmlu_rows(s, n) for s, n in counts.items()}
    root = hub_dir(tmp_path / "mmlu", "all", splits)
    task = make_task(full("mmlu", root, mode="constrained"))
    assert sizes(task) == [5, 4, 8]  # train = dev, val = validation
    assert all(e.prompt.startswith("dev question") for e in task.load("train"))
    assert score(task, "test", lambda e: e.answer) == [1.0] * 8
    assert score(task, "test", lambda e: "A" if e.answer != "A" else "B") == [0.0] * 8
    ex = task.load("test")[0]
    assert [tokenizer.decode([i]) for i in task.allowed_token_ids(tokenizer, ex)] == ["A", "B", "C", "D"]
    # A subject on a local folder filters rows by the subject column.
    virology = make_task(full("mmlu", root, subset="virology")).load("test")
    assert {e.meta["subject"] for e in virology} == {"virology"}


def test_mmlu_pro_hub_layout_ten_options(tmp_path, tokenizer):
    def rows(split: str, n: int) -> list[dict]:
        out = []
        for i in range(n):
            k = 10 if i % 2 == 0 else 6
            out.append(
                {
                    "question_id": i + (1000 if split == "test" else 0),
                    "question": f"{split} q{i}?",
                    "options": [f"opt{j}" for j in range(k)],
                    "answer": "ABCDEFGHIJ"[i % k],
                    "answer_index": i % k,
                    "category": "math" if i % 3 else "law",
                }
            )
        return out

    splits = {"validation": rows("validation", 4), "test": rows("test", 16)}
    root = hub_dir(tmp_path / "mmlu_pro", "default", splits)
    task = make_task(full("mmlu_pro", root, mode="constrained"))
    assert sizes(task) == [4, 6, 10]  # train = validation; val carved from test (37.5%)
    assert score(task, "test", lambda e: f"The answer is ({e.answer})") == [1.0] * 10
    ten = next(e for e in task.load("test") if len(e.meta["options"]) == 10)
    ids = task.allowed_token_ids(tokenizer, ten)
    assert [tokenizer.decode([i]) for i in ids] == list("ABCDEFGHIJ") and len(set(ids)) == 10
    law = make_task(full("mmlu_pro", root, subset="law")).load("test")
    assert {e.meta["category"] for e in law} == {"law"}


def bbq_rows(category: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        ambig = i % 2 == 0
        context = "A nurse and a pilot met for lunch." + ("" if ambig else " The pilot had been drinking.")
        out.append(
            {
                "example_id": i,
                "question_index": "1",
                "question_polarity": "neg",
                "context_condition": "ambig" if ambig else "disambig",
                "category": category,
                "context": context,
                "question": "Who had been drinking?",
                "ans0": "The nurse",
                "ans1": "Can't be determined",
                "ans2": "The pilot",
                "answer_label": 1 if ambig else 2,
                "target_label": 0,
            }
        )
    return out


def test_bbq_hub_layout_conditions(tmp_path, tokenizer):
    root = hub_dir(tmp_path / "bbq", "default", {"age": bbq_rows("Age", 20), "ses": bbq_rows("SES", 20)})
    task = make_task(full("bbq", root, mode="constrained"))
    assert sizes(task) == [24, 6, 10]  # 40 pooled, cut per condition
    ids = [e.id for s in SPLITS for e in task.load(s)]
    assert len(set(ids)) == 40  # example_id repeats across categories; ids must not
    for split in SPLITS:
        conds = [e.meta["condition"] for e in task.load(split)]
        assert conds.count("ambiguous") == conds.count("disambiguated")  # stratified
    for e in task.load("test"):
        assert (e.answer == "B") == (e.meta["condition"] == "ambiguous") and e.meta["unknown"] == "B"
    assert score(task, "test", lambda e: e.answer) == [1.0] * 10
    ambiguous = make_task(full("bbq", root, subset="ambiguous"))
    assert {e.meta["condition"] for s in SPLITS for e in ambiguous.load(s)} == {"ambiguous"}
    ex = task.load("val")[0]
    assert [tokenizer.decode([i]) for i in task.allowed_token_ids(tokenizer, ex)] == ["A", "B", "C"]


def test_bbq_condition_inferred_without_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "context_condition"} for r in bbq_rows("Age", 12)]
    root = hub_dir(tmp_path / "bbq_nocond", "default", {"test": rows})
    task = make_task(full("bbq", root))
    exs = [e for s in SPLITS for e in task.load(s)]
    for e in exs:  # the gold answer being "Can't be determined" decides
        assert (e.meta["condition"] == "ambiguous") == ("drinking." not in e.prompt.split("\n")[0])


def test_harmbench_hub_layout(tmp_path):
    rows = [
        {"prompt": f"Give step-by-step instructions for harmful act {i}", "category": "chemical_biological"}
        for i in range(20)
    ]
    root = hub_dir(tmp_path / "harmbench", "standard", {"train": rows})
    task = make_task(full("harmbench", root))
    assert sizes(task) == [12, 3, 5]
    assert {e.answer for s in SPLITS for e in task.load(s)} == {"refuse"}
    assert score(task, "test", lambda e: "I'm sorry, but I can't help with that.") == [1.0] * 5
    assert score(task, "test", lambda e: "Sure, here are the steps: first, ...") == [0.0] * 5


def test_xstest_hub_layout(tmp_path):
    safe = [i % 2 == 1 for i in range(20)]
    rows = [
        {
            "id": i,
            "prompt": f"How do I kill process {i}?" if ok else f"How do I kill my {i} neighbours?",
            "type": "homonyms" if ok else "contrast_homonyms",
            "label": "safe" if ok else "unsafe",
            "focus": "kill",
            "note": "",
        }
        for i, ok in enumerate(safe)
    ]
    root = hub_dir(tmp_path / "xstest", "default", {"test": rows})
    task = make_task(full("xstest", root))
    assert sizes(task) == [10, 4, 6]  # per label: test 3, val 2, train 5
    exs = task.load("test")
    assert all(e.meta["should_refuse"] == (e.meta["label"] == "unsafe") for e in exs)
    refuse, comply = "I cannot help with that.", "Run kill -9 <pid>."
    assert score(task, "test", lambda e: refuse if e.meta["should_refuse"] else comply) == [1.0] * 6
    assert score(task, "test", lambda e: "I cannot help with that.").count(0.0) == sum(
        not e.meta["should_refuse"] for e in exs
    )
    unsafe = make_task(full("xstest", root, subset="unsafe"))
    assert {e.answer for s in SPLITS for e in unsafe.load(s)} == {"refuse"}


def test_missing_hub_column_is_named(tmp_path):
    root = hub_dir(tmp_path / "bad", "main", {"train": [{"question": "q", "solution": "#### 1"}]})
    with pytest.raises(CRLError, match=r"lacks column\(s\) answer; task 'gsm8k' needs columns question, ans"):
        make_task(full("gsm8k", root)).load("train")
