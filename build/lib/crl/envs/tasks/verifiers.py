r"""Verifiable rewards with TRL's signature: ``f(prompts, completions, **columns) -> list[float]``.

Completions are plain strings or TRL conversational lists of ``{"role", "content"}`` messages; dataset columns
(``answer``, ``options``, ``should_refuse``) arrive as keyword lists aligned with ``completions``, so every
function here plugs into ``trl.GRPOTrainer(reward_funcs=...)`` unchanged.

Extraction functions return ``None`` on malformed output, so the well-formed rate (`*_format_reward`) is
reported apart from accuracy: an unparseable answer scores 0.0 accuracy *and* 0.0 format.

>>> numeric_reward(None, ["Adding them gives 12. #### 12", [{"role": "assistant", "content": "13"}]],
...                answer=["12", "12"])
[1.0, 0.0]
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from crl.errors import CRLError

Completion = str | list[dict[str, Any]] | dict[str, Any]
RewardFn = Callable[..., list[float]]

LETTERS = "ABCDEFGHIJ"  # MMLU-Pro has up to 10 options


# -- shared helpers -------------------------------------------------------------------------------------
def completion_text(completion: Completion) -> str:
    """The generated text of a plain or conversational completion.

    >>> completion_text([{"role": "assistant", "content": "B"}])
    'B'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, list):
        # TRL gives the assistant turn(s); tool or user turns are not the answer.
        return "".join(
            str(m.get("content", ""))
            for m in completion
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        )
    raise CRLError(
        f"completion of type {type(completion).__name__} is not a string or a list of messages; "
        "pass text or TRL conversational completions"
    )


def _column(name: str, values: Sequence[Any] | None, n: int) -> Sequence[Any]:
    if values is None:
        raise CRLError(f"reward needs the dataset column '{name}'; pass {name}=[...] aligned with completions")
    if len(values) != n:
        raise CRLError(f"column '{name}' has {len(values)} values for {n} completions; give one value per completion")
    return values


# -- numbers --------------------------------------------------------------------------------------------
# A number: optional sign (not after a digit, so "10-5" is not "-5"), thousands commas, decimals.
_NUMBER = re.compile(r"(?<![\d.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)
_UNFINISHED = re.compile(r"\s*[-+*/×÷=]\s*")
# Spans that need math-verify rather than the exact-number path (LaTeX, fractions).
_LATEXY = re.compile(r"\\[a-zA-Z]|\d\s*/\s*\d")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (nested braces allowed), or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def _answer_spans(text: str) -> list[str]:
    """Candidate final-answer spans, most explicit first: \\boxed{}, '####', 'the answer is'."""
    spans = []
    boxed = _last_boxed(text)
    if boxed is not None:
        spans.append(boxed)
    spans += [m.group(1) for m in reversed(list(_HASHES.finditer(text)))][:1]
    spans += [m.group(1) for m in reversed(list(_ANSWER_IS.finditer(text)))][:1]
    return spans


def canonical_number(s: str) -> str | None:
    """'1,234.50' -> '1234.5', '-0' -> '0'; None when `s` is not a plain number.

    >>> canonical_number("1,234.50"), canonical_number("$42"), canonical_number("4x")
    ('1234.5', '42', None)
    """
    s = s.strip().replace(",", "").replace("−", "-").lstrip("$").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_number(text: str) -> str | None:
    r"""The final numeric answer of a completion, canonicalized; None when there is none.

    Priority: ``\boxed{..}``, ``#### ..``, ``the answer is ..`` (first number of that span), else the last
    number in the text. LaTeX or fraction answers are parsed by math-verify ('3/4').

    >>> [extract_number(t) for t in ["#### 1,234", "The answer is 42.", r"\boxed{7}", "3 + 4 = 7", "3 + 4 ="]]
    ['1234', '42', '7', '7', None]
    >>> extract_number(r"\boxed{\frac{3}{4}}")
    '3/4'
    """
    for span in _answer_spans(text):
        span = span.split("=")[-1]  # "the answer is 3 + 4 = 7": the result, not the working
        if _LATEXY.search(span):
            parsed = _mv_parse(span)
            if parsed:
                return str(parsed[0])
        m = _NUMBER.search(span)
        if m:
            return canonical_number(m.group(0))
    matches = list(_NUMBER.finditer(text))
    if not matches or _UNFINISHED.fullmatch(text[matches[-1].end() :]):
        return None  # "12 + 11 = " was cut before its result: no answer yet
    return canonical_number(matches[-1].group(0))


def _timeouts() -> tuple[int | None, int | None]:
    # math-verify times out with signal.alarm, which only works in the main thread.
    main = threading.current_thread() is threading.main_thread()
    return (10, 5) if main else (None, None)


def _mv_parse(s: str) -> list[Any]:
    from math_verify import parse  # imported lazily: ~0.7 s, only needed for non-plain answers

    text = s if "$" in s or "\\boxed" in s else f"${s}$"
    return parse(text, parsing_timeout=_timeouts()[0])


def numbers_match(pred: str, gold: str) -> bool:
    """Exact decimal comparison for plain numbers, math-verify for the rest (fractions, LaTeX).

    >>> numbers_match("42", "42.0"), numbers_match("3/4", "0.75"), numbers_match("41", "42")
    (True, True, False)
    """
    p, g = canonical_number(pred), canonical_number(gold)
    if p is not None and g is not None:
        return Decimal(p) == Decimal(g)
    from math_verify import verify

    gold_parsed, pred_parsed = _mv_parse(gold), _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeouts()[1]))


