"""What a task is: a loader, a prompt format, answer extraction and a TRL-style reward function.

Every reward function has TRL's signature ``(prompts, completions, **columns) -> list[float]``, so the
same verifier plugs into `trl.GRPOTrainer(reward_funcs=...)`. The dataset columns a reward needs
(e.g. ``answer``) arrive as keyword lists aligned with ``completions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crl.config import TaskConfig, validate
from crl.envs.tasks.family import FamilyAxes, Variants
from crl.errors import CRLError

SPLITS = ("train", "val", "test")


@dataclass
class Example:
    """One prompt. `answer` is the gold label (option letter, number, or 'refuse'/'comply')."""

    id: str
    prompt: str  # the user message, before any chat template
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)  # extra columns (category, condition, ...)


class Task:
    """Base class. Subclasses set `name` and implement `load_split`, `extract` and `reward`."""

    name: str = "base"
    answer_kind: str = "text"  # letter | number | refusal | token
    required_columns: tuple[str, ...] = ("prompt", "answer")
    default_max_new_tokens: int = 8  # = the composed task.max_new_tokens of conf/task/<name>.yaml (a test checks)
    supports_constrained: bool = False  # multiple-choice tasks score option letters only
    subsets: tuple[str, ...] | None = ()  # allowed task.subset values; None = free-form (checked on load)
    family_axes: FamilyAxes | None = None  # a templated task's variants (family.py); None: task.family does not apply

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self._check_config()

    def _check_config(self) -> None:
        """Fail on bad settings before any data is read."""
        cfg = self.cfg
        validate(cfg, "task.")
        if cfg.reward == "letter_prob" and not self.supports_constrained:
            raise CRLError(
                f"task '{self.name}' is not multiple choice, so task.reward=letter_prob (the gold option letter's "
                "probability) does not apply; use task.reward=exact"
            )
        if cfg.mode == "constrained" and not self.supports_constrained:
            raise CRLError(
                f"task '{self.name}' is not multiple choice, so task.mode=constrained does not "
                "apply; use task.mode=free"
            )
        if cfg.subset is not None and self.subsets is not None and cfg.subset not in self.subsets:
            allowed = ", ".join(self.subsets) if self.subsets else "none (leave task.subset unset)"
            raise CRLError(f"task.subset='{cfg.subset}' is unknown for task '{self.name}'; allowed: {allowed}")
        if self.family_axes is None:
            if cfg.family.enabled:
                raise CRLError(f"task '{self.name}' has no variants, so task.family does not apply; set it to false")
        else:
            self.family_axes.check(cfg.family, self.name)

    # -- variants (family.py) -----------------------------------------------------------------------
    def template(self) -> Variants:
        """The variant of the task's single template (what the splits hold with task.family off)."""
        raise NotImplementedError

    def variants(self) -> Variants:
        """The variants train/val/test draw from."""
        if self.family_axes is None:
            raise CRLError(f"task '{self.name}' has no variants; crl transfer needs a task with variants (compare)")
        return self.family_axes.selected(self.cfg.family) if self.cfg.family.enabled else self.template()

    def family_record(self) -> dict[str, list[str]] | None:
        """The variants train/val/test draw from as plain lists (`wordings`, `directions`, `ranges`), as probe.json
        stores them and `crl study` compares them with its cells'; None for a task without variants."""
        if self.family_axes is None:
            return None
        v = self.variants()
        return {"wordings": list(v.wordings), "directions": list(v.directions), "ranges": list(v.ranges)}

    def variant_rows(self, variants: Variants, split: str, n: int, at_most: bool = False) -> list[Any]:
        """`n` rows of `split` drawn from `variants` (fewer with `at_most` when the variants hold fewer)."""
        raise NotImplementedError

    def variant_examples(self, variants: Variants, split: str, n: int) -> list[Example]:
        """Up to `n` examples of `split` drawn from `variants`, whatever the task's own family (crl transfer)."""
        if self.family_axes is None:
            self.variants()  # the one-line error
        return [self.to_example(r, split) for r in self.variant_rows(variants, split, n, at_most=True)]

    def to_example(self, row: Any, split: str) -> Example:
        raise NotImplementedError

    # -- data -------------------------------------------------------------------------------------
    def load_split(self, split: str) -> list[Example]:
        raise NotImplementedError

    def load(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise CRLError(f"split '{split}' is unknown; use one of {SPLITS}")
        examples = self.load_split(split)
        if not examples:
            raise CRLError(f"task '{self.name}' split '{split}' is empty; check task.data_path / task.n_{split}")
        return examples

    # -- prompting --------------------------------------------------------------------------------
    def system_prompt(self) -> str | None:
        return None

    def format_prompt(self, example: Example, tokenizer: Any) -> str:
        """The exact text fed to the model (chat template applied for instruct models)."""
        if self.cfg.chat_template and getattr(tokenizer, "chat_template", None):
            msgs = []
            if self.system_prompt():
                msgs.append({"role": "system", "content": self.system_prompt()})
            msgs.append({"role": "user", "content": example.prompt})
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return example.prompt

    def stop_strings(self) -> list[str]:
        return []

    def max_new_tokens(self) -> int:
        """Generation budget: one token when only an option letter may be emitted."""
        return 1 if self.cfg.mode == "constrained" else self.cfg.max_new_tokens

    def allowed_token_ids(self, tokenizer: Any, example: Example) -> list[int] | None:
        """Constrained decoding: the only tokens that may be generated (None = free generation)."""
        return None

    # -- verification -----------------------------------------------------------------------------
    def extract(self, completion: str) -> str | None:
        """The parsed answer, or None when the completion is malformed."""
        raise NotImplementedError

    def reward(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        raise NotImplementedError

    def well_formed(self, completion: str) -> bool:
        return self.extract(completion) is not None

    def columns(self, examples: list[Example]) -> dict[str, list[Any]]:
        """Keyword columns for `reward`: answer plus every meta key."""
        cols: dict[str, list[Any]] = {"answer": [e.answer for e in examples]}
        for key in sorted({k for e in examples for k in e.meta}):
            cols[key] = [e.meta.get(key) for e in examples]
        return cols
