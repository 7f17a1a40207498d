"""MMLU (cais/mmlu, 4 options) and MMLU-Pro (TIGER-Lab/MMLU-Pro, up to 10 options), from the hub or task.data_path.

Splits. MMLU: train = "dev" (the 5 few-shot questions per subject, 285 in "all": same distribution as the
test set, unlike the out-of-domain "auxiliary_train"), val = "validation", test = "test". ``task.subset``
picks a subject config (e.g. ``abstract_algebra``; default "all").
A task.data_path file has the hub's columns (question, choices, answer; subject optional), or four option columns
A, B, C, D in place of choices, or is one of the original release's csv files (data/test/<subject>_test.csv ...),
which have no header row: question, A, B, C, D, answer (a letter). A file holds no splits of its own unless it has
a ``split`` column; it is carved by task.seed like any pooled source (test 25% / val 15% / train 60%).
MMLU-Pro: train = "validation" (70 questions), val carved from "test" by task.seed (37.5% of it, see
`loading.resolve_splits`), test = the rest. ``task.subset`` filters a category (e.g. ``math``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from crl.envs.tasks.base import Example
from crl.envs.tasks.loading import SPLIT_ALIASES, Row, as_list, read_table
from crl.envs.tasks.multiple_choice import MultipleChoiceTask, gold_index
from crl.envs.tasks.registry import register_task

RELEASE_COLUMNS = ("question", "A", "B", "C", "D", "answer")  # MMLU's original csv files, which have no header row
OPTION_COLUMNS = RELEASE_COLUMNS[1:5]


def is_release_csv(path: Path) -> bool:
    """Whether `path` is a csv file in the original MMLU layout: 6 fields, the last a letter A-D, no header row."""
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader(f), [])
    except (ValueError, OSError, csv.Error):
        return False  # read_table reports it
    header = {c.strip().lower() for c in first} & {"question", "answer", "choices"}
    return len(first) == len(RELEASE_COLUMNS) and first[-1].strip().upper() in OPTION_COLUMNS and not header


@register_task("mmlu")
class MMLUTask(MultipleChoiceTask):
    hub_id = "cais/mmlu"
    hub_config = "all"
    required_columns = ("question", "choices", "answer")
    subsets = None  # any MMLU subject; the hub rejects unknown ones
    split_aliases = {**SPLIT_ALIASES, "train": ("train", "dev", "auxiliary_train"), "val": ("validation", "val")}
    release_format = "choices may be 4 columns A, B, C, D; MMLU's own headerless csv also works"

    def hub_config_name(self) -> str | None:
        return self.cfg.subset or self.hub_config

    def read_local(self, path: Path) -> list[Row]:
        rows = read_table(path, columns=RELEASE_COLUMNS if is_release_csv(path) else None)
        # Option columns A-D (the original layout, or a file with that header) become the hub's choices list.
        return [
            {**r, "choices": [r[c] for c in OPTION_COLUMNS]}
            if r.get("choices") is None and all(r.get(c) is not None for c in OPTION_COLUMNS)
            else r
            for r in rows
        ]

    def to_example(self, row: Row, split: str) -> Example:
        rid = self.row_id(row)
        choices = as_list(row["choices"], "choices", self.source())
        meta = {"subject": row.get("subject") or ""}
        return self.mc_example(rid, row["question"], choices, row["answer"], meta)

    def subset_of(self, example: Example) -> str | None:
        return example.meta["subject"] or None


@register_task("mmlu_pro")
class MMLUProTask(MultipleChoiceTask):
    hub_id = "TIGER-Lab/MMLU-Pro"
    required_columns = ("question", "options", "answer")
    column_aliases = {"answer": ("answer_index",)}
    subsets = None  # a category such as math, law, physics
    release_format = "the columns of TIGER-Lab/MMLU-Pro's parquet files"
    max_options = 10
    split_aliases = {"train": ("train", "validation"), "val": ("val", "dev"), "test": ("test",)}

    def to_example(self, row: Row, split: str) -> Example:
        rid = self.row_id(row)
        options = as_list(row["options"], "options", self.source())
        answer: Any = row.get("answer") if row.get("answer") is not None else row.get("answer_index")
        idx = gold_index(answer, len(options), f"{self.source()} example {rid}")
        # Early hub versions pad with "N/A" options; drop them (never the answer) and re-index the gold.
        keep = [i for i, o in enumerate(options) if str(o).strip() != "N/A" or i == idx]
        options, idx = [options[i] for i in keep], keep.index(idx)
        return self.mc_example(rid, row["question"], options, idx, {"category": row.get("category") or ""})

    def subset_of(self, example: Example) -> str | None:
        return example.meta["category"] or None