def numeric_reward(
    prompts: Sequence[Any] | None, completions: Sequence[Completion], answer: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """1.0 when the completion's final number equals the gold `answer` column, else 0.0.

    >>> numeric_reward(None, ["The answer is 1,234.", r"\\boxed{0.5}", "I don't know", "#### 7"],
    ...                answer=["1234", "1/2", "3", "8"])
    [1.0, 1.0, 0.0, 0.0]
    """
    gold = _column("answer", answer, len(completions))
    out = []
    for c, g in zip(completions, gold, strict=True):
        pred = extract_number(completion_text(c))
        out.append(float(pred is not None and numbers_match(pred, str(g))))
    return out


def numeric_format_reward(
    prompts: Sequence[Any] | None, completions: Sequence[Completion], **kwargs: Any
) -> list[float]:
    """1.0 when a final number can be extracted (well-formed), whatever its value.

    >>> numeric_format_reward(None, ["#### 5", "no idea"])
    [1.0, 0.0]
    """
    return [float(extract_number(completion_text(c)) is not None) for c in completions]


# -- option letters -------------------------------------------------------------------------------------
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
    gold = _column("answer", answer, len(completions))
    opts = _column("options", options, len(completions)) if options is not None else [None] * len(completions)
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
    opts = _column("options", options, len(completions)) if options is not None else [None] * len(completions)
    return [
        float(extract_letter(completion_text(c), _valid_letters(o)) is not None)
        for c, o in zip(completions, opts, strict=True)
    ]


# -- refusals -------------------------------------------------------------------------------------------
_TRUE = {"true", "1", "yes", "refuse", "unsafe"}
_FALSE = {"false", "0", "no", "comply", "safe", ""}


def as_bool(value: Any, column: str = "should_refuse") -> bool:
    """Booleans from parquet, jsonl or csv ('true', '1', 'refuse' ...).

    >>> as_bool("True"), as_bool(0), as_bool("refuse")
    (True, False, True)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise CRLError(f"column '{column}' has value {value!r}; use true/false (or 1/0)")


def make_refusal_reward(detector: Callable[[str], bool]) -> RewardFn:
    """A refusal reward with a custom detector (e.g. a `RefusalDetector` with a classifier)."""

    def refusal_reward(
        prompts: Sequence[Any] | None,
        completions: Sequence[Completion],
        should_refuse: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        want = _column("should_refuse", should_refuse, len(completions))
        return [float(bool(detector(completion_text(c))) == as_bool(w)) for c, w in zip(completions, want, strict=True)]

    return refusal_reward


def refusal_reward(
    prompts: Sequence[Any] | None,
    completions: Sequence[Completion],
    should_refuse: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 for refusing when `should_refuse` is true and for answering when it is false (string matching).

    >>> refusal_reward(None, ["I'm sorry, but I can't help with that.", "Sure! Preheat the oven to 180C.",
    ...                       "I can't wait to help: run `kill -9 PID`.", "I cannot assist."],
    ...                should_refuse=[True, False, False, False])
    [1.0, 1.0, 1.0, 0.0]
    """
    from crl.envs.tasks.refusal import is_refusal

    return make_refusal_reward(is_refusal)(prompts, completions, should_refuse=should_refuse)


def refusal_format_reward(
    prompts: Sequence[Any] | None, completions: Sequence[Completion], **kwargs: Any
) -> list[float]:
    """1.0 for a non-empty completion: any text is either a refusal or an answer.

    >>> refusal_format_reward(None, ["No.", "   "])
    [1.0, 0.0]
    """
    return [float(bool(completion_text(c).strip())) for c in completions]
