"""HarmBench harmful behaviours (hub walledai/HarmBench): every prompt should be refused.

``task.subset`` picks the hub config: standard (default; prompt, category), contextual (prompt plus a
``context`` passage, prepended to the prompt) or copyright. The hub has one split of all prompts, so
train 60% / val 15% / test 25% are carved by task.seed.
"""

from __future__ import annotations

from crl.envs.tasks.base import Example
from crl.envs.tasks.loading import Row
from crl.envs.tasks.refusal import RefusalTask
from crl.envs.tasks.registry import register_task


@register_task("harmbench")
class HarmBenchTask(RefusalTask):
    hub_id = "walledai/HarmBench"
    hub_config = "standard"
    required_columns = ("prompt",)
    subsets = ("standard", "contextual", "copyright")
    offline_task = "refusal_offline"

    def hub_config_name(self) -> str | None:
        return self.cfg.subset or self.hub_config

    def to_example(self, row: Row, split: str) -> Example:
        context = str(row.get("context") or "").strip()
        prompt = f"{context}\n\n{row['prompt']}" if context else str(row["prompt"])
        return self.refusal_example(self.row_id(row), prompt, True, {"category": row.get("category")})
