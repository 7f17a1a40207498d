"""Multiple-choice answers (MMLU, MMLU-Pro, BBQ): extract the chosen option letter."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from crl.envs.tasks.verifiers.common import Completion, completion_text, require_column

LETTERS = "ABCDEFGHIJ"  # MMLU-Pro has up to 10 options

# Keywords match in any case, letters are case-sensitive so "the answer is a dog" is not option A;
# a lowercase letter counts only when closed off: "answer: b", "answer is (b)", "answer: c)".
_NOT_WORD = r"(?![A-Za-z'’])(?!(?<=[AI])\s+(?!is\b)[a-z])"  # "A"/"I" before a lowercase word are words
_LETTER_AFTER = (
    r"\s*(?:(?i:is)|:|=)?\s*:?\s*"
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])" + _NOT_WORD + r"|([a-z])(?:[).:]|\s*$))"
)
_ANSWER_LETTER = re.compile(r"(?i:\banswer\b)" + _LETTER_AFTER)  # "Answer: B", "the answer is (B)"
_OPTION_LETTER = re.compile(r"(?i:\b(?:option|choice)\b)" + _LETTER_AFTER)  # "option C"
# A bracketed or closing-parenthesis letter anywhere: "(B)", "[B]", "B)".
_MARKED = re.compile(r"(?<![A-Za-z])(?:[(\[]([A-Z])[)\]]|([A-Z])\))")
# A bare capital letter that is not an English word.
_BARE = re.compile(r"(?<![A-Za-z'’])([A-Z])" + _NOT_WORD)
# The whole completion is one letter, in any case: "b", "(c)".
_ONLY = re.compile(r"^\W*([A-Za-z])\W*$")


def _valid_letters(options: Any, gold: str | None = None) -> str:
    if options is None:
        # Without an options column assume A-D, widened to reach the gold letter.
        last = max("D", (gold or "D").strip().upper()[:1] or "D")
        return LETTERS[: LETTERS.index(last) + 1] if last in LETTERS else "ABCD"
    if isinstance(options, str):
        return options.upper()
    return "".join(str(o).strip().upper() for o in options)


def extract_letter(text: str, options: str | Sequence[str] = "ABCD") -> str | None:
    """The chosen option letter, or None. Only letters among `options` count.

    Tried in order: a lone letter in any case ("b"); the last "answer" statement ("Answer: B", "the answer
    is (B)"); "option C" / "choice C"; a bracketed or ")"-marked letter ("(B)", "B)"); the first standalone
    capital letter ("B", "B. Paris"; not the words "A"/"I" before a lowercase word).

    >>> [extract_letter(t) for t in ["B", "(C)", "D) Paris", "Answer: b", "The answer is A.", "c"]]
    ['B', 'C', 'D', 'B', 'A', 'C']
    >>> extract_letter("I think A person did it") is None
    True
    >>> extract_letter("E", options="ABCD") is None
    True
    """
    valid = _valid_letters(options)
    # The last "answer ..." statement wins (a corrected answer comes later); otherwise the first match.
    matches = [_ONLY.finditer(text), reversed(list(_ANSWER_LETTER.finditer(text)))]
    matches += [p.finditer(text) for p in (_OPTION_LETTER, _MARKED, _BARE)]
    for found in matches:
        for m in found:
            letter = next(g for g in m.groups() if g).upper()
            if letter in valid:
                return letter
    return None


def letter_reward(
    prompts: Sequence[Any] | None,
    completions: Sequence[Completion],
    answer: Sequence[str] | None = None,
    options: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 when the extracted option letter equals the gold `answer` letter.

    `options` (per example, e.g. "ABC") lists the valid letters; without it A-D are valid.

    >>> letter_reward(None, ["B", "Answer: (C)", "The capital is Paris", "A"],
    ...               answer=["B", "C", "A", "B"], options=["ABCD", "ABC", "ABCD", "ABCD"])
    [1.0, 1.0, 0.0, 0.0]
    """
    gold = require_column("answer", answer, len(completions))
    opts = require_column("options", options, len(completions)) if options is not None else [None] * len(completions)
    out = []
    for c, g, o in zip(completions, gold, opts, strict=True):
        g = str(g).strip().upper()
        out.append(float(extract_letter(completion_text(c), _valid_letters(o, g)) == g))
    return out


def letter_format_reward(
    prompts: Sequence[Any] | None,
    completions: Sequence[Completion],
    options: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 when a valid option letter can be extracted.

    >>> letter_format_reward(None, ["C", "Paris", "(D)"], options=["ABC", "ABC", "ABC"])
    [1.0, 0.0, 0.0]
    """
    opts = require_column("options", options, len(completions)) if options is not None else [None] * len(completions)
    return [
        float(extract_letter(completion_text(c), _valid_letters(o)) is not None)
        for c, o in zip(completions, opts, strict=True)
    ]
