"""The prompting baseline: an instruction or a few-shot prefix, chosen on train and val from a small fixed set.

The prefix goes in front of the task's user message (`Example.prompt`), so the task renders it as it renders any
prompt: the chat template, the system prompt and the option letters' token ids (constrained multiple choice) all
come from the task, unchanged. Nothing in the task or the environment knows about it; unused, it changes nothing.

The candidates (`candidates`), in this order:

- as_is: the task's own prompt (no prefix), so the selection can keep the prompt as it is;
- think: "Think about which option is correct before answering." (multiple choice) / "Think about the question
  carefully before answering." (other tasks);
- letter (multiple choice only): "Answer with the letter of the correct option.";
- any_letter (multiple choice only): "The options are in random order: each letter is equally likely to be the
  correct one." (against a position bias);
- shots2, shots4: 2 and 4 solved TRAIN examples, each "<its prompt>\\nAnswer: <its gold answer>", before the prompt.
  Multiple choice: gold letters balanced (one of each letter in turn), in a seeded order. Not for refusal tasks
  (their answers are labels, not replies). The shot examples are left out of the train prompts that are scored.

Selection (`select_prompt`): every candidate is scored (greedy, no steering) on the same capped train prompts and the
same val prompts (all of them unless capped); the one with the best val accuracy wins, ties going to the shorter prefix
(as_is first). Its val rows carry the per-prompt outcomes. Its budget in rollouts is every episode spent scoring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crl.errors import CRLError

if TYPE_CHECKING:
    from crl.envs.tasks.base import Example

MC_INSTRUCTIONS = {
    "think": "Think about which option is correct before answering.",
    "letter": "Answer with the letter of the correct option.",
    "any_letter": "The options are in random order: each letter is equally likely to be the correct one.",
}
OTHER_INSTRUCTIONS = {"think": "Think about the question carefully before answering."}
SHOTS = (2, 4)
SHOT_SEED = 0  # which train examples become shots (fixed, so every run of a task sees the same candidates)


@dataclass(frozen=True)
class PromptCandidate:
    name: str
    prefix: str = ""  # text put before the task's user message
    shot_ids: tuple[str, ...] = ()  # train examples inside the prefix (never scored)


def apply_prefix(examples: list[Example], prefix: str) -> list[Example]:
    """Copies of `examples` whose user message starts with `prefix` (ids, answers and meta unchanged)."""
    if not prefix:
        return list(examples)
    return [dataclasses.replace(e, prompt=prefix + e.prompt) for e in examples]


def shot_examples(train: list[Example], k: int, balance: bool, seed: int = SHOT_SEED) -> list[Example]:
    """`k` train examples for a few-shot prefix, in a seeded order; with `balance`, gold answers take turns
    (A, B, A, B, ...), so the shots themselves teach no letter."""
    if len(train) < k:
        raise CRLError(f"a {k}-shot prompt needs {k} train examples, the split has {len(train)}; raise task.n_train")
    rng = np.random.default_rng(seed)
    order = [train[i] for i in rng.permutation(len(train))]
    if not balance:
        return order[:k]
    groups: dict[str, list[Example]] = {}
    for e in order:
        groups.setdefault(e.answer, []).append(e)
    picked: list[Example] = []
    while len(picked) < k:  # one of each answer in turn; an answer that runs out is skipped
        for answer in sorted(groups):
            if groups[answer] and len(picked) < k:
                picked.append(groups[answer].pop(0))
    return [picked[i] for i in rng.permutation(k)]


def shot_prefix(shots: list[Example]) -> str:
    return "".join(f"{e.prompt}\nAnswer: {e.answer}\n\n" for e in shots)


def candidates(answer_kind: str, train: list[Example]) -> list[PromptCandidate]:
    """The documented candidate set for a task (module docstring)."""
    mc = answer_kind == "letter"
    out = [PromptCandidate("as_is")]
    for name, text in (MC_INSTRUCTIONS if mc else OTHER_INSTRUCTIONS).items():
        out.append(PromptCandidate(name, text + "\n\n"))
    if answer_kind != "refusal":
        for k in SHOTS:
            if len(train) > k:  # at least one train prompt is left to score
                shots = shot_examples(train, k, balance=mc)
                out.append(PromptCandidate(f"shots{k}", shot_prefix(shots), tuple(e.id for e in shots)))
    return out


# (candidate, split name, the examples to score) -> (accuracy, well-formed rate, episodes spent, per-prompt outcomes:
# [prompt id, correct, well-formed] each, as `runner.outcomes` gives them)
Scorer = Callable[[PromptCandidate, str, list["Example"]], tuple[float, float, int, list[list[Any]]]]


def score_pools(
    cands: list[PromptCandidate],
    splits: dict[str, list[Example]],
    select_split: str = "train",
    pick_split: str = "val",
    max_prompts: int = 64,
    max_pick_prompts: int | None = None,
) -> dict[str, list[Example]]:
    """The prompts every candidate is scored on, per split: of the prompts that are no candidate's shots, the first
    `max_prompts` of `select_split` and the first `max_pick_prompts` of `pick_split` (None: all, as every val stage)."""
    shots = {i for c in cands for i in c.shot_ids}
    caps = {select_split: max_prompts, pick_split: max_pick_prompts}
    return {s: [e for e in splits[s] if e.id not in shots][: caps[s]] for s in (select_split, pick_split)}


def select_prompt(
    cands: list[PromptCandidate],
    splits: dict[str, list[Example]],
    score: Scorer,
    select_split: str = "train",
    pick_split: str = "val",
    max_prompts: int = 64,
    max_pick_prompts: int | None = None,
) -> tuple[PromptCandidate, list[dict[str, Any]]]:
    """Score every candidate on `select_split` then `pick_split` (the first `max_prompts` / `max_pick_prompts` of
    each, None: all; the shots of any candidate are left out of both: `score_pools`), pick the best on `pick_split`,
    ties to the shorter prefix. Returns the chosen candidate and one row per (candidate, split) in the order they were
    spent; the `pick_split` rows carry the scorer's per-prompt `outcomes`."""
    if not cands:
        raise CRLError("no prompt candidates to choose from")
    pools = score_pools(cands, splits, select_split, pick_split, max_prompts, max_pick_prompts)
    for s, pool in pools.items():
        if not pool:
            raise CRLError(f"no {s} prompts are left to score the prompt candidates; raise task.n_{s}")
    rows: list[dict[str, Any]] = []
    for c in cands:
        for s in (select_split, pick_split):
            acc, wf, n, outs = score(c, s, pools[s])
            row = {
                "method": "prompting",
                "stage": f"prompt@{s}",
                "candidate": c.name,
                "prefix_chars": len(c.prefix),
                "accuracy": acc,
                "well_formed": wf,
                "rollouts": n,
            }
            if s == pick_split:  # val outcomes pair the pick with CRL prompt by prompt; train ones are not read
                row["outcomes"] = outs
            rows.append(row)
    picked = [r for r in rows if r["stage"] == f"prompt@{pick_split}"]
    best = min(picked, key=lambda r: (-r["accuracy"], r["prefix_chars"]))
    return next(c for c in cands if c.name == best["candidate"]), rows
