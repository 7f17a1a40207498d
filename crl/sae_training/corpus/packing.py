"""Tokenizing documents and packing them into fixed-length rows, as sae-lens packs raw text."""

from __future__ import annotations

import numpy as np

from crl.sae_training.corpus.doc import Doc

TOKENIZE_BATCH = 256


def tokenize_docs(tokenizer, docs: list[Doc]) -> int:
    """Tokenize the documents not tokenized yet; returns how many tokens that made."""
    todo = [d for d in docs if d.ids is None]
    made = 0
    for i in range(0, len(todo), TOKENIZE_BATCH):
        chunk = todo[i : i + TOKENIZE_BATCH]
        ids = tokenizer([d.text for d in chunk], add_special_tokens=False)["input_ids"]
        for d, x in zip(chunk, ids, strict=True):
            d.ids = list(x)
            made += len(x)
    return made


def pack(docs: list[Doc], context_size: int, bos: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of `context_size` tokens: BOS first, BOS between documents; the last partial row is dropped.

    Returns (tokens, source index per token, source names); BOS tokens get source index -1.
    """
    names = sorted({d.source for d in docs})
    index = {n: i for i, n in enumerate(names)}
    toks: list[int] = []
    srcs: list[int] = []
    for d in docs:
        ids = d.ids or []
        if not ids:
            continue
        if not toks or ids[0] != bos:  # a chat document may already start with BOS (<|im_start|>)
            toks.append(bos)
            srcs.append(-1)
        toks.extend(ids)
        srcs.extend([index[d.source]] * len(ids))
    body = context_size - 1  # every row starts with its own BOS
    n_rows = len(toks) // body
    t = np.asarray(toks[: n_rows * body], dtype=np.int64).reshape(n_rows, body)
    s = np.asarray(srcs[: n_rows * body], dtype=np.int64).reshape(n_rows, body)
    t = np.concatenate([np.full((n_rows, 1), bos, dtype=np.int64), t], axis=1)
    s = np.concatenate([np.full((n_rows, 1), -1, dtype=np.int64), s], axis=1)
    return t, s, names
