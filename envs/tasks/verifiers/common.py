"""Shared by every verifier: completion text (plain or TRL conversational) and dataset columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from crl.errors import CRLError

Completion = str | list[dict[str, Any]] | dict[str, Any]
RewardFn = Callable[..., list[float]]


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


def require_column(name: str, values: Sequence[Any] | None, n: int) -> Sequence[Any]:
    """A dataset column given as a keyword list, checked to be present and aligned with the completions."""
    if values is None:
        raise CRLError(f"reward needs the dataset column '{name}'; pass {name}=[...] aligned with completions")
    if len(values) != n:
        raise CRLError(f"column '{name}' has {len(values)} values for {n} completions; give one value per completion")
    return values
