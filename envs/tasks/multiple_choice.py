"""Multiple-choice prompts scored by option letter, in free or constrained (letters-only) generation.

``task.mode=constrained`` allows only the option letters' token ids for one generated token
(`allowed_token_ids`); ``task.mode=free`` lets the model write and extracts the letter afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from crl.config import TaskConfig
from crl.envs.tasks.base import Example
from crl.envs.tasks.dataset_task import DatasetTask
from crl.envs.tasks.verifiers import LETTERS, extract_letter, letter_reward
from crl.errors import CRLError


def gold_index(value: Any, n_options: int, source: str) -> int:
    """A gold answer given as index (0, "2") or letter ("C") -> 0-based index, checked against the options."""
    if isinstance(value, str) and value.strip().upper() in LETTERS and not value.strip().isdigit():
        idx = LETTERS.index(value.strip().upper())
    else:
        try:
            idx = int(value)
        except (TypeError, ValueError):
            raise CRLError(f"{source}: answer {value!r} is neither an option index nor a letter A-J") from None
    if not 0 <= idx < n_options:
        raise CRLError(f"{source}: answer {value!r} points outside the {n_options} options; fix the row")
    return idx


class MultipleChoiceTask(DatasetTask):
    answer_kind = "letter"
    supports_constrained = True
    default_max_new_tokens = 16
    max_options = 4
    instruction = "Answer with the letter of the correct option only."

    def __init__(self, cfg: TaskConfig):
        if cfg.mode == "constrained" and cfg.max_new_tokens != 1:
            # The letter mask applies at every step, so a second token could only repeat a letter ("BB").
            cfg = dataclasses.replace(cfg, max_new_tokens=1)
        super().__init__(cfg)

    def mc_example(
        self, row_id: str, stem: str, options: Sequence[Any], answer: Any, meta: dict[str, Any] | None = None
    ) -> Example:
        """The prompt "stem / A) .. B) .. / instruction", gold letter and valid letters in meta['options']."""
        options = [str(o).strip() for o in options]
        if not 2 <= len(options) <= len(LETTERS):
            raise CRLError(
                f"{self.source()}: example {row_id} has {len(options)} options; 2 to {len(LETTERS)} are supported"
            )
        letters = LETTERS[: len(options)]
        idx = gold_index(answer, len(options), f"{self.source()} example {row_id}")
        body = "\n".join(f"{letter}) {text}" for letter, text in zip(letters, options, strict=True))
        prompt = f"{stem.strip()}\n\n{body}\n\n{self.instruction}"
        return Example(
            id=row_id,
            prompt=prompt,
            answer=letters[idx],
            meta={"options": letters, "option_texts": options, **(meta or {})},
        )

    # -- generation -------------------------------------------------------------------------------------
    def stop_strings(self) -> list[str]:
        return [] if self.cfg.mode == "constrained" else ["\n"]

    def allowed_token_ids(self, tokenizer: Any, example: Example) -> list[int] | None:
        """Token ids of the option letters exactly as the model would emit them first after the prompt.

        Each letter is tokenized after the formatted prompt (chat template included) and must add exactly
        one token; otherwise constrained scoring is impossible for this tokenizer and a CRLError says so.
        """
        if self.cfg.mode != "constrained":
            return None
        prompt = self.format_prompt(example, tokenizer)
        base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        # After "Answer:" a model writes " B"; after the chat template's "assistant\n" it writes "B".
        sep = "" if not prompt or prompt[-1].isspace() else " "
        ids = []
        for letter in example.meta["options"]:
            full = tokenizer(prompt + sep + letter, add_special_tokens=False)["input_ids"]
            if len(full) != len(base) + 1 or full[: len(base)] != base:
                raise CRLError(
                    f"option letter '{letter}' is not a single token after the prompt for this "
                    "tokenizer; use task.mode=free"
                )
            ids.append(full[-1])
        if len(set(ids)) != len(ids):
            raise CRLError("option letters share a token id for this tokenizer; use task.mode=free")
        return ids

    # -- verification -----------------------------------------------------------------------------------
    def extract(self, completion: str) -> str | None:
        # Without the example, any letter within the task's widest option range is well-formed.
        return extract_letter(completion, LETTERS[: self.max_options])

    def reward(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        return letter_reward(prompts, completions, **columns)
