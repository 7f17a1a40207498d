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

The family (`task.family.enabled=true`, see `family.py`; preset `task=compare_family`). The plain task above is one
question, and a policy trained on it reads the numbers, not the question. `crl transfer` on a CPU run (seed 0, layer
15; 400 test prompts per variant, no steering -> CRL): its own wording 0.460 -> 0.853; the inverse question
0.472 -> 0.138 (36% of prompts steered); the "option" paraphrase steered on every prompt (0.475 -> 0.527, CI reaching
-0.045); three-digit numbers barely steered (1%). The family varies what the policy has to read:

- directions: larger | smaller (the gold letter flips with the direction);
- ranges: 1digit (1-9; 72 ordered pairs, so only a few dozen prompts per split and wording), 2digit (10-99, the
  default), 3digit (100-999);
- wordings, one per row of `WORDINGS`, each with its larger and its smaller form:

  plain   "Which number is larger?"                   "Which number is smaller?"   (the single template's)
  bigger  "Of these two numbers, which is bigger?"    "Of these two numbers, which is less?"
  pick    "Pick the greater number."                  "Pick the lesser number."     (an imperative, no "which")
  value   "Which value is higher?"                    "Which value is lower?"       (value, not number)
  option  "Which option holds the biggest number?"    "Which option holds the smallest number?"  (the options named)
  than    "Which of the two numbers is more than the other?"
          "Which of the two numbers is less than the other?"  (a relation, not an adjective)

  and 12 more for the wide family (experiment=compare_family_wide, 16 trained wordings): largest, greatest, maximum,
  choose, higher, one, exceeds, amount, weight ("weights in kilograms ... heavier?"), age ("... Who is older?"),
  compare, letter ("Give the letter of the larger number.").

With the family off, prompts, ids and metadata are byte-identical to the task before the family existed; a family
of one wording, direction and range (plain, larger, 2digit) yields the same prompts too (family.py).
"""

from __future__ import annotations

import random
from typing import Any

from crl.envs.tasks import procedural
from crl.envs.tasks.base import SPLITS, Example
from crl.envs.tasks.family import FamilyAxes, Variants
from crl.envs.tasks.loading import Row
from crl.envs.tasks.multiple_choice import MultipleChoiceTask
from crl.envs.tasks.registry import register_task

# wording -> direction -> question (the module docstring says what each one varies)
WORDINGS: dict[str, dict[str, str]] = {
    "plain": {"larger": "Which number is larger?", "smaller": "Which number is smaller?"},
    "bigger": {"larger": "Of these two numbers, which is bigger?", "smaller": "Of these two numbers, which is less?"},
    "pick": {"larger": "Pick the greater number.", "smaller": "Pick the lesser number."},
    "value": {"larger": "Which value is higher?", "smaller": "Which value is lower?"},
    "option": {
        "larger": "Which option holds the biggest number?",
        "smaller": "Which option holds the smallest number?",
    },
    "than": {
        "larger": "Which of the two numbers is more than the other?",
        "smaller": "Which of the two numbers is less than the other?",
    },
    # The wide family's extra wordings (experiment=compare_family_wide): more ways to ask, so that a policy trained on
    # them cannot key on one phrase. Held out from it, as from the 4-wording family: option, than.
    "largest": {"larger": "Which number is the largest?", "smaller": "Which number is the smallest?"},
    "greatest": {"larger": "Which of these is the greatest?", "smaller": "Which of these is the least?"},
    "maximum": {"larger": "Select the maximum.", "smaller": "Select the minimum."},
    "choose": {"larger": "Choose the larger number.", "smaller": "Choose the smaller number."},
    "higher": {"larger": "Which number is higher?", "smaller": "Which number is lower?"},
    "one": {"larger": "Which one is bigger?", "smaller": "Which one is smaller?"},
    "exceeds": {"larger": "Which number exceeds the other?", "smaller": "Which number falls below the other?"},
    "amount": {"larger": "Which amount is more?", "smaller": "Which amount is less?"},
    "weight": {
        "larger": "These are weights in kilograms. Which one is heavier?",
        "smaller": "These are weights in kilograms. Which one is lighter?",
    },
    "age": {
        "larger": "These are the ages of two people. Who is older?",
        "smaller": "These are the ages of two people. Who is younger?",
    },
    "compare": {
        "larger": "Compare the two numbers. Which one is greater?",
        "smaller": "Compare the two numbers. Which one is smaller?",
    },
    "letter": {
        "larger": "Give the letter of the larger number.",
        "smaller": "Give the letter of the smaller number.",
    },
}
QUESTIONS = WORDINGS["plain"]  # the single template (task.family off): larger (the default) | smaller
RANGES: dict[str, tuple[int, int]] = {"1digit": (1, 9), "2digit": (10, 99), "3digit": (100, 999)}
LOW, HIGH = RANGES["2digit"]
AXES = FamilyAxes(tuple(WORDINGS), tuple(QUESTIONS), tuple(RANGES), default_ranges=("2digit",))


def generate(split: str, n: int, seed: int, kind: str, stem: Any) -> list[Row]:
    """`n` distinct comparison problems of `split`; `stem` renders (question, options) as the prompt."""

    def draw(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        a, b = rng.sample(range(LOW, HIGH + 1), 2)
        pick = max(a, b) if kind == "larger" else min(a, b)
        options = [str(a), str(b)]
        extra = {"question": QUESTIONS[kind], "options": options, "kind": kind}
        return stem(QUESTIONS[kind], options), "A" if a == pick else "B", extra

    return procedural.generate("compare", split, n, seed, draw, f"lower task.n_{split}")


def generate_family(split: str, n: int, seed: int, variants: Variants, stem: Any, at_most: bool = False) -> list[Row]:
    """`n` distinct problems of `split` drawn from `variants` (module docstring of family.py: the draw order, and why
    one wording, direction and range give `generate`'s prompts). `at_most`: fewer when the variants hold fewer."""

    def pick(rng: random.Random, values: tuple[str, ...]) -> str:
        return values[0] if len(values) == 1 else rng.choice(values)

    def draw(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        wording, direction, span = (
            pick(rng, variants.wordings),
            pick(rng, variants.directions),
            pick(rng, variants.ranges),
        )
        low, high = RANGES[span]
        a, b = rng.sample(range(low, high + 1), 2)
        target = max(a, b) if direction == "larger" else min(a, b)
        question = WORDINGS[wording][direction]
        options = [str(a), str(b)]
        extra = {"question": question, "options": options, "kind": direction, "wording": wording, "range": span}
        return stem(question, options), "A" if a == target else "B", extra

    hint = f"lower task.n_{split} or widen task.family (more wordings, directions or ranges)"
    return procedural.generate("compare", split, n, seed, draw, hint, at_most=at_most)


@register_task("compare")
class CompareTask(MultipleChoiceTask):
    required_columns = ("prompt", "options", "answer")  # a data_path file: prompt = the question stem
    max_options = 2
    subsets = tuple(QUESTIONS)  # larger (the default) | smaller
    family_axes = AXES

    def default_rows(self) -> dict[str, list[Row]]:
        n = {s: getattr(self.cfg, f"n_{s}") for s in SPLITS}
        if self.cfg.family.enabled:
            return {s: self.variant_rows(self.variants(), s, n[s]) for s in SPLITS}
        kind = self.cfg.subset or "larger"
        return {s: generate(s, n[s], self.cfg.seed, kind, self._stem) for s in SPLITS}

    def template(self) -> Variants:
        return Variants(("plain",), (self.cfg.subset or "larger",), ("2digit",))

    def variant_rows(self, variants: Variants, split: str, n: int, at_most: bool = False) -> list[Row]:
        return generate_family(split, n, self.cfg.seed, variants, self._stem, at_most)

    def _stem(self, question: str, options: list[str]) -> str:
        return self.mc_example("", question, options, 0).prompt

    def source(self) -> str:
        return super().source() if self.cfg.data_path else "the compare generator"

    def to_example(self, row: Row, split: str) -> Example:
        stem = row.get("question") or row["prompt"]  # generated rows keep the rendered prompt for hashing
        meta = {"kind": row.get("kind"), **{k: row[k] for k in ("wording", "range") if k in row}}  # family rows only
        return self.mc_example(self.row_id(row), str(stem), row["options"], row["answer"], meta)

    def subset_of(self, example: Example) -> str | None:
        return example.meta.get("kind")
