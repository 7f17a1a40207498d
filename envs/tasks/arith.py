"""Procedural arithmetic and one-step word problems with integer answers (offline, unlimited).

Disjoint splits by prompt hash (`procedural.py`): test problems can never appear in training.

Kinds (``task.subset`` picks one): add (1-50 + 1-50), sub (non-negative results up to 60), mul (2-20 x 2-12),
two_step (a + b - c, a x b + c) and word (one-step story problems). The instruction asks for just the number.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from crl.envs.tasks import procedural
from crl.envs.tasks.base import SPLITS, Example
from crl.envs.tasks.dataset_task import DatasetTask
from crl.envs.tasks.loading import Row
from crl.envs.tasks.registry import register_task
from crl.envs.tasks.verifiers import extract_number, numeric_reward
from crl.errors import CRLError

INSTRUCTION = "Answer with just the number."

_NAMES = ("Tom", "Mia", "Sam", "Ava", "Leo", "Zoe", "Ben", "Ivy", "Max", "Lily")
_ITEMS = ("apples", "marbles", "stickers", "books", "cookies", "pencils", "coins", "cards")


def _add(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(1, 50), r.randint(1, 50)
    return f"What is {a} + {b}?", a + b


def _sub(r: random.Random) -> tuple[str, int]:
    a = r.randint(2, 60)
    b = r.randint(1, a)
    return f"What is {a} - {b}?", a - b


def _mul(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(2, 20), r.randint(2, 12)
    return f"What is {a} * {b}?", a * b


def _two_step(r: random.Random) -> tuple[str, int]:
    if r.random() < 0.5:
        a, b = r.randint(1, 30), r.randint(1, 30)
        c = r.randint(1, a + b)
        return f"What is {a} + {b} - {c}?", a + b - c
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 20)
    return f"What is {a} * {b} + {c}?", a * b + c


def _word(r: random.Random) -> tuple[str, int]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    kind = r.randrange(4)
    if kind == 0:
        a, b = r.randint(2, 30), r.randint(2, 30)
        return f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?", a + b
    if kind == 1:
        a = r.randint(5, 40)
        b = r.randint(1, a - 1)
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    if kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 12)
        return f"{name} has {a} boxes with {b} {item} in each box. How many {item} are there in total?", a * b
    per, friends = r.randint(2, 9), r.randint(2, 6)
    return (
        f"{name} shares {per * friends} {item} equally among {friends} friends. How many {item} does each friend get?"
    ), per


KINDS: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "two_step": _two_step,
    "word": _word,
}


def generate(split: str, n: int, seed: int, kinds: tuple[str, ...] = tuple(KINDS)) -> list[Row]:
    """`n` distinct problems of `split` (rows with prompt, answer, kind, id)."""

    def draw(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        kind = rng.choice(kinds)
        question, value = KINDS[kind](rng)
        return f"{question} {INSTRUCTION}", str(value), {"kind": kind}

    return procedural.generate("arith", split, n, seed, draw, f"lower task.n_{split} or unset task.subset")


@register_task("arith")
class ArithTask(DatasetTask):
    answer_kind = "number"
    required_columns = ("prompt", "answer")
    default_max_new_tokens = 16  # SmolLM2 writes "16 + 48 = 64" (10 tokens) even when asked for the number
    subsets = tuple(KINDS)

    def default_rows(self) -> dict[str, list[Row]]:
        kinds = (self.cfg.subset,) if self.cfg.subset else tuple(KINDS)
        return {s: generate(s, getattr(self.cfg, f"n_{s}"), self.cfg.seed, kinds) for s in SPLITS}

    def source(self) -> str:
        return super().source() if self.cfg.data_path else "the arith generator"

    def to_example(self, row: Row, split: str) -> Example:
        if extract_number(str(row["answer"])) is None:
            raise CRLError(f"{self.source()}: answer {row['answer']!r} of example {self.row_id(row)} is not a number")
        return Example(
            id=self.row_id(row),
            prompt=str(row["prompt"]),
            answer=str(row["answer"]).strip(),
            meta={"kind": row.get("kind")},
        )

    def subset_of(self, example: Example) -> str | None:
        return example.meta["kind"]

    def stop_strings(self) -> list[str]:
        return ["\n"]

    def extract(self, completion: str) -> str | None:
        return extract_number(completion)

    def reward(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        return numeric_reward(prompts, completions, **columns)
