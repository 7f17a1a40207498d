"""What kind of token a decoded string is (digit, punctuation, word, ...): used by feature labels and by the
analyses' token-type tables. Pure Python, no model."""

from __future__ import annotations

import re
import unicodedata

TOKEN_TYPES = (
    "special",
    "newline",
    "whitespace",
    "digit",
    "punctuation",
    "capitalized",
    "lowercase",
    "other",
)
SYNTACTIC_TYPES = frozenset({"special", "newline", "whitespace", "digit", "punctuation"})
_SPECIAL = re.compile(r"^<\|[^<>]{1,40}\|>$|^<(?:s|/s|bos|eos|pad|unk|start_of_turn|end_of_turn)>$|^\[/?INST\]$")


def token_type(token: str) -> str:
    """Classify a decoded token as one of TOKEN_TYPES.

    Byte-level BPE / SentencePiece markers (Ġ, Ċ, ▁) are read as the space/newline they stand for, in case
    a logger wrote raw vocabulary pieces instead of decoded text.

    >>> [token_type(t) for t in [" 42", "\\n", ",", " Paris", " the", "<|im_end|>"]]
    ['digit', 'newline', 'punctuation', 'capitalized', 'lowercase', 'special']
    """
    t = token.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")
    s = t.strip()
    if _SPECIAL.match(s):
        return "special"
    if not t:
        return "other"
    if not s:
        return "newline" if "\n" in t else "whitespace"
    if any(c.isdigit() for c in s) and all(c.isdigit() or c in ".,_" for c in s):
        return "digit"
    if all(unicodedata.category(c)[0] in "PS" for c in s):
        return "punctuation"
    word = s.replace("'", "").replace("-", "")
    if word.isalpha():
        return "capitalized" if word[0].isupper() else "lowercase"
    return "other"
