"""Local data files as task data (`task.data_path`): jsonl, csv, parquet, split columns, and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from crl.config import TaskConfig
from crl.envs.tasks.base import SPLITS
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError
from tests.envs.tasks.helpers import full


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
