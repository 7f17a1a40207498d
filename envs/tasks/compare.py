"""Number comparison as two-option multiple choice (offline, procedural, about 8,000 distinct prompts).

    Which number is larger?
    A) 47
    B) 52

Why it is in CRL: SmolLM2-135M-Instruct answers "A" to every two-option question (position bias), so it
scores chance (0.50), yet a linear probe on its layer-6 residual at the last prompt token predicts the right
letter about 92% of the time (measured on 512 train / 256 test prompts). The model has the answer and does not
say it: the case where steering can show which features carry a task, beyond fixing a format. A static
feature can only move every answer to one letter (still 0.50), so any gain over that needs a policy that reads
the residual. Numbers are 10-99, distinct, in random order; splits are disjoint by prompt hash (`procedural.py`).
"""

from __future__ import annotations

import random
from typing import Any

from crl.envs.tasks import procedural
from crl.envs.tasks.base import SPLITS, Example
from crl.envs.tasks.loading import Row
from crl.envs.tasks.multiple_choice import MultipleChoiceTask
from crl.envs.tasks.registry import register_task

QUESTIONS = {"larger": "Which number is larger?", "smaller": "Which number is smaller?"}
LOW, HIGH = 10, 99


def generate(split: str, n: int, seed: int, kind: str, stem: Any) -> list[Row]:
    """`n` distinct comparison problems of `split`; `stem` renders (question, options) as the prompt."""

    def draw(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        a, b = rng.sample(range(LOW, HIGH + 1), 2)
        pick = max(a, b) if kind == "larger" else min(a, b)
        options = [str(a), str(b)]
        extra = {"question": QUESTIONS[kind], "options": options, "kind": kind}
        return stem(QUESTIONS[kind], options), "A" if a == pick else "B", extra

    return procedural.generate("compare", split, n, seed, draw, f"lower task.n_{split}")


@register_task("compare")
class CompareTask(MultipleChoiceTask):
    required_columns = ("prompt", "options", "answer")  # a data_path file: prompt = the question stem
    max_options = 2
    subsets = tuple(QUESTIONS)  # larger (the default) | smaller

    def default_rows(self) -> dict[str, list[Row]]:
        kind = self.cfg.subset or "larger"
        return {s: generate(s, getattr(self.cfg, f"n_{s}"), self.cfg.seed, kind, self._stem) for s in SPLITS}

    def _stem(self, question: str, options: list[str]) -> str:
        return self.mc_example("", question, options, 0).prompt

    def source(self) -> str:
        return super().source() if self.cfg.data_path else "the compare generator"

    def to_example(self, row: Row, split: str) -> Example:
        stem = row.get("question") or row["prompt"]  # generated rows keep the rendered prompt for hashing
        return self.mc_example(self.row_id(row), str(stem), row["options"], row["answer"], {"kind": row.get("kind")})

    def subset_of(self, example: Example) -> str | None:
        return example.meta.get("kind")
