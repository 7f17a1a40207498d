r"""Numeric answers (arith, GSM8K): extract the final number, compare exactly, math-verify for LaTeX/fractions."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from crl.envs.tasks.verifiers.common import Completion, completion_text, require_column

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
    gold = require_column("answer", answer, len(completions))
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
