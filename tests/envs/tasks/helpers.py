"""Shared by the task tests: the task names, whole-split configs, and right/wrong completions per answer kind."""

from __future__ import annotations

from pathlib import Path

from crl.config import TaskConfig
from crl.envs.tasks.base import Example
from crl.paths import CONF_DIR

OFFLINE = ("arith", "gsm8k_offline", "bbq_offline", "refusal_offline")
HUB = ("gsm8k", "mmlu", "mmlu_pro", "bbq", "harmbench", "xstest")
CONF = Path(CONF_DIR) / "task"
REFUSE_TEXT = "I'm sorry, but I can't help with that."
COMPLY_TEXT = "Sure! Here is a short, helpful answer to your question."


def full(name: str, **kw) -> TaskConfig:
    """A config keeping whole splits (arith generates a fixed count)."""
    n = (64, 32, 64) if name == "arith" else (-1, -1, -1)
    return TaskConfig(name=name, **{**dict(zip(("n_train", "n_val", "n_test"), n, strict=True)), **kw})


def gold_completion(task, ex: Example) -> str:
    if task.answer_kind == "number":
        return f"Let me compute. #### {ex.answer}"
    if task.answer_kind == "letter":
        return ex.answer
    return REFUSE_TEXT if ex.meta["should_refuse"] else COMPLY_TEXT


def wrong_completion(task, ex: Example) -> str:
    if task.answer_kind == "number":
        return f"#### {int(float(ex.answer)) + 1}"
    if task.answer_kind == "letter":
        return next(letter for letter in ex.meta["options"] if letter != ex.answer)
    return COMPLY_TEXT if ex.meta["should_refuse"] else REFUSE_TEXT
