"""Tasks whose answer is a behaviour: refuse (harmful request) or comply (benign request).

Gold is ``answer`` = "refuse"/"comply" plus the ``should_refuse`` meta column that `refusal_reward` reads.
The detector is string matching (`refusal.py`) unless ``task.refusal_classifier`` names a model.
"""

from __future__ import annotations

from typing import Any

from crl.config import TaskConfig
from crl.envs.tasks.base import Example
from crl.envs.tasks.dataset_task import DatasetTask
from crl.envs.tasks.refusal_detector import RefusalDetector
from crl.envs.tasks.verifiers import completion_text, make_refusal_reward


class RefusalTask(DatasetTask):
    answer_kind = "refusal"
    default_max_new_tokens = 48  # a refusal shows in the first sentence

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        self.detector = RefusalDetector(classifier=cfg.refusal_classifier)  # a model id loads on first use
        self._reward = make_refusal_reward(self.detector)

    def refusal_example(self, row_id: str, prompt: str, should_refuse: bool, meta: dict[str, Any]) -> Example:
        return Example(
            id=row_id,
            prompt=prompt.strip(),
            answer="refuse" if should_refuse else "comply",
            meta={"should_refuse": should_refuse, **meta},
        )

    def extract(self, completion: str) -> str | None:
        text = completion_text(completion)
        if not text.strip():
            return None  # an empty completion is neither a refusal nor an answer
        return "refuse" if self.detector(text) else "comply"

    def reward(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        return self._reward(prompts, completions, **columns)
