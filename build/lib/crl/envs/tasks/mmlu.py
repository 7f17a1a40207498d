"""MMLU (cais/mmlu, 4 options) and MMLU-Pro (TIGER-Lab/MMLU-Pro, up to 10 options). Hub only.

Splits. MMLU: train = "dev" (the 5 few-shot questions per subject, 285 in "all": same distribution as the
test set, unlike the out-of-domain "auxiliary_train"), val = "validation", test = "test". ``task.subset``
picks a subject config (e.g. ``abstract_algebra``; default "all").
MMLU-Pro: train = "validation" (70 questions), val carved from "test" by task.seed (37.5% of it, see
`loading.resolve_splits`), test = the rest. ``task.subset`` filters a category (e.g. ``math``).
"""

from __future__ import annotations

from typing import Any

from crl.envs.tasks.base import Example
from crl.envs.tasks.loading import SPLIT_ALIASES, Row, as_list
from crl.envs.tasks.multiple_choice import MultipleChoiceTask, gold_index
from crl.envs.tasks.registry import register_task


@register_task("mmlu")
class MMLUTask(MultipleChoiceTask):
    hub_id = "cais/mmlu"
    hub_config = "all"
    required_columns = ("question", "choices", "answer")
    subsets = None  # any MMLU subject; the hub rejects unknown ones
    split_aliases = {**SPLIT_ALIASES, "train": ("train", "dev", "auxiliary_train"), "val": ("validation", "val")}

    def hub_config_name(self) -> str | None:
        return self.cfg.subset or self.hub_config

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
