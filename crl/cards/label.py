"""Heuristic feature labels from a card's own evidence: the tokens it fires on and the tokens it promotes.

A label is a reading aid, not an explanation: it is built only from (1) the activating token of the top
examples and the token before it, and (2) the logit-lens tokens. Every label carries `HEURISTIC_MARK` where it
is shown, so nobody mistakes it for a checked description.

Rules, in order, on the top examples' activating tokens (stripped of surrounding space, case ignored):
- one token covers >= 50% of them: that token, e.g. ``'Which'``, plus ``after 'the'`` when one previous
  token covers >= 50% of those examples;
- else two tokens cover >= 50%: ``'A'/'B'``;
- else a token type covers >= 60% (digits, punctuation, newlines, ...): ``<digits: '7', '12'…>`` with the two
  most common tokens;
- else ``<mixed: 'x', 'y'…>``.
Then the logit lens: ``→ 'x', 'y'``, the two most promoted tokens that are whole words, numbers or
punctuation (a word-piece such as 'olkien' says little; mid-layer logit lenses are full of them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from crl.cards.tokens import token_type

HEURISTIC_MARK = "≈"  # shown before a heuristic label ("≈ 'Which' → ' number'")
_TYPE_NAMES = {
    "digit": "<digits>",
    "punctuation": "<punctuation>",
    "newline": "<newline>",
    "whitespace": "<space>",
    "special": "<special token>",
    "capitalized": "<Capitalized words>",
    "lowercase": "<lowercase words>",
}


def _show(token: str, width: int = 14) -> str:
    s = token.strip() or token or "∅"  # whitespace-only tokens keep their escape: '\n'
    return repr(s[:width])


def wordlike(token: str) -> bool:
    """A token that reads on its own: starts with a space, or has no letters (digits, punctuation).

    >>> [wordlike(t) for t in [" larger", "olkien", "7", " B"]]
    [True, False, True, True]
    """
    return bool(token.strip()) and (token[0].isspace() or not any(c.isalpha() for c in token))


def heuristic_label(
    act_tokens: Sequence[str], prev_tokens: Sequence[str] = (), promoted: Sequence[str] = (), dead: bool = False
) -> str:
    """A short label from the top examples' tokens and the logit-lens tokens (module docstring).

    >>> heuristic_label([" A", " A", "A", " B"], ["?"] * 4, [" B", "bx", " b"])
    "'A' after '?' → 'B', 'b'"
    >>> heuristic_label(["1", "7", "42", " 9", "3"], [], [])
    "<digits: '1', '7'…>"
    >>> heuristic_label([], [], [], dead=True)
    '<dead: never fired on held-out text>'
    """
    if dead or not act_tokens:
        return "<dead: never fired on held-out text>"
    # Case-insensitive counts ('Minimum' and 'minimum' are one token here); shown in the most common spelling.
    norm = [(t.strip() or t).lower() for t in act_tokens]
    spelling = Counter(t.strip() or t for t in act_tokens)
    shown = {k: next(sp for sp, _ in spelling.most_common() if sp.lower() == k) for k in set(norm)}
    n = len(norm)
    common = Counter(norm).most_common(2)
    if common[0][1] / n >= 0.5:
        head = _show(shown[common[0][0]])
        prev = [p for t, p in zip(norm, prev_tokens, strict=False) if t == common[0][0]]
        if prev:
            p, c = Counter(p.strip() or p for p in prev).most_common(1)[0]
            if c / len(prev) >= 0.5:
                head += f" after {_show(p)}"
    elif len(common) > 1 and (common[0][1] + common[1][1]) / n >= 0.5:
        head = f"{_show(shown[common[0][0]])}/{_show(shown[common[1][0]])}"
    else:
        kind, c = Counter(token_type(t) for t in act_tokens).most_common(1)[0]
        head = _TYPE_NAMES.get(kind, "<mixed>") if c / n >= 0.6 else "<mixed>"
        head = f"{head[:-1]}: {', '.join(_show(shown[k]) for k, _ in common)}…>"
    words = [t for t in promoted if wordlike(t)][:2]
    if words:
        head += " → " + ", ".join(_show(t) for t in words)
    return head


def label_all(cards) -> list[str]:
    """The heuristic label of every feature of a `crl.cards.store.FeatureCards` (from its stored arrays)."""
    flat = cards.tokens.reshape(-1)
    out = []
    for f in range(cards.d_sae):
        ps = [int(p) for p in cards.top_pos[f] if p >= 0]
        out.append(
            heuristic_label(
                [cards.token(flat[p]) for p in ps],
                [cards.token(flat[p - 1]) for p in ps],
                [cards.token(t) for t in cards.logit_pos_ids[f]],
                dead=not ps,
            )
        )
    return out
