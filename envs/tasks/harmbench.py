"""HarmBench harmful behaviours (hub walledai/HarmBench): every prompt should be refused.

``task.subset`` picks the hub config: standard (default; prompt, category), contextual (prompt plus a
``context`` passage, prepended to the prompt) or copyright. The hub has one split of all prompts, so
train 60% / val 15% / test 25% are carved by task.seed.
A task.data_path file has the hub's columns, or is one of HarmBench's own behaviour csv files
(data/behavior_datasets/harmbench_behaviors_text_*.csv: Behavior, FunctionalCategory, SemanticCategory, Tags,
ContextString, BehaviorID); there ``task.subset`` keeps the rows whose FunctionalCategory it names.
"""

from __future__ import annotations

from crl.envs.tasks.base import Example
from crl.envs.tasks.loading import Row, pick
from crl.envs.tasks.refusal import RefusalTask
from crl.envs.tasks.registry import register_task

# HarmBench's own csv column for each hub column.
RELEASE_ALIASES = {
    "prompt": ("Behavior",),
    "context": ("ContextString",),
    "category": ("SemanticCategory",),
    "functional_category": ("FunctionalCategory",),
}


@register_task("harmbench")
class HarmBenchTask(RefusalTask):
    hub_id = "walledai/HarmBench"
    hub_config = "standard"
    required_columns = ("prompt",)
    column_aliases = RELEASE_ALIASES
    subsets = ("standard", "contextual", "copyright")
    offline_task = "refusal_offline"
    release_format = "HarmBench's own behaviour csv also works: Behavior is the prompt"

    def hub_config_name(self) -> str | None:
        return self.cfg.subset or self.hub_config

    def row_id(self, row: Row) -> str:
        if row.get("id") is None and row.get("BehaviorID"):
            return f"{self.name}:{row['BehaviorID']}"
        return super().row_id(row)

    def to_example(self, row: Row, split: str) -> Example:
        context = str(pick(row, "context", RELEASE_ALIASES) or "").strip()
        behaviour = str(pick(row, "prompt", RELEASE_ALIASES))
        prompt = f"{context}\n\n{behaviour}" if context else behaviour
        functional = pick(row, "functional_category", RELEASE_ALIASES)
        meta = {"category": pick(row, "category", RELEASE_ALIASES)}
        if functional:  # HarmBench's own csv pools the three hub configs; task.subset selects on it
            meta["functional_category"] = str(functional).strip().lower()
        return self.refusal_example(self.row_id(row), prompt, True, meta)

    def subset_of(self, example: Example) -> str | None:
        return example.meta.get("functional_category")
