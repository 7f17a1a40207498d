"""Procedural tasks: unlimited problems from a seeded generator, with splits that can never overlap.

Each split draws from its own seed stream, ``Random("<task>:<seed>:<split>")``, and keeps a problem only if the
SHA-256 of its prompt falls in that split's bucket (train 80%, val 10%, test 10% of hash space). A prompt
therefore belongs to exactly one split for every seed: test problems can never appear in training, even across
runs with different ``task.seed``. Duplicates within a split are skipped.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from crl.envs.tasks.loading import Row
from crl.errors import CRLError

BUCKETS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}  # percent of hash space per split

# rng -> (prompt, answer, extra columns)
Draw = Callable[[random.Random], tuple[str, str, dict[str, Any]]]


def bucket(prompt: str) -> str:
    """The only split a prompt may belong to (stable across seeds and runs).

    >>> bucket("What is 1 + 1? Answer with just the number.") in BUCKETS
    True
    """
    h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 100
    return next(s for s, (lo, hi) in BUCKETS.items() if lo <= h < hi)


def generate(
    task: str, split: str, n: int, seed: int, draw: Draw, too_few_hint: str, at_most: bool = False
) -> list[Row]:
    """`n` distinct rows of `split` (id, prompt, answer, extra columns) drawn by `draw`. `at_most`: when the
    generator cannot find `n` (a small variant, e.g. one-digit numbers), the rows it found instead of an error."""
    if n < 0:
        raise CRLError(f"task {task} generates problems and needs a finite task.n_{split}, got {n}; use a count")
    rng = random.Random(f"{task}:{seed}:{split}")
    rows: list[Row] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            if at_most and rows:
                break
            raise CRLError(f"{task} yields only {len(rows)} distinct {split} problems; {too_few_hint}")
        prompt, answer, extra = draw(rng)
        if prompt in seen or bucket(prompt) != split:
            continue
        seen.add(prompt)
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:10]
        rows.append({"id": f"{split}-{digest}", "prompt": prompt, "answer": answer, **extra})
    return rows
